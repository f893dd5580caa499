//! Oracle test: BFCL's ground truth, rendered as Qwen3 tool-call text, must score 100%.
//!
//! The data comes from the bfcl-eval wheel on PyPI, fetched at test time by
//! `scripts/eval/fetch_bfcl.py` into a cache under the target directory (set
//! `FC_BFCL_CACHE` to reuse another). The test fails, never skips, when the data cannot be
//! fetched: a silently skipped oracle would let checker regressions through.

use std::path::{Path, PathBuf};
use std::process::Command;

use fc_data::{load, BfclAnswers, Format, Sample};
use fc_eval::{reference_calls, summarize, Evaluator, Predictions};

const CATEGORIES: [(&str, &str, usize); 4] = [
    ("simple_python", "simple", 400),
    ("multiple", "multiple", 200),
    ("parallel", "parallel", 200),
    ("parallel_multiple", "parallel_multiple", 200),
];

fn fetch() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cache = std::env::var_os("FC_BFCL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("bfcl-cache"));
    let out = Command::new("python3")
        .arg(root.join("scripts/eval/fetch_bfcl.py"))
        .arg(&cache)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 scripts/eval/fetch_bfcl.py: {e}"));
    assert!(
        out.status.success(),
        "fetching BFCL data from PyPI failed (network or pip missing?); the oracle test needs it.\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn ground_truth_scores_100_percent() {
    let data = fetch();
    let mut samples: Vec<Sample> = Vec::new();
    for (file, _, n) in CATEGORIES {
        let q = data.join(format!("BFCL_v4_{file}.json"));
        let a = data.join("possible_answer").join(format!("BFCL_v4_{file}.json"));
        let answers = BfclAnswers::from_path(&a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
        let f = std::fs::File::open(&q).unwrap_or_else(|e| panic!("{}: {e}", q.display()));
        let mut count = 0;
        for rec in load(f, Format::Bfcl, Some(answers)) {
            let rec = rec.unwrap_or_else(|e| panic!("{}: {e}", q.display()));
            let s = rec.result.unwrap_or_else(|r| panic!("{}: record {} rejected: {r}", q.display(), rec.position));
            samples.push(s);
            count += 1;
        }
        assert_eq!(count, n, "{file}: expected {n} records");
    }
    let preds: Predictions = samples
        .iter()
        .map(|s| (s.id.clone(), fc_toolcall::render_calls(&reference_calls(s))))
        .collect();
    let verdicts = Evaluator::new().evaluate(&samples, &preds, Some("bfcl"));
    let failures: Vec<String> = verdicts
        .iter()
        .filter_map(|v| {
            let b = v.bfcl.as_ref()?;
            (!b.verdict.valid).then(|| format!("{}: {:?} {:?}", v.id, b.verdict.error_type, b.verdict.error))
        })
        .collect();
    let summary = summarize(&verdicts);
    for (_, cat, n) in CATEGORIES {
        let acc = summary.bfcl.get(cat).unwrap_or_else(|| panic!("no {cat} accuracy"));
        assert_eq!(acc.count as usize, n, "{cat} count");
    }
    assert!(
        failures.is_empty(),
        "{} ground-truth answers rejected:\n{}",
        failures.len(),
        failures.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    let overall = summary.bfcl.get("overall").map(|a| a.ast_accuracy);
    assert_eq!(overall, Some(1.0));
    // The generic checks agree that the gold answers parse and validate.
    assert_eq!(summary.overall.parse_rate, 1.0);
    assert_eq!(summary.overall.missing, 0);
    // Exact matching understands BFCL's allowed lists (nested in dict values too).
    assert_eq!(summary.overall.args_exact, 1.0, "gold answers must match exactly");
    // The lenient (fc-rewards) matcher understands the nested allowed lists too.
    let lenient_misses: Vec<&str> = verdicts.iter().filter(|v| !v.args_ok).map(|v| v.id.as_str()).collect();
    let schema_misses: Vec<&str> = verdicts.iter().filter(|v| !v.schema_ok).map(|v| v.id.as_str()).collect();
    assert!(
        lenient_misses.is_empty(),
        "lenient matcher rejects {} gold answers: {lenient_misses:?}",
        lenient_misses.len()
    );
    assert_eq!(summary.overall.args_match, 1.0, "gold answers must match the lenient matcher");
    assert_eq!(summary.overall.func_accuracy, 1.0, "gold answers call the right functions");
    eprintln!(
        "BFCL oracle: {} samples, ast_accuracy 1.0; schema_hit {:.3} (misses {:?}), args_match {:.3} (misses {:?}), args_exact {:.3}",
        verdicts.len(),
        summary.overall.schema_hit,
        schema_misses,
        summary.overall.args_match,
        lenient_misses,
        summary.overall.args_exact
    );
}

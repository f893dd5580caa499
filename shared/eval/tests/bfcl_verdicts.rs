//! Our BFCL AST checker must give exactly the verdicts of BFCL's own Python checker.
//!
//! `fixtures/bfcl_verdicts.json` is written by `scripts/eval/bfcl_verdicts.py`, which runs
//! `bfcl_eval`'s `ast_checker` on gold and perturbed predictions for real BFCL records.
//! Each case goes through the production path here: fc-data's BFCL loader builds the
//! sample, `fc_eval::check_sample` parses the raw completion and checks it.

use fc_data::{loaders::parse_bfcl, BfclAnswers};
use fc_eval::{check_sample, BfclCategory};
use serde_json::Value;

#[test]
fn verdicts_equal_bfcl_checker() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bfcl_verdicts.json");
    let text = std::fs::read_to_string(path).expect("fixture readable (run scripts/eval/bfcl_verdicts.py)");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("fixture is a JSON list");
    assert!(cases.len() >= 40, "fixture has only {} cases", cases.len());
    let mut mismatches = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let label = format!("#{i} {} {}", c["category"].as_str().unwrap_or("?"), c["label"].as_str().unwrap_or("?"));
        let gt_line = serde_json::to_string(&c["ground_truth"]).expect("serialize");
        let answers = BfclAnswers::from_reader(gt_line.as_bytes()).expect("ground truth parses");
        let q_line = serde_json::to_string(&c["question"]).expect("serialize");
        let sample = parse_bfcl(&q_line, 0, Some(&answers)).unwrap_or_else(|r| panic!("{label}: loader rejected: {r}"));
        let cat = c["category"].as_str().unwrap_or("");
        assert_eq!(
            BfclCategory::from_id(&sample.id),
            BfclCategory::from_id(cat),
            "{label}: category of id {} differs from the checker category",
            sample.id
        );
        let completion = c["completion"].as_str().expect("completion string");
        let (_, v) = check_sample(&sample, completion).expect("sample has BFCL ground truth");
        let want_valid = c["valid"].as_bool().expect("valid bool");
        let want_type = c["error_type"].as_str();
        if v.valid != want_valid || v.error_type.as_deref() != want_type {
            mismatches.push(format!(
                "{label} ({}): ours valid={} {:?} ({:?}), BFCL valid={} {:?}",
                sample.id, v.valid, v.error_type, v.error, want_valid, want_type
            ));
        }
    }
    assert!(mismatches.is_empty(), "{} verdicts differ from BFCL:\n{}", mismatches.len(), mismatches.join("\n"));
}

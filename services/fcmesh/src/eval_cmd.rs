//! `fcmesh eval`: score a model (generating greedily with the engine) or a predictions file
//! on a dataset; writes JSON and Markdown reports and a PNG chart.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use fc_data::{BfclAnswers, Format, Sample};
use fc_eval::Predictions;

#[derive(Debug, Clone)]
pub struct EvalArgs {
    pub model: Option<PathBuf>,
    pub data: PathBuf,
    pub format: String,
    pub answers: Option<PathBuf>,
    pub predictions: Option<PathBuf>,
    pub out: PathBuf,
    pub split: Option<String>,
    pub max_samples: Option<usize>,
    pub max_tokens: usize,
    pub name: String,
}

/// Loads the samples of an eval set; rejected records are counted, not scored.
pub fn load_samples(data: &Path, format: &str, answers: Option<&Path>) -> anyhow::Result<(Vec<Sample>, u64)> {
    let format = Format::from_str(format).map_err(anyhow::Error::msg)?;
    let answers = match (format, answers) {
        (Format::Bfcl, Some(a)) => Some(BfclAnswers::from_path(a)?),
        (Format::Bfcl, None) => match BfclAnswers::locate(data) {
            Some(p) => Some(BfclAnswers::from_path(&p)?),
            None => None,
        },
        _ => None,
    };
    let f = std::fs::File::open(data).with_context(|| format!("opening {}", data.display()))?;
    let mut samples = Vec::new();
    let mut rejected = 0;
    for item in fc_data::load(f, format, answers) {
        match item?.result {
            Ok(s) => samples.push(s),
            Err(_) => rejected += 1,
        }
    }
    Ok((samples, rejected))
}

/// Runs an evaluation and writes `report.json`, `report.md` and `chart.png` into `out`.
/// Returns the JSON printed on stdout.
pub fn eval(args: &EvalArgs) -> anyhow::Result<serde_json::Value> {
    let (mut samples, rejected) = load_samples(&args.data, &args.format, args.answers.as_deref())?;
    if let Some(n) = args.max_samples {
        samples.truncate(n);
    }
    if samples.is_empty() {
        bail!("{} holds no valid samples ({rejected} rejected)", args.data.display());
    }
    let preds = match (&args.predictions, &args.model) {
        (Some(p), _) => Predictions::from_path(p)?,
        (None, Some(m)) => {
            let device = fc_model::device::DeviceSpec::from_env()?;
            evaluator::generate_predictions(m, &samples, args.max_tokens, device).map_err(anyhow::Error::msg)?
        }
        (None, None) => bail!("give --model (to generate) or --predictions"),
    };
    let unmatched = fc_eval::unmatched_predictions(&samples, &preds);
    let summary = evaluator::score_and_report(&args.name, &samples, &preds, args.split.as_deref(), &args.out)
        .map_err(anyhow::Error::msg)?;
    let m = &summary.overall;
    let mut out = serde_json::json!({
        "parse_rate": m.parse_rate,
        "schema_hit": m.schema_hit,
        "func_accuracy": m.func_accuracy,
        "exec_rate": m.exec_rate,
        "args_match": m.args_match,
        "args_exact": m.args_exact,
        "no_call_accuracy": m.no_call_accuracy,
        "hallucination_rate": m.hallucination_rate,
        "count": m.count,
        "missing": m.missing,
        "rejected_records": rejected,
        "unmatched_predictions": unmatched.len(),
        "by_category": summary.by_category,
        "by_split": summary.by_split,
        "report": args.out.join("report.json"),
    });
    if !summary.bfcl.is_empty() {
        out["ast_accuracy"] = serde_json::json!(summary.bfcl.get("overall").map(|a| a.ast_accuracy));
        out["bfcl"] = serde_json::to_value(&summary.bfcl)?;
    }
    Ok(out)
}

//! `fcmesh status`: a run's timeline, projected from the FC_RUNS stream.

use std::collections::BTreeMap;

use fc_bus::{Bus, DeliverPolicy};
use fc_events::{subjects, Envelope};
use anyhow::bail;
use futures::StreamExt;

/// One line of a timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TimelineEntry {
    pub seq: u64,
    pub at: String,
    pub event: String,
    pub producer: String,
    pub summary: String,
}

/// Every event of `run`, in stream order.
pub async fn timeline(bus: &Bus, run: &str) -> anyhow::Result<Vec<TimelineEntry>> {
    let filter = format!("fc.run.{run}.>");
    let mut s = bus.replay(subjects::STREAM_RUNS, &filter, DeliverPolicy::All).await?;
    let mut out = Vec::new();
    while let Some(d) = s.next().await {
        let d = d?;
        let entry = match d.envelope() {
            Ok(env) => TimelineEntry {
                seq: d.stream_sequence,
                at: env.occurred_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                event: env.event_type.clone(),
                producer: env.producer.clone(),
                summary: summarize(&env),
            },
            Err(e) => TimelineEntry {
                seq: d.stream_sequence,
                at: d.published.to_rfc3339(),
                event: "undecodable".into(),
                producer: String::new(),
                summary: e.to_string(),
            },
        };
        out.push(entry);
    }
    Ok(out)
}

/// Runs seen on the bus with their event count and last event.
pub async fn runs(bus: &Bus) -> anyhow::Result<BTreeMap<String, (u64, String)>> {
    let mut s = bus.replay(subjects::STREAM_RUNS, subjects::ALL_RUN_EVENTS, DeliverPolicy::All).await?;
    let mut runs: BTreeMap<String, (u64, String)> = BTreeMap::new();
    while let Some(d) = s.next().await {
        let d = d?;
        let mut parts = d.subject.splitn(4, '.');
        let (_, _, run, event) = (parts.next(), parts.next(), parts.next(), parts.next());
        if let (Some(run), Some(event)) = (run, event) {
            let e = runs.entry(run.to_string()).or_insert((0, String::new()));
            e.0 += 1;
            e.1 = event.to_string();
        }
    }
    Ok(runs)
}

/// The few payload fields worth a glance, as `key=value` pairs.
fn summarize(env: &Envelope) -> String {
    const KEYS: &[&str] = &[
        "stage", "read", "accepted", "train_count", "val_count", "step", "total_steps", "loss", "val_loss",
        "train_loss_last", "tokens_per_second", "resumed_from_step", "reward_mean", "version", "reason",
    ];
    const ARTIFACTS: &[&str] = &["train", "adapter", "checkpoint", "model", "report", "gguf"];
    let mut parts = Vec::new();
    if let Some(obj) = env.payload.as_object() {
        for k in KEYS {
            match obj.get(*k) {
                Some(serde_json::Value::Number(n)) if n.is_f64() => parts.push(format!("{k}={:.4}", n.as_f64().unwrap_or(0.0))),
                Some(serde_json::Value::Null) | None => {}
                Some(v) => parts.push(format!("{k}={v}")),
            }
        }
        for k in ARTIFACTS {
            if let Some(sha) = obj.get(*k).and_then(|a| a.get("sha256")).and_then(|v| v.as_str()) {
                parts.push(format!("{k}=sha256:{}", &sha[..sha.len().min(12)]));
            }
        }
        if let Some(m) = obj.get("metrics").and_then(|m| m.as_object()) {
            for k in ["parse_rate", "schema_hit", "func_accuracy", "exec_rate"] {
                if let Some(v) = m.get(k).and_then(|v| v.as_f64()) {
                    parts.push(format!("{k}={v:.3}"));
                }
            }
        }
    }
    parts.join(" ")
}

/// One pipeline stage as the log shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageRow {
    pub stage: &'static str,
    /// pending, running, done or failed.
    pub state: &'static str,
    /// Progress, latest metrics and artifacts, in words.
    pub detail: String,
}

fn short(a: &serde_json::Value) -> String {
    let sha = a.get("sha256").and_then(|v| v.as_str()).unwrap_or("");
    format!("sha256:{}", &sha[..sha.len().min(12)])
}

/// The run's stages projected from its events (and the dead-letter stream).
pub async fn stages(bus: &Bus, run: &str) -> anyhow::Result<Vec<StageRow>> {
    let mut rows: Vec<StageRow> = ["ingest", "sft", "merge", "eval", "promote"]
        .into_iter()
        .map(|stage| StageRow { stage, state: "pending", detail: String::new() })
        .collect();
    let mut s = bus.replay(subjects::STREAM_RUNS, &format!("fc.run.{run}.>"), DeliverPolicy::All).await?;
    while let Some(d) = s.next().await {
        let Ok(env) = d?.envelope() else { continue };
        let p = &env.payload;
        let f = |k: &str| p.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let (i, state, detail) = match env.event_type.as_str() {
            "pipeline_requested" => (0, "running", "requested".to_string()),
            "dataset_ingested" => (0, "done", format!("{} accepted of {} ({} train, {} val), train {}", p["accepted"], p["read"], p["train_count"], p["val_count"], short(&p["train"]))),
            "sft_started" => (1, "running", format!("0/{} steps{}", p["total_steps"], p.get("resumed_from_step").filter(|v| !v.is_null()).map(|v| format!(", resumed from step {v}")).unwrap_or_default())),
            "sft_step" => (1, "running", format!("{}/{} steps ({:.0}%), loss {:.3}{}, {:.0} tokens/s", p["step"], p["total_steps"], 100.0 * f("step") / f("total_steps"), f("loss"), p.get("val_loss").and_then(|v| v.as_f64()).map(|v| format!(", val loss {v:.3}")).unwrap_or_default(), f("tokens_per_second"))),
            "sft_checkpoint" => {
                let prev = rows[1].detail.clone();
                (1, "running", format!("{prev}; checkpoint at step {} {}", p["step"], short(&p["checkpoint"])))
            }
            "sft_completed" => (1, "done", format!("{} steps, train loss {:.3} -> {:.3}, val loss {}, weights {}", p["steps"], f("train_loss_first"), f("train_loss_last"), p.get("val_loss").and_then(|v| v.as_f64()).map(|v| format!("{v:.3}")).unwrap_or("-".into()), short(&p["adapter"]))),
            "model_merged" => (2, "done", format!("{} model {}", p["stage"].as_str().unwrap_or(""), short(&p["model"]))),
            "eval_completed" => {
                let m = &p["metrics"];
                let g = |k: &str| m.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
                (3, "done", format!("{}: parse {:.3} schema {:.3} func {:.3} exec {:.3} (n={})", p["stage"].as_str().unwrap_or(""), g("parse_rate"), g("schema_hit"), g("func_accuracy"), g("exec_rate"), m["count"]))
            }
            "model_promoted" => (4, "done", format!("{} model {}", p["stage"].as_str().unwrap_or(""), short(&p["model"]))),
            _ => continue,
        };
        rows[i].state = state;
        rows[i].detail = detail;
    }
    let mut dlq = bus.replay(subjects::STREAM_DLQ, "fc.dlq.>", DeliverPolicy::All).await?;
    while let Some(d) = dlq.next().await {
        let Ok(env) = d?.envelope() else { continue };
        if env.run_id != run {
            continue;
        }
        if let Some(row) = rows.iter_mut().find(|r| r.state != "done") {
            row.state = "failed";
            row.detail = format!("dead-lettered: {}", env.payload.get("reason").and_then(|v| v.as_str()).unwrap_or("?"));
        }
    }
    Ok(rows)
}

/// Prints `run`'s stages and timeline as tables (or JSON).
pub async fn print_timeline(bus: &Bus, run: &str, json: bool) -> anyhow::Result<()> {
    let entries = timeline(bus, run).await?;
    if entries.is_empty() {
        bail!("no events for run {run:?}");
    }
    let rows = stages(bus, run).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"run": run, "stages": rows, "timeline": entries}))?);
    } else {
        println!("{:<8} {:<8} detail", "stage", "state");
        for r in &rows {
            println!("{:<8} {:<8} {}", r.stage, r.state, r.detail);
        }
        println!();
        println!("{:>5}  {:<23}  {:<20} {:<26} details", "seq", "time", "event", "producer");
        for e in entries {
            println!("{:>5}  {:<23}  {:<20} {:<26} {}", e.seq, e.at, e.event, e.producer, e.summary);
        }
    }
    Ok(())
}

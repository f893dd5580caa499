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

/// Prints `run`'s timeline as a table (or JSON).
pub async fn print_timeline(bus: &Bus, run: &str, json: bool) -> anyhow::Result<()> {
    let entries = timeline(bus, run).await?;
    if entries.is_empty() {
        bail!("no events for run {run:?}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        println!("{:>5}  {:<23}  {:<20} {:<26} details", "seq", "time", "event", "producer");
        for e in entries {
            println!("{:>5}  {:<23}  {:<20} {:<26} {}", e.seq, e.at, e.event, e.producer, e.summary);
        }
    }
    Ok(())
}

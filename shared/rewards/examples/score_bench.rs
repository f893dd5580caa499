//! Reward-scoring throughput (single thread).
//!
//! `cargo run --release -p fc-rewards --example score_bench -- [N_SAMPLES] [DUMP.jsonl]`
//!
//! Builds N generated samples x 8 completion variants (gold, reordered,
//! think+gold, broken JSON, wrong value, unknown tool, extra call, plain
//! text), scores them repeatedly and prints completions/second. With DUMP
//! it also writes `{"sample": .., "completion": ..}` lines so
//! `scripts/bench_rewards.py` can score the very same completions.
use std::io::Write;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Instant;

use fc_data::{generate, load, write_xlam_json, Format, Sample};
use fc_rewards::Scorer;
use fc_toolcall::{render_calls, ToolCall};

fn variants(s: &Sample) -> Vec<String> {
    let calls: Vec<ToolCall> = s.expected.representative_calls().into_iter().map(|c| ToolCall::new(c.name, c.arguments)).collect();
    let gold = render_calls(&calls);
    let mut rev = calls.clone();
    rev.reverse();
    let mut wrong = calls.clone();
    if let Some(c) = wrong.first_mut() {
        if let Some(o) = c.arguments.as_object_mut() {
            if let Some((_, v)) = o.iter_mut().next() {
                *v = serde_json::json!("Atlantis");
            }
        }
    }
    let mut unknown = calls.clone();
    if let Some(c) = unknown.first_mut() {
        c.name.push_str("_v2");
    }
    let mut extra = calls.clone();
    if let Some(c) = calls.first() {
        extra.push(c.clone());
    }
    vec![
        gold.clone(),
        render_calls(&rev),
        format!("<think>\nThe user wants this.\n</think>\n\n{gold}"),
        gold.replacen("\"arguments\": {", "\"arguments\": {{", 1),
        render_calls(&wrong),
        render_calls(&unknown),
        render_calls(&extra),
        "I can answer that directly: it depends.".to_string(),
    ]
}

/// On-CPU time of this thread in seconds (robust on a loaded machine).
fn cpu_time() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<f64>().ok()))
        .map(|ns| ns / 1e9)
        .unwrap_or(0.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let dump = std::env::args().nth(2);
    let mut buf = Vec::new();
    write_xlam_json(&generate(n, 2024), &mut buf)?;
    let samples: Vec<Sample> = load(&buf[..], Format::Xlam, None).filter_map(|l| l.ok()).filter_map(|l| l.result.ok()).collect();
    let work: Vec<(usize, String)> = samples.iter().enumerate().flat_map(|(i, s)| variants(s).into_iter().map(move |c| (i, c))).collect();
    if let Some(p) = dump {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
        for (i, c) in &work {
            serde_json::to_writer(&mut f, &serde_json::json!({"sample": samples[*i], "completion": c}))?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    let scorer = Scorer::default();
    // Warm-up compiles every validator once (as a long-running scorer would).
    let mut sum = 0.0;
    for (i, c) in &work {
        sum += scorer.score(&samples[*i], c).total;
    }
    let reps = 10;
    let c0 = cpu_time();
    let t = Instant::now();
    for _ in 0..reps {
        for (i, c) in &work {
            sum += scorer.score(&samples[*i], c).total;
        }
    }
    let el = t.elapsed();
    let cpu = cpu_time() - c0;
    let count = work.len() * reps;
    println!(
        "rust: {count} completions in {:.3}s wall, {cpu:.3}s cpu = {:.0} completions/s/core (mean reward {:.4})",
        el.as_secs_f64(),
        count as f64 / if cpu > 0.0 { cpu } else { el.as_secs_f64() },
        sum / (count + work.len()) as f64
    );
    // Grouped: the 8 completions of a sample share one `prepare` (GRPO).
    let groups: Vec<(usize, Vec<String>)> = samples.iter().enumerate().map(|(i, s)| (i, variants(s))).collect();
    let c0 = cpu_time();
    let t = Instant::now();
    let mut gsum = 0.0;
    for _ in 0..reps {
        for (i, cs) in &groups {
            gsum += scorer.score_group(&samples[*i], cs).iter().map(|s| s.total).sum::<f64>();
        }
    }
    let el = t.elapsed();
    let cpu = cpu_time() - c0;
    println!(
        "rust grouped: {count} completions in {:.3}s wall, {cpu:.3}s cpu = {:.0} completions/s/core (mean reward {:.4})",
        el.as_secs_f64(),
        count as f64 / if cpu > 0.0 { cpu } else { el.as_secs_f64() },
        gsum / count as f64
    );
    Ok(())
}

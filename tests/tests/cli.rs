//! The operator CLI end to end: gen-data, ingest, init-model, generate, chat-template and
//! eval, as a user runs them (stdout carries only the documented output).

use std::path::Path;
use std::process::Command;

use fc_integration_tests::workspace_bin;

fn fcmesh(args: &[&str], data_dir: &Path) -> (String, String) {
    let out = Command::new(workspace_bin("fcmesh"))
        .args(args)
        .env_remove("FC_NATS_URL")
        .env("FC_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fcmesh");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "fcmesh {args:?} failed:\n{stderr}");
    (stdout, stderr)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{s}"))
}

#[test]
fn data_model_and_eval_commands() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let data = d.join("train.json");
    let data_s = data.to_str().expect("utf8 path");
    fcmesh(&["gen-data", "--n", "300", "--seed", "1", "--out", data_s], d);
    let records: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&data).expect("read")).expect("json");
    assert_eq!(records.as_array().map(Vec::len), Some(300));
    assert!(records[0]["tools"].is_string() && records[0]["answers"].is_string(), "xLAM stores JSON strings");

    // Ingest, with two broken records appended.
    let mut text = std::fs::read_to_string(&data).expect("read");
    let end = text.rfind(']').expect("array");
    text.replace_range(end.., ",{\"id\": 1000, \"query\": \"\", \"tools\": \"[]\", \"answers\": \"[]\"}, {\"oops\": 1}]");
    let broken = d.join("broken.json");
    std::fs::write(&broken, text).expect("write");
    let out_dir = d.join("ingested");
    let (stdout, _) =
        fcmesh(&["ingest", "--input", broken.to_str().expect("p"), "--out", out_dir.to_str().expect("p")], d);
    let r = json(&stdout);
    assert_eq!(r["read"], 302);
    assert_eq!(r["accepted"], 300);
    let rejected: u64 = r["rejected"].as_object().expect("object").values().filter_map(|v| v.as_u64()).sum();
    assert_eq!(rejected, 2);
    assert_eq!(r["train"].as_u64().unwrap_or(0) + r["val"].as_u64().unwrap_or(0), 300);
    assert_eq!(std::fs::read_to_string(out_dir.join("rejects.jsonl")).expect("rejects").lines().count(), 2);

    // A tiny model whose tokenizer is trained on the data.
    let model = d.join("tiny");
    let model_s = model.to_str().expect("p");
    let (stdout, _) = fcmesh(&["init-model", "--preset", "tiny", "--data", data_s, "--out", model_s, "--seed", "3"], d);
    assert!(json(&stdout)["vocab_size"].as_u64().unwrap_or(0) > 300);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(model.join(f).exists(), "{f} written");
    }
    let (stdout, _) = fcmesh(
        &["generate", "--model", model_s, "--prompt", "What is the weather in Paris?", "--max-tokens", "5", "--json"],
        d,
    );
    let g = json(&stdout);
    let ids = g["token_ids"].as_array().expect("ids");
    assert!(!ids.is_empty() && ids.len() <= 5);
    assert!(g["text"].is_string());
    // Same seed, same sample.
    let args = ["generate", "--model", model_s, "--prompt", "hi", "--max-tokens", "6", "--temperature", "1.0", "--seed", "9"];
    assert_eq!(fcmesh(&args, d).0, fcmesh(&args, d).0);

    // A few SFT steps on the ingested data (the from-scratch recipe for a tiny preset).
    let sft_out = d.join("sft");
    let (stdout, _) = fcmesh(
        &["sft", "--model", model_s, "--data", out_dir.to_str().expect("p"), "--out", sft_out.to_str().expect("p"), "--max-steps", "3"],
        d,
    );
    let r = json(&stdout);
    assert_eq!(r["steps"], 3, "{r}");
    for k in ["train_loss_first", "train_loss_last", "val_loss", "tokens_per_second"] {
        assert!(r[k].as_f64().is_some_and(f64::is_finite), "{k}: {r}");
    }
    // The tiny preset's recipe trains every weight: the output is a model dir.
    assert_eq!(r["finetuning_type"], "full", "{r}");
    assert_eq!(r["adapter"].as_str().map(Path::new), Some(sft_out.join("model").as_path()), "{r}");
    assert!(sft_out.join("model/model.safetensors").exists() && sft_out.join("model/tokenizer.json").exists(), "{r}");

    // Merge an adapter into it, with a Q8_0 GGUF beside the HF files.
    let base = fc_model::Model::load(&model, &fc_model::Device::Cpu, fc_model::DType::F32).expect("load tiny");
    let adapter = fc_model::LoraAdapter::new(&base, fc_model::LoraConfig { r: 4, ..Default::default() }, 1).expect("adapter");
    let adapter_dir = d.join("adapter");
    adapter.save_peft(&adapter_dir).expect("save adapter");
    let merged = d.join("merged");
    let (stdout, _) = fcmesh(
        &["merge", "--model", model_s, "--adapter", adapter_dir.to_str().expect("p"), "--out", merged.to_str().expect("p"), "--gguf", "q8_0"],
        d,
    );
    let m = json(&stdout);
    assert_eq!(m["lora_r"], 4);
    assert!(merged.join("config.json").exists() && merged.join("tokenizer.json").exists());
    assert!(m["gguf"].as_str().map(|p| Path::new(p).exists()).unwrap_or(false), "{m}");

    // The chat template of the tiny model renders Qwen3's tool format.
    let req = d.join("req.json");
    std::fs::write(
        &req,
        r#"{"messages":[{"role":"user","content":"weather in Oslo?"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]}"#,
    )
    .expect("write");
    let (text, _) = fcmesh(&["chat-template", "--model", model_s, "--request", req.to_str().expect("p")], d);
    assert!(text.starts_with("<|im_start|>system\n# Tools"), "{text}");
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    let (ids_out, _) = fcmesh(&["chat-template", "--model", model_s, "--request", req.to_str().expect("p"), "--ids"], d);
    let v = json(&ids_out);
    assert_eq!(v["text"].as_str(), Some(text.as_str()));
    assert!(v["token_ids"].as_array().map(|a| a.len() > 10).unwrap_or(false));

    // Eval: gold answers as predictions score perfectly; the untrained model generates.
    let val = out_dir.join("val.jsonl");
    let samples = fc_data::read_samples(&val).expect("samples");
    let mut preds = String::new();
    for s in &samples {
        let completion = match &s.expected {
            fc_data::Expected::Calls(c) => fc_toolcall::render_calls(
                &c.iter().map(|c| fc_toolcall::ToolCall::new(&c.name, c.arguments.clone())).collect::<Vec<_>>(),
            ),
            _ => "I cannot help with that using the available tools.".to_string(),
        };
        preds.push_str(&serde_json::json!({"id": s.id, "completion": completion}).to_string());
        preds.push('\n');
    }
    let pred_file = d.join("preds.jsonl");
    std::fs::write(&pred_file, preds).expect("write");
    let (stdout, _) = fcmesh(
        &[
            "eval", "--data", val.to_str().expect("p"), "--format", "processed", "--predictions",
            pred_file.to_str().expect("p"), "--out", d.join("eval-gold").to_str().expect("p"),
        ],
        d,
    );
    let m = json(&stdout);
    for k in ["parse_rate", "schema_hit", "func_accuracy", "exec_rate"] {
        assert_eq!(m[k].as_f64(), Some(1.0), "{k}: {m}");
    }
    assert_eq!(m["count"].as_u64(), Some(samples.len() as u64));
    assert!(d.join("eval-gold/report.md").exists() && d.join("eval-gold/chart.png").exists());
    let (stdout, _) = fcmesh(
        &[
            "eval", "--model", model_s, "--data", val.to_str().expect("p"), "--format", "processed", "--max-samples", "4",
            "--max-tokens", "8", "--out", d.join("eval-model").to_str().expect("p"),
        ],
        d,
    );
    let m = json(&stdout);
    assert_eq!(m["count"].as_u64(), Some(4));
    assert!(m["func_accuracy"].as_f64().unwrap_or(1.0) < 0.5, "an untrained model does not call tools right: {m}");
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(workspace_bin("fcmesh"))
        .args(["ingest", "--input", "/no/such/file.json", "--out"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/file.json") && !err.contains("panicked"), "{err}");
    let out = Command::new(workspace_bin("fcmesh"))
        .args(["eval", "--data", "/no/such.json", "--out"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// Overall metrics of `fcmesh eval --model MODEL` on the first `n` samples of `val`.
fn eval_model(model: &Path, val: &Path, n: usize, out: &Path, d: &Path) -> serde_json::Value {
    let n = n.to_string();
    let args = ["eval", "--model", model.to_str().expect("p"), "--data", val.to_str().expect("p"), "--format", "processed"];
    let (stdout, _) = fcmesh(&[&args[..], &["--max-samples", &n, "--out", out.to_str().expect("p")]].concat(), d);
    json(&stdout)
}

/// The tiny preset learns the task from scratch on a small step budget: `fcmesh sft`
/// with its default recipe lowers the validation loss, and on held-back samples the
/// evaluator shows Parse Rate and Func Accuracy far above the untrained model's.
#[test]
fn sft_on_the_tiny_preset_learns_to_call_functions() {
    const STEPS: &str = "800";
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let raw = d.join("raw.json");
    fcmesh(&["gen-data", "--n", "2000", "--seed", "1", "--out", raw.to_str().expect("p")], d);
    let data = d.join("data");
    fcmesh(&["ingest", "--input", raw.to_str().expect("p"), "--out", data.to_str().expect("p")], d);
    let model = d.join("tiny");
    fcmesh(&["init-model", "--data", raw.to_str().expect("p"), "--out", model.to_str().expect("p")], d);
    let val = data.join("val.jsonl");
    let before = eval_model(&model, &val, 100, &d.join("eval-untrained"), d);

    let out = d.join("sft");
    let (stdout, _) = fcmesh(
        &["sft", "--model", model.to_str().expect("p"), "--data", data.to_str().expect("p"), "--out", out.to_str().expect("p"), "--max-steps", STEPS],
        d,
    );
    let r = json(&stdout);
    let (first, last, val_loss) = (r["train_loss_first"].as_f64(), r["train_loss_last"].as_f64(), r["val_loss"].as_f64());
    assert!(matches!((first, last, val_loss), (Some(f), Some(l), Some(v)) if l < f / 4.0 && v < 0.6), "{r}");
    let after = eval_model(&out.join("model"), &val, 100, &d.join("eval-trained"), d);
    let metric = |m: &serde_json::Value, k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    eprintln!("untrained: {before}\ntrained: {after}");
    // Measured with this seed and budget (~7.5 min on 2 cores): untrained Parse 0.06 /
    // Func 0.00, trained 0.84 / 0.25 (batch 8 x 600 steps, ~10 min, reaches 0.87 / 0.40).
    for (k, floor, gain) in [("parse_rate", 0.6, 0.4), ("func_accuracy", 0.15, 0.12)] {
        let (b, a) = (metric(&before, k), metric(&after, k));
        assert!(a >= floor && a >= b + gain, "{k}: untrained {b}, trained {a} (want >= {floor}, +{gain})");
    }
}

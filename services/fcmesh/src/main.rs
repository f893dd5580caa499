//! `fcmesh`: the operator CLI. See `fcmesh --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fc_bus::{Bus, BusConfig};
use fc_runtime::{Publisher, Shutdown};
use fcmesh::{pipeline, run_services, status, ServiceName, ALL_SERVICES};

#[derive(Parser)]
#[command(name = "fcmesh", version, about = "fcmesh: train and serve a function-calling LLM as a mesh of event-driven services",
    long_about = "fcmesh: train and serve a function-calling LLM as a mesh of event-driven services.\n\n\
    Environment: FC_NATS_URL (NATS JetStream; unset: embedded bus), FC_DATA_DIR (default ./.fcmesh),\n\
    FC_REDIS_URL, FC_DEVICE (cpu, cuda, cuda:N; default cpu), RUST_LOG, FC_LOG_FORMAT=json,\n\
    OTEL_EXPORTER_OTLP_ENDPOINT.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run services in this process on one bus (embedded unless FC_NATS_URL is set).
    Run {
        /// Run all eight services.
        #[arg(long)]
        all: bool,
        /// Services to run: data-ingest sft-trainer merger rollout-generator reward-scorer grpo-learner evaluator gateway.
        services: Vec<String>,
        /// Serve service i's /health and /metrics on 127.0.0.1:(BASE+i) instead of its default port
        /// (order as listed above).
        #[arg(long, value_name = "BASE")]
        http_base_port: Option<u16>,
    },
    /// Pipeline commands.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// A run's timeline from the event stream; without RUN, the runs seen.
    Status {
        run: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write generated xLAM-format records (a JSON array) to FILE (`-`: stdout).
    GenData {
        #[arg(long)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Only tools never seen in the main split (the held-out evaluation set).
        #[arg(long)]
        heldout: bool,
    },
    /// Validate and split a dataset; prints JSON: read, accepted, rejected (reason -> count), train, val.
    Ingest {
        #[arg(long)]
        input: PathBuf,
        /// xlam, bfcl, openai, sharegpt or processed.
        #[arg(long, default_value = "xlam")]
        format: String,
        /// BFCL possible_answer file (default: found beside the question file).
        #[arg(long)]
        answers: Option<PathBuf>,
        /// Output dir: train.jsonl, val.jsonl, rejects.jsonl (the dead-letter records).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Create a model dir from a preset (tiny: random Qwen3 + BPE tokenizer trained on DATA).
    InitModel {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "xlam")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Score a model (greedy generation) or a predictions file on a dataset; prints metrics JSON
    /// (fractions 0..1) and writes report.json, report.md and chart.png to OUT.
    Eval {
        /// Model dir to generate with (omit with --predictions).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        data: PathBuf,
        /// xlam, bfcl, openai, sharegpt or processed.
        #[arg(long, default_value = "xlam")]
        format: String,
        /// BFCL possible_answer file (default: found beside the question file).
        #[arg(long)]
        answers: Option<PathBuf>,
        /// JSONL of {"id": ..., "completion": "<raw model text>"}: scored instead of generating.
        #[arg(long)]
        predictions: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Tag these samples with a split name (e.g. heldout) in the breakdown.
        #[arg(long)]
        split: Option<String>,
        #[arg(long)]
        max_samples: Option<usize>,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Run name in the reports.
        #[arg(long, default_value = "eval")]
        name: String,
    },
    /// LoRA SFT on an ingested dataset dir (train.jsonl, val.jsonl); prints JSON: steps,
    /// train_loss_first, train_loss_last, val_loss, tokens_per_second, adapter.
    Sft {
        #[arg(long)]
        model: PathBuf,
        /// A dir written by `fcmesh ingest` (train.jsonl, optional val.jsonl).
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// SFT config TOML, laid over the default recipe: the seed's (r32/a64, lr 2e-4,
        /// 3 epochs, assistant-only loss), or the from-scratch recipe for a tiny preset.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        max_steps: Option<usize>,
        /// Write a checkpoint (adapter, optimizer, data position) to OUT/checkpoints every N steps.
        #[arg(long, default_value_t = 0)]
        checkpoint_every: usize,
        /// Continue from a checkpoint dir (OUT/checkpoints/step-NNNNNN) of the same config and data.
        #[arg(long)]
        resume: Option<PathBuf>,
    },
    /// Merge a LoRA adapter into its base model: an HF model dir (and optionally GGUF); prints JSON.
    Merge {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Also write OUT/model-<type>.gguf: q8_0, q4_0, q4_k, f16 or f32.
        #[arg(long, value_parser = merger::parse_gguf)]
        gguf: Option<fc_model::GgufDType>,
    },
    /// Replay a stream.
    Replay {
        #[command(subcommand)]
        command: ReplayCommand,
    },
    /// Generate from a raw prompt (no chat template); prints {"token_ids": [...], "text": ...}.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
        prompt: Option<String>,
        #[arg(long)]
        prompt_file: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 means greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print JSON (the only output format; accepted for compatibility).
        #[arg(long)]
        json: bool,
    },
    /// Print the exact prompt the engine tokenizes for an OpenAI-style request JSON.
    ChatTemplate {
        /// A model dir, or a dir holding only tokenizer files.
        #[arg(long)]
        model: PathBuf,
        /// Request JSON: {"messages": [...], "tools": [...], "add_generation_prompt": true, ...}
        #[arg(long)]
        request: PathBuf,
        /// Print {"text": ..., "token_ids": [...]} instead of the text.
        #[arg(long)]
        ids: bool,
    },
    /// What `make demo` runs: every service in one process on the embedded bus, one pipeline run.
    Demo {
        /// Pipeline file for the demo run.
        #[arg(long, default_value = "deploy/config/demo.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Re-score rollouts with a new reward config; scores of both versions stay side by side.
    Rescore {
        /// Stream sequence or RFC 3339 time to start from.
        #[arg(long)]
        from: fcmesh::data_cmds::Position,
        /// Stream sequence or RFC 3339 time to stop after.
        #[arg(long)]
        to: Option<fcmesh::data_cmds::Position>,
        /// Reward config TOML.
        #[arg(long)]
        reward_config: PathBuf,
        /// Only this run's rollouts.
        #[arg(long)]
        run: Option<String>,
    },
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// Publish PipelineRequested for a pipeline file; prints the run id.
    Start {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fcmesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fcmesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect() -> anyhow::Result<Bus> {
    let cfg = BusConfig::from_env();
    let what = match &cfg.nats_url {
        Some(u) => format!("NATS at {u}"),
        None => format!("embedded bus in {}", cfg.data_dir.display()),
    };
    Bus::connect(&cfg).await.with_context(|| format!("opening the {what}"))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    fc_runtime::tune_allocator();
    let _telemetry = fc_telemetry::init("fcmesh")?;
    let span = tracing::info_span!("fcmesh", command = command_name(&cli.command));
    tracing::Instrument::instrument(run_command(cli), span).await
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Run { .. } => "run",
        Command::Pipeline { .. } => "pipeline",
        Command::Status { .. } => "status",
        Command::GenData { .. } => "gen-data",
        Command::Ingest { .. } => "ingest",
        Command::InitModel { .. } => "init-model",
        Command::Replay { .. } => "replay",
        Command::Eval { .. } => "eval",
        Command::Merge { .. } => "merge",
        Command::Sft { .. } => "sft",
        Command::Generate { .. } => "generate",
        Command::ChatTemplate { .. } => "chat-template",
        Command::Demo { .. } => "demo",
    }
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { all, services, http_base_port } => {
            let names = select_services(all, &services)?;
            let bus = connect().await?;
            run_services(&names, bus, http_base_port, Shutdown::on_signals()).await
        }
        Command::Pipeline { command: PipelineCommand::Start { config } } => {
            let (run_id, req) = pipeline::load(&config)?;
            let bus = connect().await?;
            pipeline::start(&Publisher::new(bus, "fcmesh"), &run_id, &req).await?;
            println!("{run_id}");
            Ok(())
        }
        Command::Status { run, json } => {
            let bus = connect().await?;
            match run {
                Some(run) => fcmesh::status::print_timeline(&bus, &run, json).await,
                None => {
                    let runs = status::runs(&bus).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&runs)?);
                    } else {
                        println!("{:<28} {:>7}  last event", "run", "events");
                        for (run, (n, last)) in runs {
                            println!("{run:<28} {n:>7}  {last}");
                        }
                    }
                    Ok(())
                }
            }
        }
        Command::Demo { config } => fcmesh::demo::demo(&config).await,
        Command::GenData { n, seed, out, heldout } => fcmesh::data_cmds::gen_data(n, seed, heldout, &out),
        Command::Ingest { input, format, answers, out, val_fraction, seed } => {
            let size = std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0);
            let summary = tokio::task::spawn_blocking(move || {
                let bar = indicatif::ProgressBar::new(size);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                let mut progress = |p: fc_data::IngestProgress| {
                    bar.set_position(p.bytes_read);
                    bar.set_message(format!("{} read, {} rejected", p.read, p.rejected));
                };
                let r = data_ingest::ingest_dataset(&input, &format, answers.as_deref(), &out, val_fraction, seed, Some(&mut progress));
                bar.finish_and_clear();
                r
            })
            .await??;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Eval { model, data, format, answers, predictions, out, split, max_samples, max_tokens, name } => {
            let args = fcmesh::eval_cmd::EvalArgs { model, data, format, answers, predictions, out, split, max_samples, max_tokens, name };
            let v = fcmesh::off_runtime(move || fcmesh::eval_cmd::eval(&args)).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Sft { model, data, out, config, max_steps, checkpoint_every, resume } => {
            let base = sft_trainer::default_recipe(&model);
            let mut cfg = match &config {
                Some(p) => {
                    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", p.display()))?;
                    sft_trainer::overlay_config(&base, &serde_json::to_value(table)?)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                }
                None => base,
            };
            if max_steps.is_some() {
                cfg.max_steps = max_steps;
            }
            let train = data.join("train.jsonl");
            if !train.is_file() {
                bail!("{} has no train.jsonl (run `fcmesh ingest` first)", data.display());
            }
            let val = Some(data.join("val.jsonl")).filter(|p| p.is_file());
            let report = fcmesh::off_runtime(move || {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} step {pos}/{len} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                let mut on_step = |s: sft_trainer::train::StepInfo| {
                    bar.set_length(s.total_steps as u64);
                    bar.set_position(s.step as u64);
                    bar.set_message(format!("loss {:.3} lr {:.2e} {:.0} tok/s", s.loss, s.learning_rate, s.tokens_per_second));
                };
                let opts = sft_trainer::train::TrainOptions { checkpoint_every, resume_from: resume, ..Default::default() };
                let device = fc_model::device::from_env()?;
                let r = sft_trainer::train::train_with_callback(&cfg, &model, &train, val.as_deref(), &out, &opts, &mut on_step, &device);
                bar.finish_and_clear();
                r.map_err(anyhow::Error::from)
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Merge { model, adapter, out, gguf } => {
            let v = fcmesh::off_runtime(move || merger::merge(&model, &adapter, &out, gguf).map_err(anyhow::Error::msg)).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::InitModel { preset, data, format, out, seed } => {
            let v = tokio::task::spawn_blocking(move || fcmesh::data_cmds::init_model(&preset, &data, &format, &out, seed)).await??;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Replay { command: ReplayCommand::Rescore { from, to, reward_config, run } } => {
            let cfg = reward_scorer::load_reward_config(&reward_config).map_err(|e| anyhow::anyhow!("{}: {e}", reward_config.display()))?;
            let scorer = fc_rewards::Scorer::new(cfg)?;
            let bus = connect().await?;
            let store = fc_artifacts::ArtifactStore::for_bus(&bus, &BusConfig::from_env().data_dir);
            let sum = fcmesh::data_cmds::replay_rescore(&bus, &store, &scorer, from, to, run.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&sum)?);
            Ok(())
        }
        Command::Generate { model, prompt, prompt_file, max_tokens, temperature, top_p, seed, json: _ } => {
            let prompt = match (prompt, prompt_file) {
                (Some(p), _) => p,
                (None, Some(f)) => std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
                (None, None) => bail!("give --prompt or --prompt-file"),
            };
            if !(top_p > 0.0 && top_p <= 1.0 && temperature.is_finite() && temperature >= 0.0) {
                bail!("--temperature must be >= 0 and --top-p in (0, 1]");
            }
            let params = fc_model::GenerateParams { max_tokens, temperature, top_p, seed, stop_token_ids: None };
            let out = tokio::task::spawn_blocking(move || fcmesh::model_cmds::generate(&model, &prompt, &params)).await??;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        Command::ChatTemplate { model, request, ids } => {
            let out = fcmesh::model_cmds::chat_template(&model, &request)?;
            if ids {
                println!("{}", serde_json::to_string(&out)?);
            } else {
                print!("{}", out.text);
            }
            Ok(())
        }
    }
}

fn select_services(all: bool, services: &[String]) -> anyhow::Result<Vec<ServiceName>> {
    if all {
        if !services.is_empty() {
            bail!("give either --all or service names, not both");
        }
        return Ok(ALL_SERVICES.to_vec());
    }
    if services.is_empty() {
        bail!("name the services to run, or --all");
    }
    let mut out = Vec::new();
    for s in services {
        match ServiceName::parse(s) {
            Some(n) if !out.contains(&n) => out.push(n),
            Some(_) => {}
            None => {
                let known: Vec<&str> = ALL_SERVICES.iter().map(|n| n.as_str()).collect();
                bail!("unknown service {s:?}; services are {}", known.join(", "));
            }
        }
    }
    Ok(out)
}

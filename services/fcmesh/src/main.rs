//! `fcmesh`: the operator CLI. See `fcmesh --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fc_bus::{Bus, BusConfig};
use fc_runtime::{Publisher, Shutdown};
use fcmesh::{pipeline, run_services, status, ServiceName, ALL_SERVICES};

#[derive(Parser)]
#[command(name = "fcmesh", version, about = "fcmesh: train and serve a function-calling LLM as a mesh of event-driven services",
    long_about = "fcmesh: train and serve a function-calling LLM as a mesh of event-driven services.\n\n\
    Environment: FC_NATS_URL (NATS JetStream; unset: embedded bus), FC_DATA_DIR (default ./.fcmesh),\n\
    FC_REDIS_URL, RUST_LOG, FC_LOG_FORMAT=json, OTEL_EXPORTER_OTLP_ENDPOINT.")]
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
    /// What `make demo` runs: every service in one process on the embedded bus, one pipeline run.
    Demo {
        /// Pipeline file for the demo run.
        #[arg(long, default_value = "deploy/config/pipeline.toml")]
        config: PathBuf,
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
    let _telemetry = fc_telemetry::init("fcmesh")?;
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
                Some(run) => print_timeline(&bus, &run, json).await,
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
        Command::Demo { config } => demo(&config).await,
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

async fn print_timeline(bus: &Bus, run: &str, json: bool) -> anyhow::Result<()> {
    let entries = status::timeline(bus, run).await?;
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

/// Runs what exists of the pipeline on the embedded bus and says what is still missing.
async fn demo(config: &std::path::Path) -> anyhow::Result<()> {
    if std::env::var("FC_NATS_URL").map(|v| !v.is_empty()).unwrap_or(false) {
        eprintln!("fcmesh demo: ignoring FC_NATS_URL; the demo runs on the embedded bus");
    }
    let data_dir = std::env::var("FC_DATA_DIR").unwrap_or_else(|_| ".fcmesh".into());
    let bus = Bus::connect(&BusConfig { nats_url: None, data_dir: PathBuf::from(&data_dir) }).await?;
    let shutdown = Shutdown::on_signals();
    let runner = tokio::spawn(run_services(ALL_SERVICES, bus.clone(), None, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    if runner.is_finished() {
        match runner.await {
            Ok(Err(e)) => return Err(e.context("starting the services (is another fcmesh using the ports?)")),
            _ => bail!("services stopped during start-up"),
        }
    }
    let (run_id, req) = pipeline::load(config)?;
    pipeline::start(&Publisher::new(bus.clone(), "fcmesh-demo"), &run_id, &req).await?;
    eprintln!("fcmesh demo: published PipelineRequested for run {run_id}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    print_timeline(&bus, &run_id, false).await?;
    println!();
    println!("{:<20} {:<10} note", "stage", "state");
    for (stage, state, note) in [
        ("bus + services", "ready", "8 services up on the embedded bus, /health and /metrics served"),
        ("ingest", "pending", "data-ingest logic lands with issue #5"),
        ("sft + merge", "pending", "sft-trainer and merger land with issue #6 (model core: #3)"),
        ("eval", "pending", "evaluator lands with issue #5 (engine: #4)"),
        ("grpo", "pending", "rollout-generator, reward-scorer, grpo-learner: GRPO issue"),
        ("serve", "pending", "gateway chat API: gateway issue"),
    ] {
        println!("{stage:<20} {state:<10} {note}");
    }
    println!("\nThe PipelineRequested event waits in the durable consumers; later builds pick it up.");
    shutdown.trigger();
    let _ = runner.await;
    Ok(())
}

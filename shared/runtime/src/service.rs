//! Starting and running a service binary: `--help`, config, telemetry, bus, HTTP.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use fc_bus::{Bus, BusError};

use crate::config::{help_text, ConfigError, ConfigSource, VarSpec};
use crate::{http, Health, Shutdown};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("http: cannot serve: {0}")]
    Http(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// A running service's shared parts.
#[derive(Clone, Debug)]
pub struct ServiceHandle {
    pub health: Health,
    pub http_addr: SocketAddr,
}

/// Serves `/health` and `/metrics` (plus `extra` routes) and keeps the `bus` component of
/// readiness in step with the bus connection.
pub async fn start(
    name: &str,
    addr: SocketAddr,
    bus: &Bus,
    extra: Option<axum::Router>,
    shutdown: &Shutdown,
) -> Result<ServiceHandle, ServiceError> {
    let health = Health::new();
    health.not_ready("bus", "connecting");
    let mut app = http::router(name, health.clone());
    if let Some(r) = extra {
        app = app.merge(r);
    }
    let (bound, _task) = http::serve(addr, app, shutdown.clone()).await?;
    tracing::info!(service = name, addr = %bound, backend = bus.backend_name(), "http listening");
    metrics::gauge!("fc_service_info", "service" => name.to_string(), "version" => env!("CARGO_PKG_VERSION"),
        "backend" => bus.backend_name())
    .set(1.0);
    let (h, b, s) = (health.clone(), bus.clone(), shutdown.clone());
    let service = name.to_string();
    tokio::spawn(async move {
        loop {
            if b.healthy().await {
                h.ready("bus");
            } else {
                h.not_ready("bus", "disconnected");
            }
            let ready = if h.status().is_ok() { 1.0 } else { 0.0 };
            metrics::gauge!("fc_service_ready", "service" => service.clone()).set(ready);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = s.wait() => break,
            }
        }
    });
    Ok(ServiceHandle { health, http_addr: bound })
}

/// The whole `main` of a service binary.
pub async fn main<C, F, Fut>(
    name: &'static str,
    about: &'static str,
    vars: Vec<VarSpec>,
    load: fn(&ConfigSource) -> Result<C, ConfigError>,
    bus_config: fn(&C) -> fc_bus::BusConfig,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(C, Bus, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), ServiceError>>,
{
    crate::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", help_text(name, about, &vars));
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(a) = args.first() {
        eprintln!("{name}: unexpected argument `{a}` (configuration comes from the environment; see --help)");
        return std::process::ExitCode::from(2);
    }
    let src = match ConfigSource::load(name) {
        Ok(s) => s,
        Err(e) => {
            eprint!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cfg = match load(&src) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    // After config, so a bad FC_LOG_FORMAT is reported with every other bad value.
    let _telemetry = match fc_telemetry::init(name) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = Shutdown::on_signals();
    let bus = match Bus::connect(&bus_config(&cfg)).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the bus");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(cfg, bus, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "service failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// For a service whose stage logic has not landed yet: creates its durable consumers (so
/// the events it will process are kept for it, not lost) and stays up, healthy on the bus,
/// until shutdown. Nothing is consumed or acknowledged.
pub async fn hold_consumers(
    name: &str,
    bus: &Bus,
    consumers: Vec<fc_bus::ConsumerConfig>,
    lands_with: &str,
    shutdown: &Shutdown,
) -> Result<(), ServiceError> {
    for c in consumers {
        let durable = c.durable.clone();
        let stream = c.stream.clone();
        bus.consumer(c).await?;
        tracing::warn!(service = name, %stream, %durable,
            "stage logic is not in this build yet ({lands_with}); events wait in the durable consumer");
    }
    shutdown.wait().await;
    Ok(())
}

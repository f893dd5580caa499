//! sft-trainer: LoRA supervised fine-tuning driven by DatasetIngested events, with checkpoints and exact resume.
//!
//! A library with [`run`] (used by the `sft-trainer` binary and by `fcmesh run`) and a
//! thin `main.rs`. Configuration: [`Config`], from `FC_*` variables (see `sft-trainer --help`).

use fc_bus::{Bus, BusConfig, ConsumerConfig};
use fc_events::subjects;
use fc_runtime::config::{CommonConfig, ConfigError, ConfigSource, VarSpec};
use fc_runtime::{service, ServiceError, Shutdown};

pub mod train;

pub const NAME: &str = "sft-trainer";
pub const ABOUT: &str = "LoRA supervised fine-tuning driven by DatasetIngested events, with checkpoints and exact resume";
/// Fixed per service so all eight can run side by side (`fcmesh run --all`).
pub const DEFAULT_HTTP: &str = "0.0.0.0:9102";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    pub fn vars() -> Vec<VarSpec> {
        CommonConfig::vars(DEFAULT_HTTP)
    }

    pub fn from_source(src: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = src.reader(NAME);
        let common = CommonConfig::read(&mut r, NAME, DEFAULT_HTTP);
        r.finish()?;
        Ok(Self { common })
    }

    pub fn bus_config(&self) -> BusConfig {
        self.common.bus_config()
    }
}

/// The durable consumers this service reads through (one filter each: nats-server 2.9).
pub fn consumers() -> Vec<ConsumerConfig> {
    vec![
        ConsumerConfig::new(subjects::STREAM_RUNS, "sft-trainer", &subjects::run_event_filter("dataset_ingested")),
    ]
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, bus: Bus, shutdown: Shutdown) -> Result<(), ServiceError> {
    let _svc = service::start(NAME, config.common.http_addr, &bus, None, &shutdown).await?;
    service::hold_consumers(NAME, &bus, consumers(), "issue #6 (sft-trainer and merger)", &shutdown).await
}

//! gateway: OpenAI-compatible chat completions with tool calls on the promoted model.
//!
//! A library with [`run`] (used by the `gateway` binary and by `fcmesh run`) and a
//! thin `main.rs`. Configuration: [`Config`], from `FC_*` variables (see `gateway --help`).

use fc_bus::{Bus, BusConfig, ConsumerConfig};
use fc_runtime::config::{CommonConfig, ConfigError, ConfigSource, VarSpec};
use fc_runtime::{service, ServiceError, Shutdown};

pub const NAME: &str = "gateway";
pub const ABOUT: &str = "OpenAI-compatible chat completions with tool calls on the promoted model";
/// Fixed per service so all eight can run side by side (`fcmesh run --all`).
pub const DEFAULT_HTTP: &str = "0.0.0.0:8000";

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

    ]
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, bus: Bus, shutdown: Shutdown) -> Result<(), ServiceError> {
    let svc = service::start(NAME, config.common.http_addr, &bus, None, &shutdown).await?;
    // Ready only with a model loaded; serving lands with the gateway issue, so until then
    // /health says why it is not ready.
    svc.health.not_ready("model", "no model loaded: the chat API lands with the gateway issue");
    service::hold_consumers(NAME, &bus, consumers(), "the gateway issue", &shutdown).await
}

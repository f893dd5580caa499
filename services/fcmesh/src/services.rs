//! Running service libraries in one process.

use std::net::SocketAddr;

use anyhow::Context;
use fc_bus::Bus;
use fc_runtime::config::ConfigSource;
use fc_runtime::{ServiceError, Shutdown};

/// Every service, in a fixed order (also the order of `--http-base-port` offsets).
pub const ALL_SERVICES: &[ServiceName] = &[
    ServiceName::DataIngest,
    ServiceName::SftTrainer,
    ServiceName::Merger,
    ServiceName::RolloutGenerator,
    ServiceName::RewardScorer,
    ServiceName::GrpoLearner,
    ServiceName::Evaluator,
    ServiceName::Gateway,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceName {
    DataIngest,
    SftTrainer,
    Merger,
    RolloutGenerator,
    RewardScorer,
    GrpoLearner,
    Evaluator,
    Gateway,
}

impl ServiceName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DataIngest => data_ingest::NAME,
            Self::SftTrainer => sft_trainer::NAME,
            Self::Merger => merger::NAME,
            Self::RolloutGenerator => rollout_generator::NAME,
            Self::RewardScorer => reward_scorer::NAME,
            Self::GrpoLearner => grpo_learner::NAME,
            Self::Evaluator => evaluator::NAME,
            Self::Gateway => gateway::NAME,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_SERVICES.iter().copied().find(|n| n.as_str() == s)
    }

    fn index(self) -> u16 {
        ALL_SERVICES.iter().position(|n| *n == self).unwrap_or(0) as u16
    }
}

/// The HTTP address of a service in an in-process run: its own default port, or
/// `base + index` when a base port is given (tests, or several runs on one host).
fn http_addr(name: ServiceName, default: &str, base: Option<u16>) -> anyhow::Result<SocketAddr> {
    match base {
        Some(b) => Ok(SocketAddr::from(([127, 0, 0, 1], b + name.index()))),
        None => default.parse().with_context(|| format!("default address of {}", name.as_str())),
    }
}

/// Runs `names` on `bus` until `shutdown`; returns the first service error, if any.
/// `FC_HTTP_ADDR` is ignored here: several services cannot share one address.
pub async fn run_services(
    names: &[ServiceName],
    bus: Bus,
    base_port: Option<u16>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut env: std::collections::HashMap<String, String> = std::env::vars().collect();
    env.remove("FC_HTTP_ADDR");
    let src = ConfigSource::from_parts("fcmesh", env)?;
    let mut tasks = tokio::task::JoinSet::new();
    for &name in names {
        let (bus, sd) = (bus.clone(), shutdown.clone());
        macro_rules! spawn {
            ($krate:ident) => {{
                let mut cfg = $krate::Config::from_source(&src)?;
                cfg.common.http_addr = http_addr(name, $krate::DEFAULT_HTTP, base_port)?;
                eprintln!("fcmesh: starting {} (http {})", name.as_str(), cfg.common.http_addr);
                tasks.spawn(async move { (name, $krate::run(cfg, bus, sd).await) });
            }};
        }
        match name {
            ServiceName::DataIngest => spawn!(data_ingest),
            ServiceName::SftTrainer => spawn!(sft_trainer),
            ServiceName::Merger => spawn!(merger),
            ServiceName::RolloutGenerator => spawn!(rollout_generator),
            ServiceName::RewardScorer => spawn!(reward_scorer),
            ServiceName::GrpoLearner => spawn!(grpo_learner),
            ServiceName::Evaluator => spawn!(evaluator),
            ServiceName::Gateway => spawn!(gateway),
        }
    }
    let mut first_err: Option<anyhow::Error> = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, Ok(()))) => tracing::info!(service = name.as_str(), "service stopped"),
            Ok((name, Err(e))) => {
                tracing::error!(service = name.as_str(), error = %e, "service failed");
                // One failed service stops the others: a half-running mesh is worse.
                shutdown.trigger();
                first_err.get_or_insert(anyhow::anyhow!(service_error(name, e)));
            }
            Err(e) => {
                shutdown.trigger();
                first_err.get_or_insert(anyhow::anyhow!("service task panicked: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn service_error(name: ServiceName, e: ServiceError) -> String {
    format!("{}: {e}", name.as_str())
}

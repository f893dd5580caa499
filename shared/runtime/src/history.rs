//! A run's state is a projection of its event log: these read it back from FC_RUNS.
//! Services use them to find the run's command (PipelineRequested), to skip work already
//! done (idempotent handlers) and to resume from the newest checkpoint after a crash.

use fc_bus::{Bus, BusError, DeliverPolicy};
use fc_events::{subjects, Envelope, EventPayload};
use futures::StreamExt;

/// Every decodable event of type `P` in `run`, oldest first, with its envelope.
pub async fn run_events<P: EventPayload>(bus: &Bus, run: &str) -> Result<Vec<(Envelope, P)>, BusError> {
    let mut s = bus.replay(subjects::STREAM_RUNS, &subjects::run_event(run, P::TYPE), DeliverPolicy::All).await?;
    let mut out = Vec::new();
    while let Some(d) = s.next().await {
        let Ok(env) = d?.envelope() else { continue };
        if let Ok(p) = env.decode::<P>() {
            out.push((env, p));
        }
    }
    Ok(out)
}

/// The first event of type `P` in `run`.
pub async fn first_run_event<P: EventPayload>(bus: &Bus, run: &str) -> Result<Option<P>, BusError> {
    let mut s = bus.replay(subjects::STREAM_RUNS, &subjects::run_event(run, P::TYPE), DeliverPolicy::All).await?;
    while let Some(d) = s.next().await {
        if let Ok(p) = d?.envelope().and_then(|e| e.decode::<P>()) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The newest event of type `P` in `run`.
pub async fn last_run_event<P: EventPayload>(bus: &Bus, run: &str) -> Result<Option<P>, BusError> {
    Ok(run_events::<P>(bus, run).await?.pop().map(|(_, p)| p))
}

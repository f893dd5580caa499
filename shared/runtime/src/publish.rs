//! Publishing typed events with trace context and deterministic message ids.

use fc_bus::{Bus, BusError, Headers, PubAck};
use fc_events::{Envelope, EventPayload};

/// Publishes events as one producer (`service/instance`).
#[derive(Clone, Debug)]
pub struct Publisher {
    bus: Bus,
    producer: String,
}

impl Publisher {
    pub fn new(bus: Bus, service: &str) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| format!("pid{}", std::process::id()));
        Self { bus, producer: format!("{service}/{host}") }
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// Wraps `payload` (caused by `cause`, or starting a flow for `run_id`) and publishes it
    /// with `msg_id` for dedup and the current span's `traceparent`.
    pub async fn emit<P: EventPayload>(
        &self,
        run_id: &str,
        cause: Option<&Envelope>,
        payload: &P,
        msg_id: String,
    ) -> Result<(Envelope, PubAck), BusError> {
        let env = match cause {
            Some(c) => Envelope::caused_by(c, &self.producer, payload),
            None => Envelope::new(run_id, &self.producer, payload),
        }
        .map_err(|e| BusError::Store(format!("encode {}: {e}", P::TYPE)))?;
        let mut headers = Headers::new();
        fc_telemetry::inject(&mut headers);
        headers.insert("Fc-Event-Type".into(), P::TYPE.into());
        let ack = fc_bus::publish_event(&self.bus, &env, payload, msg_id, headers).await?;
        Ok((env, ack))
    }
}

/// The message id of the `n`th event of a type in a run: `<run>:<event>:<n>`.
pub fn run_msg_id<P: EventPayload>(run_id: &str, n: u64) -> String {
    format!("{run_id}:{}:{n}", P::TYPE)
}

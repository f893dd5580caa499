//! Event contracts: the one IPC boundary between fcmesh services.
//!
//! Every message on the bus is an [`Envelope`] serialized as JSON. The envelope names the
//! event type and its schema version; the payload is one of the structs in [`payloads`].
//! Types here are append-only: a field may be added (with a serde default so older
//! producers still decode), never renamed or removed. A breaking change gets a new event
//! type or a bumped [`EventPayload::VERSION`] with both versions readable.
//! Unknown fields are ignored on read, so newer producers do not break older consumers.
//!
//! Golden files under `tests/golden/` pin the wire form of every event type.

pub mod payloads;
pub mod subjects;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use payloads::*;

/// A payload type that travels on the bus.
pub trait EventPayload: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The snake_case event type, also the last token of its subject.
    const TYPE: &'static str;
    /// Schema version of this payload's wire form.
    const VERSION: u32;
    /// The subject this event is published on for a run.
    fn subject(&self, run_id: &str) -> String {
        subjects::run_event(run_id, Self::TYPE)
    }
}

/// Errors from decoding an envelope or its payload.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected event type `{expected}`, got `{actual}`")]
    WrongType { expected: &'static str, actual: String },
    #[error("event `{event_type}` has schema version {actual}, this build reads up to {supported}")]
    UnsupportedVersion { event_type: String, actual: u32, supported: u32 },
    #[error("payload of `{event_type}` does not decode: {source}")]
    Payload { event_type: String, source: serde_json::Error },
}

/// The envelope around every event. `payload` stays raw JSON until the consumer asks for
/// a concrete type, so a consumer can route on `event_type` without knowing every payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7: time-ordered, unique across producers.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub run_id: String,
    /// The event that directly caused this one.
    #[serde(default)]
    pub causation_id: Option<Uuid>,
    /// The id shared by every event of one flow (for a pipeline run, its first event's id).
    pub correlation_id: Uuid,
    /// Service name and instance, e.g. `sft-trainer/host-1`.
    pub producer: String,
    pub payload: serde_json::Value,
}

impl Envelope {
    /// Wraps a payload as the first event of a new flow.
    pub fn new<P: EventPayload>(run_id: &str, producer: &str, payload: &P) -> Result<Self, EventError> {
        let id = Uuid::now_v7();
        Ok(Self {
            id,
            event_type: P::TYPE.to_string(),
            schema_version: P::VERSION,
            occurred_at: Utc::now(),
            run_id: run_id.to_string(),
            causation_id: None,
            correlation_id: id,
            producer: producer.to_string(),
            payload: serde_json::to_value(payload)?,
        })
    }

    /// Wraps a payload caused by `cause`: same run and correlation, causation = cause.id.
    pub fn caused_by<P: EventPayload>(cause: &Envelope, producer: &str, payload: &P) -> Result<Self, EventError> {
        let mut e = Self::new(&cause.run_id, producer, payload)?;
        e.causation_id = Some(cause.id);
        e.correlation_id = cause.correlation_id;
        Ok(e)
    }

    pub fn is<P: EventPayload>(&self) -> bool {
        self.event_type == P::TYPE
    }

    /// Decodes the payload as `P`, checking type and version.
    pub fn decode<P: EventPayload>(&self) -> Result<P, EventError> {
        if self.event_type != P::TYPE {
            return Err(EventError::WrongType { expected: P::TYPE, actual: self.event_type.clone() });
        }
        if self.schema_version > P::VERSION {
            return Err(EventError::UnsupportedVersion {
                event_type: self.event_type.clone(),
                actual: self.schema_version,
                supported: P::VERSION,
            });
        }
        serde_json::from_value(self.payload.clone())
            .map_err(|source| EventError::Payload { event_type: self.event_type.clone(), source })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a struct of plain data and a serde_json::Value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EventError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Every event type this build knows, for dispatch and `fcmesh status`.
pub const EVENT_TYPES: &[&str] = &[
    PipelineRequested::TYPE,
    DatasetIngested::TYPE,
    SftStarted::TYPE,
    SftStep::TYPE,
    SftCheckpoint::TYPE,
    SftCompleted::TYPE,
    ModelMerged::TYPE,
    RolloutRequested::TYPE,
    RolloutGenerated::TYPE,
    RewardScored::TYPE,
    GrpoStep::TYPE,
    PolicyUpdated::TYPE,
    GrpoCompleted::TYPE,
    EvalCompleted::TYPE,
    ModelPromoted::TYPE,
    DeadLettered::TYPE,
];

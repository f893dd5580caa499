//! The event bus: the only code in fcmesh that talks to NATS.
//!
//! [`Bus`] is one handle with two backends that pass the same conformance suite
//! (`tests/` crate, `conformance_*`):
//! - [`jetstream`]: NATS JetStream (distributed mode, `FC_NATS_URL` set);
//! - [`embedded`]: an in-process twin stored in redb under `FC_DATA_DIR` (the default), so
//!   one laptop runs the whole pipeline with no servers and events survive restarts.
//!
//! Semantics both keep: streams with limits or work-queue retention; publish with a message
//! id for dedup and an awaited, durable ack; durable pull consumers shared by several
//! workers (explicit ack, ack_wait redelivery, nak with delay, progress, term);
//! dead-lettering after `max_deliver` (done here, above the backends, so the reason travels
//! the same way on both); ordered replay from a sequence or a time; a KV store with
//! compare-and-swap and watch; an object store for artifacts (JetStream only).

pub mod embedded;
pub mod jetstream;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use fc_events::subjects::{self, StreamSpec};
use fc_events::{DeadLettered, Envelope, EventPayload};
use futures::stream::BoxStream;

pub use fc_events::subjects::Retention;

/// Message headers. `Nats-Msg-Id` is set from [`OutMessage::msg_id`], not here.
pub type Headers = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("no stream takes subject `{0}`")]
    NoStream(String),
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    #[error("unknown consumer `{durable}` on stream `{stream}`")]
    UnknownConsumer { stream: String, durable: String },
    #[error("compare-and-swap on `{bucket}/{key}` lost: expected revision {expected:?}, found {found:?}")]
    CasConflict { bucket: String, key: String, expected: Option<u64>, found: Option<u64> },
    #[error("embedded store: {0}")]
    Store(String),
    #[error("jetstream: {0}")]
    JetStream(String),
    #[error("{0} is not supported by the {1} backend")]
    Unsupported(&'static str, &'static str),
    #[error("bus is closed")]
    Closed,
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct OutMessage {
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
    /// Deterministic id: a second publish with the same id (within the dedup window) is
    /// acknowledged as a duplicate and not stored again.
    pub msg_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    pub stream: String,
    pub sequence: u64,
    pub duplicate: bool,
}

/// Where a consumer or a replay starts.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliverPolicy {
    All,
    /// Only messages published after the consumer was created.
    New,
    FromSequence(u64),
    FromTime(DateTime<Utc>),
}

/// A durable pull consumer. Several workers opening the same `durable` share its messages.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub stream: String,
    pub durable: String,
    pub filter: String,
    pub deliver: DeliverPolicy,
    /// Unacknowledged messages are redelivered after this long (extend with `progress`).
    pub ack_wait: Duration,
    /// Deliveries before the message is dead-lettered to `fc.dlq.<stream>`.
    pub max_deliver: u32,
    /// Messages handed out but not yet acknowledged, across all workers.
    pub max_ack_pending: u32,
}

impl ConsumerConfig {
    pub fn new(stream: &str, durable: &str, filter: &str) -> Self {
        Self {
            stream: stream.into(),
            durable: durable.into(),
            filter: filter.into(),
            deliver: DeliverPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
        }
    }
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = n.max(1);
        self
    }
    pub fn deliver(mut self, p: DeliverPolicy) -> Self {
        self.deliver = p;
        self
    }
    pub fn max_ack_pending(mut self, n: u32) -> Self {
        self.max_ack_pending = n.max(1);
        self
    }
}

/// How a backend settles one delivered message.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&self) -> Result<(), BusError>;
    /// Redeliver after `delay` (now when `None`).
    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError>;
    /// Still working: restart the ack_wait clock.
    async fn progress(&self) -> Result<(), BusError>;
    /// Never redeliver (the caller has dead-lettered it).
    async fn term(&self) -> Result<(), BusError>;
}

/// A message as read from a stream. Clones share one acknowledgement handle, so a worker
/// loop can send progress acks while a handler owns its clone.
#[derive(Clone)]
pub struct Delivery {
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
    pub stream: String,
    pub stream_sequence: u64,
    /// 1 on first delivery.
    pub deliveries: u64,
    pub published: DateTime<Utc>,
    acker: Arc<dyn Acker>,
    dlq: Option<DlqContext>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject)
            .field("stream", &self.stream)
            .field("stream_sequence", &self.stream_sequence)
            .field("deliveries", &self.deliveries)
            .finish()
    }
}

/// Enough to dead-letter a delivery from wherever it is settled.
#[derive(Clone)]
struct DlqContext {
    bus: Bus,
    consumer: String,
    last_errors: Arc<Mutex<HashMap<u64, String>>>,
}

impl Delivery {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        subject: String,
        headers: Headers,
        payload: Bytes,
        stream: String,
        stream_sequence: u64,
        deliveries: u64,
        published: DateTime<Utc>,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self { subject, headers, payload, stream, stream_sequence, deliveries, published, acker: Arc::from(acker), dlq: None }
    }

    /// Decodes the body as an event envelope.
    pub fn envelope(&self) -> Result<Envelope, fc_events::EventError> {
        Envelope::from_bytes(&self.payload)
    }

    pub async fn ack(&self) -> Result<(), BusError> {
        self.forget_error();
        self.acker.ack().await
    }

    /// Processing failed; retry after `delay`. The reason is kept (in this process) so a
    /// later dead-letter record can say what went wrong.
    pub async fn nak(&self, delay: Option<Duration>, reason: &str) -> Result<(), BusError> {
        if let Some(d) = &self.dlq {
            if let Ok(mut m) = d.last_errors.lock() {
                m.insert(self.stream_sequence, reason.to_string());
            }
        }
        self.acker.nak(delay).await
    }

    pub async fn progress(&self) -> Result<(), BusError> {
        self.acker.progress().await
    }

    /// The message can never be processed (undecodable, invalid): dead-letter it now with
    /// `reason` and stop redelivery.
    pub async fn dead_letter(&self, reason: &str) -> Result<(), BusError> {
        if let Some(d) = &self.dlq {
            d.bus.publish_dead_letter(self, &d.consumer, reason).await?;
        }
        self.forget_error();
        self.acker.term().await
    }

    fn forget_error(&self) {
        if let Some(d) = &self.dlq {
            if let Ok(mut m) = d.last_errors.lock() {
                m.remove(&self.stream_sequence);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KvEntry {
    pub bucket: String,
    pub key: String,
    pub value: Bytes,
    pub revision: u64,
    /// A delete marker (value is empty).
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamInfo {
    pub messages: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// A backend's raw pull consumer; the [`Consumer`] wrapper adds dead-lettering.
#[async_trait]
pub trait RawConsumer: Send + Sync {
    /// Up to `max` messages, waiting at most `wait` for the first one.
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;
    /// Messages not yet delivered plus pending acknowledgements (work left).
    async fn lag(&self) -> Result<u64, BusError>;
}

/// What a backend implements. Use it through [`Bus`].
#[async_trait]
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    async fn ensure_streams(&self, specs: &[StreamSpec]) -> Result<(), BusError>;
    async fn publish(&self, msg: OutMessage) -> Result<PubAck, BusError>;
    /// Creates the durable consumer or updates its config (never silently keeps an old one).
    async fn consumer(&self, cfg: &ConsumerConfig, server_max_deliver: u32) -> Result<Box<dyn RawConsumer>, BusError>;
    /// An ordered, unacknowledged read of a stream from `from`, ending at the stream's
    /// last message as of the call.
    async fn replay(
        &self,
        stream: &str,
        filter: &str,
        from: DeliverPolicy,
    ) -> Result<BoxStream<'static, Result<Delivery, BusError>>, BusError>;
    async fn stream_info(&self, stream: &str) -> Result<StreamInfo, BusError>;
    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError>;
    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BusError>;
    /// Writes only if the key's current revision is `expected` (`None`: key must not exist).
    async fn kv_cas(&self, bucket: &str, key: &str, value: Bytes, expected: Option<u64>) -> Result<u64, BusError>;
    /// The key's current entry (if any), then every later change.
    async fn kv_watch(&self, bucket: &str, key: &str) -> Result<BoxStream<'static, Result<KvEntry, BusError>>, BusError>;
    async fn object_put(&self, bucket: &str, name: &str, data: Bytes) -> Result<(), BusError>;
    async fn object_get(&self, bucket: &str, name: &str) -> Result<Option<Bytes>, BusError>;
    async fn healthy(&self) -> bool;
}

/// Where to connect: NATS when `nats_url` is set, else the embedded store in `data_dir`.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub nats_url: Option<String>,
    pub data_dir: PathBuf,
}

impl BusConfig {
    /// `FC_NATS_URL` and `FC_DATA_DIR` (default `./.fcmesh`).
    pub fn from_env() -> Self {
        let nats_url = std::env::var("FC_NATS_URL").ok().filter(|s| !s.trim().is_empty());
        let data_dir = std::env::var("FC_DATA_DIR").unwrap_or_else(|_| ".fcmesh".into());
        Self { nats_url, data_dir: PathBuf::from(data_dir) }
    }
}

/// The bus handle every service gets. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bus({})", self.backend.name())
    }
}

impl Bus {
    pub fn from_backend(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// Connects per `cfg` and creates or updates every stream fcmesh uses.
    pub async fn connect(cfg: &BusConfig) -> Result<Self, BusError> {
        let bus = match &cfg.nats_url {
            Some(url) => Self::from_backend(Arc::new(jetstream::JetStreamBackend::connect(url).await?)),
            None => {
                let path = cfg.data_dir.join("bus.redb");
                Self::from_backend(Arc::new(embedded::EmbeddedBackend::open(&path)?))
            }
        };
        bus.backend.ensure_streams(subjects::STREAMS).await?;
        Ok(bus)
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub async fn healthy(&self) -> bool {
        self.backend.healthy().await
    }

    pub async fn publish(&self, msg: OutMessage) -> Result<PubAck, BusError> {
        let subject = msg.subject.clone();
        let r = self.backend.publish(msg).await;
        let outcome = match &r {
            Ok(a) if a.duplicate => "duplicate",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        let stream = subjects::stream_for(&subject).map(|s| s.name).unwrap_or("none");
        metrics::counter!("fc_bus_published_messages_total", "stream" => stream, "outcome" => outcome).increment(1);
        r
    }

    /// Publishes an event envelope on the subject its payload type names.
    pub async fn publish_envelope(
        &self,
        subject: String,
        envelope: &Envelope,
        msg_id: Option<String>,
        headers: Headers,
    ) -> Result<PubAck, BusError> {
        self.publish(OutMessage { subject, headers, payload: Bytes::from(envelope.to_bytes()), msg_id }).await
    }

    /// Opens (creating or updating) a durable consumer.
    pub async fn consumer(&self, cfg: ConsumerConfig) -> Result<Consumer, BusError> {
        // One delivery more than the limit reaches us so that a message whose last worker
        // died without settling it is dead-lettered too, not silently abandoned.
        let raw = self.backend.consumer(&cfg, cfg.max_deliver.saturating_add(1)).await?;
        Ok(Consumer { raw, cfg, bus: self.clone(), last_errors: Arc::new(Mutex::new(HashMap::new())) })
    }

    pub async fn replay(
        &self,
        stream: &str,
        filter: &str,
        from: DeliverPolicy,
    ) -> Result<BoxStream<'static, Result<Delivery, BusError>>, BusError> {
        self.backend.replay(stream, filter, from).await
    }

    pub async fn stream_info(&self, stream: &str) -> Result<StreamInfo, BusError> {
        self.backend.stream_info(stream).await
    }

    pub async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError> {
        self.backend.kv_get(bucket, key).await
    }
    pub async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BusError> {
        self.backend.kv_put(bucket, key, value).await
    }
    pub async fn kv_cas(&self, bucket: &str, key: &str, value: Bytes, expected: Option<u64>) -> Result<u64, BusError> {
        self.backend.kv_cas(bucket, key, value, expected).await
    }
    pub async fn kv_watch(&self, bucket: &str, key: &str) -> Result<BoxStream<'static, Result<KvEntry, BusError>>, BusError> {
        self.backend.kv_watch(bucket, key).await
    }
    pub async fn object_put(&self, bucket: &str, name: &str, data: Bytes) -> Result<(), BusError> {
        self.backend.object_put(bucket, name, data).await
    }
    pub async fn object_get(&self, bucket: &str, name: &str) -> Result<Option<Bytes>, BusError> {
        self.backend.object_get(bucket, name).await
    }

    async fn publish_dead_letter(&self, d: &Delivery, consumer: &str, reason: &str) -> Result<(), BusError> {
        let run_id = d.envelope().map(|e| e.run_id).unwrap_or_else(|_| "unknown".into());
        let payload = DeadLettered {
            stream: d.stream.clone(),
            subject: d.subject.clone(),
            consumer: consumer.to_string(),
            stream_sequence: d.stream_sequence,
            deliveries: d.deliveries,
            reason: reason.to_string(),
            original: String::from_utf8_lossy(&d.payload).into_owned(),
        };
        let env = Envelope::new(&run_id, &format!("bus/{consumer}"), &payload)
            .map_err(|e| BusError::Store(format!("dead-letter envelope: {e}")))?;
        let msg_id = format!("dlq:{}:{}:{}", d.stream, consumer, d.stream_sequence);
        metrics::counter!("fc_bus_dead_lettered_messages_total", "stream" => d.stream.clone(), "consumer" => consumer.to_string())
            .increment(1);
        tracing::warn!(stream = %d.stream, seq = d.stream_sequence, consumer, reason, "message dead-lettered");
        self.publish_envelope(payload.subject(&run_id), &env, Some(msg_id), d.headers.clone()).await?;
        Ok(())
    }
}

/// A durable pull consumer with dead-lettering after `max_deliver`.
pub struct Consumer {
    raw: Box<dyn RawConsumer>,
    cfg: ConsumerConfig,
    bus: Bus,
    last_errors: Arc<Mutex<HashMap<u64, String>>>,
}

impl Consumer {
    pub fn config(&self) -> &ConsumerConfig {
        &self.cfg
    }

    /// Up to `max` messages (keep it small so one worker does not hoard work), waiting at
    /// most `wait`. Messages over their delivery limit are dead-lettered, not returned.
    pub async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let got = self.raw.fetch(max.max(1), wait).await?;
        let mut out = Vec::with_capacity(got.len());
        for mut d in got {
            d.dlq = Some(DlqContext {
                bus: self.bus.clone(),
                consumer: self.cfg.durable.clone(),
                last_errors: self.last_errors.clone(),
            });
            if d.deliveries > u64::from(self.cfg.max_deliver) {
                let last = self.last_errors.lock().ok().and_then(|m| m.get(&d.stream_sequence).cloned());
                let reason = match last {
                    Some(e) => format!("max deliveries ({}) exceeded; last error: {e}", self.cfg.max_deliver),
                    None => format!("max deliveries ({}) exceeded without acknowledgement", self.cfg.max_deliver),
                };
                d.dead_letter(&reason).await?;
                continue;
            }
            out.push(d);
        }
        Ok(out)
    }

    /// Messages left to process (backlog plus unacknowledged), for autoscaling and status.
    pub async fn lag(&self) -> Result<u64, BusError> {
        self.raw.lag().await
    }
}

/// Publishes a typed event with its trace headers; the helper most services use.
pub async fn publish_event<P: EventPayload>(
    bus: &Bus,
    envelope: &Envelope,
    payload: &P,
    msg_id: String,
    headers: Headers,
) -> Result<PubAck, BusError> {
    bus.publish_envelope(payload.subject(&envelope.run_id), envelope, Some(msg_id), headers).await
}

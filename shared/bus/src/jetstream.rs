//! The NATS JetStream backend (distributed mode).
//!
//! Written for nats-server 2.9 (Debian bookworm's), which allows one filter subject per
//! consumer: every fcmesh consumer uses a single (possibly wildcard) filter and services
//! dispatch on the event type.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream as js_stream, AckKind, Context};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use fc_events::subjects::{Retention, StreamSpec};
use futures::stream::{BoxStream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use crate::{
    Acker, Backend, BusError, ConsumerConfig, DeliverPolicy, Delivery, Headers, KvEntry, OutMessage, PubAck,
    RawConsumer, StreamInfo,
};

/// How long JetStream remembers message ids for dedup (the server default is 2 min; a
/// slow retry after a crash must still be recognised).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

fn js_err(e: impl std::fmt::Display) -> BusError {
    BusError::JetStream(e.to_string())
}

pub struct JetStreamBackend {
    client: async_nats::Client,
    ctx: Context,
    kv: Mutex<HashMap<String, kv::Store>>,
    objects: Mutex<HashMap<String, jetstream::object_store::ObjectStore>>,
}

impl JetStreamBackend {
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("fcmesh")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| BusError::Connect { url: url.into(), reason: e.to_string() })?;
        let ctx = jetstream::new(client.clone());
        Ok(Self { client, ctx, kv: Mutex::new(HashMap::new()), objects: Mutex::new(HashMap::new()) })
    }

    /// `create_or_update_stream`, tried again after a timeout or an unavailable JetStream.
    ///
    /// Every process calls this at start-up, so it meets a server that is itself starting
    /// or restarting (a pod rescheduled, a crash): the request then times out while the
    /// client reconnects. The call is idempotent, so a few paced retries turn that window
    /// into a delay instead of a failed start; any other error returns at once.
    async fn create_or_update_stream_retrying(
        &self,
        cfg: js_stream::Config,
    ) -> Result<js_stream::Info, jetstream::context::CreateStreamError> {
        const ATTEMPTS: u32 = 4;
        let mut attempt = 1;
        loop {
            match self.ctx.create_or_update_stream(cfg.clone()).await {
                Err(e)
                    if attempt < ATTEMPTS
                        && matches!(
                            e.kind(),
                            jetstream::context::CreateStreamErrorKind::TimedOut
                                | jetstream::context::CreateStreamErrorKind::JetStreamUnavailable
                        ) =>
                {
                    tracing::warn!(stream = %cfg.name, attempt, error = %e, "creating a stream failed; trying again");
                    tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The raw client, for benchmarks that compare against plain async-nats.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn kv_store(&self, bucket: &str) -> Result<kv::Store, BusError> {
        let mut map = self.kv.lock().await;
        if let Some(s) = map.get(bucket) {
            return Ok(s.clone());
        }
        // The bucket's stream is created here rather than by `create_key_value`, which
        // first queries account info in a shape nats-server 2.9 does not answer. The
        // settings are the KV conventions (ADR-8): one stream `KV_<bucket>` on
        // `$KV.<bucket>.>`, history per key, rollups allowed, deletes denied.
        let store = match self.ctx.get_key_value(bucket).await {
            Ok(s) => s,
            Err(_) => {
                let cfg = js_stream::Config {
                    name: format!("KV_{bucket}"),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    storage: js_stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: js_stream::DiscardPolicy::New,
                    ..Default::default()
                };
                self.ctx.create_or_update_stream(cfg).await.map_err(|e| js_err(format!("kv bucket {bucket}: {e}")))?;
                self.ctx.get_key_value(bucket).await.map_err(js_err)?
            }
        };
        map.insert(bucket.to_string(), store.clone());
        Ok(store)
    }

    async fn object_store(&self, bucket: &str) -> Result<jetstream::object_store::ObjectStore, BusError> {
        let mut map = self.objects.lock().await;
        if let Some(s) = map.get(bucket) {
            return Ok(s.clone());
        }
        let store = match self.ctx.get_object_store(bucket).await {
            Ok(s) => s,
            Err(_) => self
                .ctx
                .create_object_store(jetstream::object_store::Config {
                    bucket: bucket.to_string(),
                    storage: js_stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(js_err)?,
        };
        map.insert(bucket.to_string(), store.clone());
        Ok(store)
    }
}

fn to_header_map(h: &Headers) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in h {
        m.insert(k.as_str(), v.as_str());
    }
    m
}

fn from_header_map(h: Option<&HeaderMap>) -> Headers {
    let mut out = Headers::new();
    if let Some(h) = h {
        for (k, vs) in h.iter() {
            let name = k.to_string();
            // Transport headers are the backend's business, not the application's.
            if name.starts_with("Nats-") {
                continue;
            }
            if let Some(v) = vs.first() {
                out.insert(name, v.as_str().to_string());
            }
        }
    }
    out
}

fn to_chrono(t: time::OffsetDateTime) -> DateTime<Utc> {
    let nanos = t.unix_timestamp_nanos();
    Utc.timestamp_nanos(nanos as i64)
}

fn to_time(t: &DateTime<Utc>) -> time::OffsetDateTime {
    let nanos = t.timestamp_nanos_opt().unwrap_or(0) as i128;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn deliver_policy(p: &DeliverPolicy) -> consumer::DeliverPolicy {
    match p {
        DeliverPolicy::All => consumer::DeliverPolicy::All,
        DeliverPolicy::New => consumer::DeliverPolicy::New,
        DeliverPolicy::FromSequence(s) => consumer::DeliverPolicy::ByStartSequence { start_sequence: (*s).max(1) },
        DeliverPolicy::FromTime(t) => consumer::DeliverPolicy::ByStartTime { start_time: to_time(t) },
    }
}

fn delivery(msg: jetstream::Message, acker: Box<dyn Acker>) -> Result<Delivery, BusError> {
    let info = msg.info().map_err(js_err)?;
    let (stream, seq, delivered, published) =
        (info.stream.to_string(), info.stream_sequence, info.delivered.max(1) as u64, to_chrono(info.published));
    Ok(Delivery::new(
        msg.subject.to_string(),
        from_header_map(msg.headers.as_ref()),
        msg.payload.clone(),
        stream,
        seq,
        delivered,
        published,
        acker,
    ))
}

struct JsAcker(jetstream::Message);

#[async_trait]
impl Acker for JsAcker {
    async fn ack(&self) -> Result<(), BusError> {
        // Awaited confirmation: once this returns the server has the ack, so a worker
        // that exits right after cannot cause a redelivery.
        self.0.double_ack().await.map_err(js_err)
    }
    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.0.ack_with(AckKind::Nak(delay)).await.map_err(js_err)
    }
    async fn progress(&self) -> Result<(), BusError> {
        self.0.ack_with(AckKind::Progress).await.map_err(js_err)
    }
    async fn term(&self) -> Result<(), BusError> {
        self.0.ack_with(AckKind::Term).await.map_err(js_err)
    }
}

struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(&self) -> Result<(), BusError> {
        Ok(())
    }
    async fn nak(&self, _: Option<Duration>) -> Result<(), BusError> {
        Ok(())
    }
    async fn progress(&self) -> Result<(), BusError> {
        Ok(())
    }
    async fn term(&self) -> Result<(), BusError> {
        Ok(())
    }
}

struct JsConsumer {
    consumer: Mutex<consumer::PullConsumer>,
}

#[async_trait]
impl RawConsumer for JsConsumer {
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let c = self.consumer.lock().await.clone();
        let mut batch = if wait < Duration::from_millis(50) {
            c.fetch().max_messages(max).messages().await.map_err(js_err)?
        } else {
            c.batch().max_messages(max).expires(wait).messages().await.map_err(js_err)?
        };
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(js_err)?;
            let acker = Box::new(JsAcker(m.clone()));
            out.push(delivery(m, acker)?);
        }
        Ok(out)
    }

    async fn lag(&self) -> Result<u64, BusError> {
        let mut c = self.consumer.lock().await;
        let info = c.info().await.map_err(js_err)?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}

#[async_trait]
impl Backend for JetStreamBackend {
    fn name(&self) -> &'static str {
        "jetstream"
    }

    async fn ensure_streams(&self, specs: &[StreamSpec]) -> Result<(), BusError> {
        for spec in specs {
            let cfg = js_stream::Config {
                name: spec.name.to_string(),
                subjects: spec.subjects.iter().map(|s| s.to_string()).collect(),
                retention: match spec.retention {
                    Retention::Limits => js_stream::RetentionPolicy::Limits,
                    Retention::WorkQueue => js_stream::RetentionPolicy::WorkQueue,
                },
                storage: js_stream::StorageType::File,
                max_age: spec.max_age,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            };
            self.create_or_update_stream_retrying(cfg).await.map_err(|e| js_err(format!("stream {}: {e}", spec.name)))?;
        }
        Ok(())
    }

    async fn publish(&self, msg: OutMessage) -> Result<PubAck, BusError> {
        let mut p = jetstream::message::PublishMessage::build().payload(msg.payload).headers(to_header_map(&msg.headers));
        if let Some(id) = &msg.msg_id {
            p = p.message_id(id);
        }
        let subject = msg.subject.clone();
        let ack = self
            .ctx
            .send_publish(msg.subject, p)
            .await
            .map_err(|e| js_err(format!("publish {subject}: {e}")))?
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::PublishErrorKind::StreamNotFound => BusError::NoStream(subject.clone()),
                _ => js_err(format!("publish ack {subject}: {e}")),
            })?;
        Ok(PubAck { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate })
    }

    async fn consumer(&self, cfg: &ConsumerConfig, server_max_deliver: u32) -> Result<Box<dyn RawConsumer>, BusError> {
        let stream = self.ctx.get_stream(&cfg.stream).await.map_err(|_| BusError::UnknownStream(cfg.stream.clone()))?;
        let config = consumer::pull::Config {
            durable_name: Some(cfg.durable.clone()),
            name: Some(cfg.durable.clone()),
            filter_subject: cfg.filter.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: cfg.ack_wait,
            max_deliver: i64::from(server_max_deliver),
            max_ack_pending: i64::from(cfg.max_ack_pending),
            deliver_policy: deliver_policy(&cfg.deliver),
            ..Default::default()
        };
        // create_consumer creates or, for an existing durable, updates the config; an
        // incompatible change (e.g. deliver policy) is an error, never silently ignored.
        let c = match stream.create_consumer(config.clone()).await {
            Ok(c) => c,
            Err(create_err) => stream
                .update_consumer(config)
                .await
                .map_err(|e| js_err(format!("consumer {}: create: {create_err}; update: {e}", cfg.durable)))?,
        };
        Ok(Box::new(JsConsumer { consumer: Mutex::new(c) }))
    }

    async fn replay(
        &self,
        stream: &str,
        filter: &str,
        from: DeliverPolicy,
    ) -> Result<BoxStream<'static, Result<Delivery, BusError>>, BusError> {
        let s = self.ctx.get_stream(stream).await.map_err(|_| BusError::UnknownStream(stream.into()))?;
        let end = self.stream_info(stream).await?.last_sequence;
        let mut c = s
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.to_string(),
                deliver_policy: deliver_policy(&from),
                ..Default::default()
            })
            .await
            .map_err(js_err)?;
        let pending = c.info().await.map_err(js_err)?.num_pending;
        if pending == 0 || end == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let msgs = c.messages().await.map_err(js_err)?;
        // An ordered consumer never ends by itself: stop at the stream's end as of the call,
        // or when the server says nothing matching is left.
        let out = futures::stream::unfold((msgs, false), move |(mut msgs, done)| async move {
            if done {
                return None;
            }
            let m = match msgs.next().await? {
                Ok(m) => m,
                Err(e) => return Some((Err(js_err(e)), (msgs, true))),
            };
            let (last, seq) = match m.info() {
                Ok(i) => (i.pending == 0, i.stream_sequence),
                Err(e) => return Some((Err(js_err(e)), (msgs, true))),
            };
            let d = delivery(m, Box::new(NoAck));
            Some((d, (msgs, last || seq >= end)))
        });
        Ok(out.boxed())
    }

    async fn stream_info(&self, stream: &str) -> Result<StreamInfo, BusError> {
        let mut s = self.ctx.get_stream(stream).await.map_err(|_| BusError::UnknownStream(stream.into()))?;
        let info = s.info().await.map_err(js_err)?;
        Ok(StreamInfo {
            messages: info.state.messages,
            first_sequence: info.state.first_sequence,
            last_sequence: info.state.last_sequence,
        })
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError> {
        let store = self.kv_store(bucket).await?;
        let e = store.entry(key).await.map_err(js_err)?;
        Ok(e.filter(|e| e.operation == kv::Operation::Put).map(|e| KvEntry {
            bucket: bucket.into(),
            key: key.into(),
            value: e.value,
            revision: e.revision,
            deleted: false,
        }))
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BusError> {
        let store = self.kv_store(bucket).await?;
        store.put(key, value).await.map_err(js_err)
    }

    async fn kv_cas(&self, bucket: &str, key: &str, value: Bytes, expected: Option<u64>) -> Result<u64, BusError> {
        let store = self.kv_store(bucket).await?;
        let lost = |found: Option<u64>| BusError::CasConflict { bucket: bucket.into(), key: key.into(), expected, found };
        match expected {
            None => match store.create(key, value).await {
                Ok(r) => Ok(r),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(lost(self.kv_get(bucket, key).await?.map(|e| e.revision)))
                }
                Err(e) => Err(js_err(e)),
            },
            Some(rev) => match store.update(key, value, rev).await {
                Ok(r) => Ok(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Err(lost(self.kv_get(bucket, key).await?.map(|e| e.revision)))
                }
                Err(e) => Err(js_err(e)),
            },
        }
    }

    async fn kv_watch(&self, bucket: &str, key: &str) -> Result<BoxStream<'static, Result<KvEntry, BusError>>, BusError> {
        let store = self.kv_store(bucket).await?;
        // History is 1 per key, so "with history" is the current value, then every change.
        let w = store.watch_with_history(key).await.map_err(js_err)?;
        let b = bucket.to_string();
        Ok(w.map(move |r| {
            r.map(|e| KvEntry {
                bucket: b.clone(),
                key: e.key,
                value: e.value,
                revision: e.revision,
                deleted: e.operation != kv::Operation::Put,
            })
            .map_err(js_err)
        })
        .boxed())
    }

    async fn object_put(&self, bucket: &str, name: &str, data: Bytes) -> Result<(), BusError> {
        let store = self.object_store(bucket).await?;
        let mut reader: &[u8] = &data;
        store.put(name, &mut reader).await.map_err(js_err)?;
        Ok(())
    }

    async fn object_get(&self, bucket: &str, name: &str) -> Result<Option<Bytes>, BusError> {
        let store = self.object_store(bucket).await?;
        let mut obj = match store.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(js_err(e)),
        };
        let mut buf = Vec::new();
        obj.read_to_end(&mut buf).await.map_err(js_err)?;
        Ok(Some(Bytes::from(buf)))
    }

    async fn healthy(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

//! The embedded backend: JetStream's semantics in one process, stored in redb.
//!
//! Layout (one redb file, `FC_DATA_DIR/bus.redb`):
//! - `msgs:<STREAM>`: stream sequence -> encoded message (subject, time, headers, payload);
//! - `meta`: `last_seq:<STREAM>` -> last assigned sequence (never reused, even after
//!   work-queue deletes), `kvrev:<bucket>` -> last KV revision;
//! - `dedup`: `<STREAM>\0<msg id>` -> (sequence, publish time), pruned past the window;
//! - `consumers`: `<STREAM>\0<durable>` -> consumer state (cursor, pending acks) as JSON;
//! - `kv:<bucket>`: key -> (revision, deleted, value).
//!
//! Publishes and KV writes commit with `Durability::Immediate`: an acknowledged publish
//! survives a crash. Consumer bookkeeping (fetch, ack) commits with `Durability::None`; a
//! crash can roll it back to the last durable commit, which only means redelivery
//! (at-least-once, as on JetStream), never loss.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use fc_events::subjects::{subject_matches, Retention, StreamSpec};
use futures::stream::{self, BoxStream, StreamExt};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify};

use crate::{
    Acker, Backend, BusError, ConsumerConfig, DeliverPolicy, Delivery, Headers, KvEntry, OutMessage, PubAck,
    RawConsumer, StreamInfo,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DEDUP: TableDefinition<&str, &[u8]> = TableDefinition::new("dedup");
const CONSUMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("consumers");

/// Same default as JetStream's `duplicate_window`.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);

fn store_err(e: impl std::fmt::Display) -> BusError {
    BusError::Store(e.to_string())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn msgs_table(stream: &str) -> String {
    format!("msgs:{stream}")
}

fn kv_table(bucket: &str) -> String {
    format!("kv:{bucket}")
}

/// A stored message. Encoded by hand (length-prefixed fields): it sits inside redb, which
/// does the storage; this is only the value layout.
struct StoredMsg {
    subject: String,
    time_ms: i64,
    headers: Headers,
    payload: Bytes,
}

impl StoredMsg {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + self.subject.len() + 64);
        put_bytes(&mut out, self.subject.as_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (k, v) in &self.headers {
            put_bytes(&mut out, k.as_bytes());
            put_bytes(&mut out, v.as_bytes());
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn decode(b: &[u8]) -> Result<Self, BusError> {
        let mut r = Reader { b, pos: 0 };
        let subject = r.string()?;
        let time_ms = i64::from_be_bytes(r.array::<8>()?);
        let n = u32::from_be_bytes(r.array::<4>()?);
        let mut headers = Headers::new();
        for _ in 0..n {
            let k = r.string()?;
            let v = r.string()?;
            headers.insert(k, v);
        }
        let payload = Bytes::copy_from_slice(&b[r.pos..]);
        Ok(Self { subject, time_ms, headers, payload })
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BusError> {
        let end = self.pos + N;
        let s = self.b.get(self.pos..end).ok_or_else(|| store_err("truncated record"))?;
        self.pos = end;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn string(&mut self) -> Result<String, BusError> {
        let n = u32::from_be_bytes(self.array::<4>()?) as usize;
        let end = self.pos + n;
        let s = self.b.get(self.pos..end).ok_or_else(|| store_err("truncated record"))?;
        self.pos = end;
        String::from_utf8(s.to_vec()).map_err(store_err)
    }
}

fn encode_kv(revision: u64, deleted: bool, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 9);
    out.extend_from_slice(&revision.to_be_bytes());
    out.push(u8::from(deleted));
    out.extend_from_slice(value);
    out
}

fn decode_kv(bucket: &str, key: &str, b: &[u8]) -> Result<KvEntry, BusError> {
    if b.len() < 9 {
        return Err(store_err("truncated kv record"));
    }
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&b[..8]);
    Ok(KvEntry {
        bucket: bucket.into(),
        key: key.into(),
        revision: u64::from_be_bytes(rev),
        deleted: b[8] != 0,
        value: Bytes::copy_from_slice(&b[9..]),
    })
}

#[derive(Debug, Clone)]
struct StreamState {
    subjects: Vec<String>,
    retention: Retention,
    max_age: Duration,
    last_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    deliveries: u64,
    deadline_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConsumerState {
    filter: String,
    ack_wait_ms: i64,
    max_ack_pending: u32,
    /// Next stream sequence not yet handed out.
    cursor: u64,
    pending: BTreeMap<u64, Pending>,
}

struct State {
    streams: HashMap<String, StreamState>,
    consumers: HashMap<String, ConsumerState>,
    dedup: HashMap<String, (u64, i64)>,
    publishes_since_prune: u64,
}

struct Inner {
    db: Database,
    state: Mutex<State>,
    /// Woken on every publish and nak, so waiting fetches look again.
    wake: Notify,
    kv_changes: broadcast::Sender<KvEntry>,
}

/// The embedded bus. Clone the [`crate::Bus`] that wraps it, not this.
pub struct EmbeddedBackend {
    inner: Arc<Inner>,
}

fn consumer_key(stream: &str, durable: &str) -> String {
    format!("{stream}\0{durable}")
}

impl EmbeddedBackend {
    /// Opens (or creates) the store at `path`. Only one process may open a store at a time.
    pub fn open(path: &Path) -> Result<Self, BusError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| store_err(format!("create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| store_err(format!("open {}: {e}", path.display())))?;
        let mut state =
            State { streams: HashMap::new(), consumers: HashMap::new(), dedup: HashMap::new(), publishes_since_prune: 0 };
        {
            let tx = db.begin_write().map_err(store_err)?;
            {
                tx.open_table(META).map_err(store_err)?;
                let consumers = tx.open_table(CONSUMERS).map_err(store_err)?;
                for row in consumers.range::<&str>(..).map_err(store_err)? {
                    let (k, v) = row.map_err(store_err)?;
                    let st: ConsumerState = serde_json::from_slice(v.value()).map_err(store_err)?;
                    state.consumers.insert(k.value().to_string(), st);
                }
                let mut dedup = tx.open_table(DEDUP).map_err(store_err)?;
                let horizon = now_ms() - DEDUP_WINDOW.as_millis() as i64;
                let mut stale = Vec::new();
                for row in dedup.range::<&str>(..).map_err(store_err)? {
                    let (k, v) = row.map_err(store_err)?;
                    let (seq, t) = decode_dedup(v.value());
                    if t < horizon {
                        stale.push(k.value().to_string());
                    } else {
                        state.dedup.insert(k.value().to_string(), (seq, t));
                    }
                }
                for k in stale {
                    dedup.remove(k.as_str()).map_err(store_err)?;
                }
            }
            tx.commit().map_err(store_err)?;
        }
        let (kv_changes, _) = broadcast::channel(1024);
        Ok(Self { inner: Arc::new(Inner { db, state: Mutex::new(state), wake: Notify::new(), kv_changes }) })
    }
}

fn decode_dedup(b: &[u8]) -> (u64, i64) {
    let mut s = [0u8; 8];
    let mut t = [0u8; 8];
    if b.len() >= 16 {
        s.copy_from_slice(&b[..8]);
        t.copy_from_slice(&b[8..16]);
    }
    (u64::from_be_bytes(s), i64::from_be_bytes(t))
}

impl Inner {
    fn lock(&self) -> Result<MutexGuard<'_, State>, BusError> {
        self.state.lock().map_err(|_| store_err("state lock poisoned"))
    }

    fn ensure_streams(&self, specs: &[StreamSpec]) -> Result<(), BusError> {
        let mut st = self.lock()?;
        let tx = self.db.begin_write().map_err(store_err)?;
        {
            let mut meta = tx.open_table(META).map_err(store_err)?;
            for spec in specs {
                let key = format!("last_seq:{}", spec.name);
                let last_seq = meta.get(key.as_str()).map_err(store_err)?.map(|g| g.value()).unwrap_or(0);
                if last_seq == 0 {
                    meta.insert(key.as_str(), 0).map_err(store_err)?;
                }
                let name = msgs_table(spec.name);
                tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)).map_err(store_err)?;
                st.streams.insert(
                    spec.name.to_string(),
                    StreamState {
                        subjects: spec.subjects.iter().map(|s| s.to_string()).collect(),
                        retention: spec.retention,
                        max_age: spec.max_age,
                        last_seq,
                    },
                );
            }
        }
        tx.commit().map_err(store_err)?;
        Ok(())
    }

    fn publish(&self, msg: OutMessage) -> Result<PubAck, BusError> {
        let mut st = self.lock()?;
        let (stream_name, stream) = st
            .streams
            .iter()
            .find(|(_, s)| s.subjects.iter().any(|f| subject_matches(f, &msg.subject)))
            .map(|(n, s)| (n.clone(), s.clone()))
            .ok_or_else(|| BusError::NoStream(msg.subject.clone()))?;
        let now = now_ms();
        let dedup_key = msg.msg_id.as_ref().map(|id| format!("{stream_name}\0{id}"));
        if let Some(k) = &dedup_key {
            if let Some((seq, t)) = st.dedup.get(k) {
                if now - t < DEDUP_WINDOW.as_millis() as i64 {
                    return Ok(PubAck { stream: stream_name, sequence: *seq, duplicate: true });
                }
            }
        }
        let seq = stream.last_seq + 1;
        let record = StoredMsg { subject: msg.subject, time_ms: now, headers: msg.headers, payload: msg.payload };
        let mut tx = self.db.begin_write().map_err(store_err)?;
        tx.set_durability(Durability::Immediate).map_err(store_err)?;
        {
            let name = msgs_table(&stream_name);
            let mut msgs = tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)).map_err(store_err)?;
            msgs.insert(seq, record.encode().as_slice()).map_err(store_err)?;
            if !stream.max_age.is_zero() && st.publishes_since_prune > 1000 {
                expire_front(&mut msgs, now - stream.max_age.as_millis() as i64)?;
            }
            let mut meta = tx.open_table(META).map_err(store_err)?;
            meta.insert(format!("last_seq:{stream_name}").as_str(), seq).map_err(store_err)?;
            if let Some(k) = &dedup_key {
                let mut dedup = tx.open_table(DEDUP).map_err(store_err)?;
                let mut v = seq.to_be_bytes().to_vec();
                v.extend_from_slice(&now.to_be_bytes());
                dedup.insert(k.as_str(), v.as_slice()).map_err(store_err)?;
            }
        }
        tx.commit().map_err(store_err)?;
        if let Some(s) = st.streams.get_mut(&stream_name) {
            s.last_seq = seq;
        }
        if let Some(k) = dedup_key {
            st.dedup.insert(k, (seq, now));
        }
        st.publishes_since_prune += 1;
        if st.publishes_since_prune > 1000 {
            st.publishes_since_prune = 0;
            let horizon = now - DEDUP_WINDOW.as_millis() as i64;
            st.dedup.retain(|_, (_, t)| *t >= horizon);
        }
        drop(st);
        self.wake.notify_waiters();
        Ok(PubAck { stream: stream_name, sequence: seq, duplicate: false })
    }

    fn create_consumer(&self, cfg: &ConsumerConfig) -> Result<(), BusError> {
        let mut st = self.lock()?;
        let stream = st.streams.get(&cfg.stream).cloned().ok_or_else(|| BusError::UnknownStream(cfg.stream.clone()))?;
        let key = consumer_key(&cfg.stream, &cfg.durable);
        let ack_wait_ms = cfg.ack_wait.as_millis() as i64;
        let state = match st.consumers.get(&key) {
            // Existing durable: update its settings, keep its position and pending acks.
            Some(existing) => ConsumerState {
                filter: cfg.filter.clone(),
                ack_wait_ms,
                max_ack_pending: cfg.max_ack_pending,
                ..existing.clone()
            },
            None => {
                let cursor = match &cfg.deliver {
                    DeliverPolicy::All => 1,
                    DeliverPolicy::New => stream.last_seq + 1,
                    DeliverPolicy::FromSequence(s) => (*s).max(1),
                    DeliverPolicy::FromTime(t) => self.first_seq_at(&cfg.stream, t.timestamp_millis())?,
                };
                ConsumerState {
                    filter: cfg.filter.clone(),
                    ack_wait_ms,
                    max_ack_pending: cfg.max_ack_pending,
                    cursor,
                    pending: BTreeMap::new(),
                }
            }
        };
        self.save_consumer(&key, &state, Durability::Immediate)?;
        st.consumers.insert(key, state);
        Ok(())
    }

    fn first_seq_at(&self, stream: &str, t_ms: i64) -> Result<u64, BusError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let name = msgs_table(stream);
        let msgs = tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)).map_err(store_err)?;
        let mut last = 0;
        for row in msgs.range(0u64..).map_err(store_err)? {
            let (k, v) = row.map_err(store_err)?;
            last = k.value();
            if StoredMsg::decode(v.value())?.time_ms >= t_ms {
                return Ok(k.value());
            }
        }
        Ok(last + 1)
    }

    fn save_consumer(&self, key: &str, state: &ConsumerState, durability: Durability) -> Result<(), BusError> {
        let bytes = serde_json::to_vec(state).map_err(store_err)?;
        let mut tx = self.db.begin_write().map_err(store_err)?;
        tx.set_durability(durability).map_err(store_err)?;
        {
            let mut t = tx.open_table(CONSUMERS).map_err(store_err)?;
            t.insert(key, bytes.as_slice()).map_err(store_err)?;
        }
        tx.commit().map_err(store_err)
    }

    /// Claims up to `max` messages: expired pending ones first (redelivery), then new ones.
    /// Returns the deliveries and the earliest pending deadline (when to look again).
    #[allow(clippy::type_complexity)]
    fn fetch(&self, stream: &str, durable: &str, max: usize) -> Result<(Vec<(u64, u64, StoredMsg)>, Option<i64>), BusError> {
        let mut st = self.lock()?;
        let key = consumer_key(stream, durable);
        let mut c = st
            .consumers
            .get(&key)
            .cloned()
            .ok_or_else(|| BusError::UnknownConsumer { stream: stream.into(), durable: durable.into() })?;
        let last_seq = st.streams.get(stream).map(|s| s.last_seq).unwrap_or(0);
        let now = now_ms();
        let mut out = Vec::new();
        let mut changed = false;
        {
            let tx = self.db.begin_read().map_err(store_err)?;
            let name = msgs_table(stream);
            let msgs = tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)).map_err(store_err)?;
            // Redeliveries: claimed earlier, not settled within ack_wait (or nak'ed).
            let due: Vec<u64> = c.pending.iter().filter(|(_, p)| p.deadline_ms <= now).map(|(s, _)| *s).collect();
            for seq in due {
                if out.len() >= max {
                    break;
                }
                changed = true;
                match msgs.get(seq).map_err(store_err)? {
                    Some(v) => {
                        let m = StoredMsg::decode(v.value())?;
                        if let Some(p) = c.pending.get_mut(&seq) {
                            p.deliveries += 1;
                            p.deadline_ms = now + c.ack_wait_ms;
                            out.push((seq, p.deliveries, m));
                        }
                    }
                    // Expired by max_age meanwhile: nothing left to deliver.
                    None => {
                        c.pending.remove(&seq);
                    }
                }
            }
            // New messages from the cursor, within max_ack_pending.
            if out.len() < max && c.pending.len() < c.max_ack_pending as usize && c.cursor <= last_seq {
                for row in msgs.range(c.cursor..).map_err(store_err)? {
                    let (k, v) = row.map_err(store_err)?;
                    let seq = k.value();
                    c.cursor = seq + 1;
                    changed = true;
                    let m = StoredMsg::decode(v.value())?;
                    if subject_matches(&c.filter, &m.subject) {
                        c.pending.insert(seq, Pending { deliveries: 1, deadline_ms: now + c.ack_wait_ms });
                        out.push((seq, 1, m));
                        if out.len() >= max || c.pending.len() >= c.max_ack_pending as usize {
                            break;
                        }
                    }
                }
                if out.len() < max && c.pending.len() < c.max_ack_pending as usize {
                    c.cursor = c.cursor.max(last_seq + 1);
                }
            }
        }
        let next_deadline = c.pending.values().map(|p| p.deadline_ms).min();
        if changed {
            self.save_consumer(&key, &c, Durability::None)?;
            st.consumers.insert(key, c);
        }
        Ok((out, next_deadline))
    }

    fn settle(&self, stream: &str, durable: &str, seq: u64, how: Settle) -> Result<(), BusError> {
        let mut st = self.lock()?;
        let key = consumer_key(stream, durable);
        let retention = st.streams.get(stream).map(|s| s.retention);
        let Some(mut c) = st.consumers.get(&key).cloned() else {
            return Err(BusError::UnknownConsumer { stream: stream.into(), durable: durable.into() });
        };
        let now = now_ms();
        let mut remove_msg = false;
        match how {
            Settle::Ack | Settle::Term => {
                if c.pending.remove(&seq).is_none() {
                    return Ok(());
                }
                remove_msg = retention == Some(Retention::WorkQueue);
            }
            Settle::Nak(delay) => match c.pending.get_mut(&seq) {
                Some(p) => p.deadline_ms = now + delay.as_millis() as i64,
                None => return Ok(()),
            },
            Settle::Progress => match c.pending.get_mut(&seq) {
                Some(p) => p.deadline_ms = now + c.ack_wait_ms,
                None => return Ok(()),
            },
        }
        let bytes = serde_json::to_vec(&c).map_err(store_err)?;
        let mut tx = self.db.begin_write().map_err(store_err)?;
        tx.set_durability(Durability::None).map_err(store_err)?;
        {
            let mut t = tx.open_table(CONSUMERS).map_err(store_err)?;
            t.insert(key.as_str(), bytes.as_slice()).map_err(store_err)?;
            if remove_msg {
                let name = msgs_table(stream);
                let mut msgs = tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)).map_err(store_err)?;
                msgs.remove(seq).map_err(store_err)?;
            }
        }
        tx.commit().map_err(store_err)?;
        st.consumers.insert(key, c);
        drop(st);
        if matches!(how, Settle::Nak(_)) {
            self.wake.notify_waiters();
        }
        Ok(())
    }

    fn lag(&self, stream: &str, durable: &str) -> Result<u64, BusError> {
        let st = self.lock()?;
        let c = st
            .consumers
            .get(&consumer_key(stream, durable))
            .ok_or_else(|| BusError::UnknownConsumer { stream: stream.into(), durable: durable.into() })?;
        let last = st.streams.get(stream).map(|s| s.last_seq).unwrap_or(0);
        Ok((last + 1).saturating_sub(c.cursor) + c.pending.len() as u64)
    }

    fn read_range(&self, stream: &str, filter: &str, from: u64, to: u64, max: usize) -> Result<(Vec<(u64, StoredMsg)>, u64), BusError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let name = msgs_table(stream);
        let msgs = tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)).map_err(store_err)?;
        let mut out = Vec::new();
        let mut next = to + 1;
        for row in msgs.range(from..=to).map_err(store_err)? {
            let (k, v) = row.map_err(store_err)?;
            let m = StoredMsg::decode(v.value())?;
            if subject_matches(filter, &m.subject) {
                out.push((k.value(), m));
            }
            if out.len() >= max {
                next = k.value() + 1;
                break;
            }
        }
        Ok((out, next))
    }

    fn stream_info(&self, stream: &str) -> Result<StreamInfo, BusError> {
        let last = {
            let st = self.lock()?;
            st.streams.get(stream).map(|s| s.last_seq).ok_or_else(|| BusError::UnknownStream(stream.into()))?
        };
        let tx = self.db.begin_read().map_err(store_err)?;
        let name = msgs_table(stream);
        let msgs = tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)).map_err(store_err)?;
        let messages = msgs.len().map_err(store_err)?;
        let first = msgs.first().map_err(store_err)?.map(|(k, _)| k.value()).unwrap_or(last + 1);
        Ok(StreamInfo { messages, first_sequence: first, last_sequence: last })
    }

    fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let name = kv_table(bucket);
        let t = match tx.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(store_err(e)),
        };
        let entry = match t.get(key).map_err(store_err)? {
            Some(v) => Some(decode_kv(bucket, key, v.value())?),
            None => None,
        };
        Ok(entry.filter(|e| !e.deleted))
    }

    /// Writes `value` if the current revision equals `expected` (when `check` is set).
    fn kv_write(&self, bucket: &str, key: &str, value: Bytes, check: Option<Option<u64>>) -> Result<u64, BusError> {
        let _st = self.lock()?; // serializes read-check-write with other writers
        let mut tx = self.db.begin_write().map_err(store_err)?;
        tx.set_durability(Durability::Immediate).map_err(store_err)?;
        let revision;
        {
            let name = kv_table(bucket);
            let mut t = tx.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(store_err)?;
            let current = match t.get(key).map_err(store_err)? {
                Some(v) => Some(decode_kv(bucket, key, v.value())?),
                None => None,
            };
            if let Some(expected) = check {
                let found = current.as_ref().filter(|e| !e.deleted).map(|e| e.revision);
                if found != expected {
                    return Err(BusError::CasConflict { bucket: bucket.into(), key: key.into(), expected, found });
                }
            }
            let mut meta = tx.open_table(META).map_err(store_err)?;
            let rev_key = format!("kvrev:{bucket}");
            revision = meta.get(rev_key.as_str()).map_err(store_err)?.map(|g| g.value()).unwrap_or(0) + 1;
            meta.insert(rev_key.as_str(), revision).map_err(store_err)?;
            t.insert(key, encode_kv(revision, false, &value).as_slice()).map_err(store_err)?;
        }
        tx.commit().map_err(store_err)?;
        let _ = self.kv_changes.send(KvEntry {
            bucket: bucket.into(),
            key: key.into(),
            value,
            revision,
            deleted: false,
        });
        Ok(revision)
    }
}

fn expire_front(msgs: &mut redb::Table<'_, u64, &[u8]>, horizon_ms: i64) -> Result<(), BusError> {
    let mut stale = Vec::new();
    for row in msgs.range(0u64..).map_err(store_err)? {
        let (k, v) = row.map_err(store_err)?;
        if StoredMsg::decode(v.value())?.time_ms >= horizon_ms {
            break;
        }
        stale.push(k.value());
    }
    for s in stale {
        msgs.remove(s).map_err(store_err)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Nak(Duration),
    Progress,
    Term,
}

/// Runs a blocking store operation off the async executor.
async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T, BusError> + Send + 'static,
) -> Result<T, BusError> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| store_err(format!("store task: {e}")))?
}

fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_else(Utc::now)
}

struct EmbeddedAcker {
    inner: Arc<Inner>,
    stream: String,
    durable: String,
    seq: u64,
}

impl EmbeddedAcker {
    async fn settle(&self, how: Settle) -> Result<(), BusError> {
        let (stream, durable, seq) = (self.stream.clone(), self.durable.clone(), self.seq);
        blocking(&self.inner, move |i| i.settle(&stream, &durable, seq, how)).await
    }
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle(Settle::Ack).await
    }
    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.settle(Settle::Nak(delay.unwrap_or(Duration::ZERO))).await
    }
    async fn progress(&self) -> Result<(), BusError> {
        self.settle(Settle::Progress).await
    }
    async fn term(&self) -> Result<(), BusError> {
        self.settle(Settle::Term).await
    }
}

/// Replayed messages are not part of any consumer: settling them does nothing.
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

struct EmbeddedConsumer {
    inner: Arc<Inner>,
    stream: String,
    durable: String,
}

#[async_trait]
impl RawConsumer for EmbeddedConsumer {
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for wake-ups before looking, so a publish in between is not missed.
            let woken = self.inner.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (stream, durable) = (self.stream.clone(), self.durable.clone());
            let (got, next_deadline) = blocking(&self.inner, move |i| i.fetch(&stream, &durable, max)).await?;
            if !got.is_empty() {
                return Ok(got
                    .into_iter()
                    .map(|(seq, deliveries, m)| {
                        Delivery::new(
                            m.subject,
                            m.headers,
                            m.payload,
                            self.stream.clone(),
                            seq,
                            deliveries,
                            to_time(m.time_ms),
                            Box::new(EmbeddedAcker {
                                inner: self.inner.clone(),
                                stream: self.stream.clone(),
                                durable: self.durable.clone(),
                                seq,
                            }),
                        )
                    })
                    .collect());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake_at = deadline;
            if let Some(d) = next_deadline {
                let in_ms = (d - now_ms()).max(1) as u64;
                wake_at = wake_at.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn lag(&self) -> Result<u64, BusError> {
        let (stream, durable) = (self.stream.clone(), self.durable.clone());
        blocking(&self.inner, move |i| i.lag(&stream, &durable)).await
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn ensure_streams(&self, specs: &[StreamSpec]) -> Result<(), BusError> {
        let specs = specs.to_vec();
        blocking(&self.inner, move |i| i.ensure_streams(&specs)).await
    }

    async fn publish(&self, msg: OutMessage) -> Result<PubAck, BusError> {
        blocking(&self.inner, move |i| i.publish(msg)).await
    }

    async fn consumer(&self, cfg: &ConsumerConfig, _server_max_deliver: u32) -> Result<Box<dyn RawConsumer>, BusError> {
        let c = cfg.clone();
        blocking(&self.inner, move |i| i.create_consumer(&c)).await?;
        Ok(Box::new(EmbeddedConsumer { inner: self.inner.clone(), stream: cfg.stream.clone(), durable: cfg.durable.clone() }))
    }

    async fn replay(
        &self,
        stream: &str,
        filter: &str,
        from: DeliverPolicy,
    ) -> Result<BoxStream<'static, Result<Delivery, BusError>>, BusError> {
        let info = self.stream_info(stream).await?;
        let s = stream.to_string();
        let start = match from {
            DeliverPolicy::All => 1,
            DeliverPolicy::New => info.last_sequence + 1,
            DeliverPolicy::FromSequence(n) => n.max(1),
            DeliverPolicy::FromTime(t) => {
                let ms = t.timestamp_millis();
                blocking(&self.inner, move |i| i.first_seq_at(&s, ms)).await?
            }
        };
        let end = info.last_sequence;
        let inner = self.inner.clone();
        let (stream, filter) = (stream.to_string(), filter.to_string());
        // Page through the range 256 messages at a time.
        let pages = stream::unfold(Some(start), move |next| {
            let (inner, stream, filter) = (inner.clone(), stream.clone(), filter.clone());
            async move {
                let from = next?;
                if from > end {
                    return None;
                }
                let (s2, f2) = (stream.clone(), filter.clone());
                match blocking(&inner, move |i| i.read_range(&s2, &f2, from, end, 256)).await {
                    Ok((msgs, next)) => {
                        let items: Vec<Result<Delivery, BusError>> = msgs
                            .into_iter()
                            .map(|(seq, m)| {
                                Ok(Delivery::new(
                                    m.subject,
                                    m.headers,
                                    m.payload,
                                    stream.clone(),
                                    seq,
                                    1,
                                    to_time(m.time_ms),
                                    Box::new(NoAck),
                                ))
                            })
                            .collect();
                        Some((stream::iter(items), Some(next)))
                    }
                    Err(e) => Some((stream::iter(vec![Err(e)]), None)),
                }
            }
        });
        Ok(pages.flatten().boxed())
    }

    async fn stream_info(&self, stream: &str) -> Result<StreamInfo, BusError> {
        let s = stream.to_string();
        blocking(&self.inner, move |i| i.stream_info(&s)).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, BusError> {
        let (b, k) = (bucket.to_string(), key.to_string());
        blocking(&self.inner, move |i| i.kv_get(&b, &k)).await
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64, BusError> {
        let (b, k) = (bucket.to_string(), key.to_string());
        blocking(&self.inner, move |i| i.kv_write(&b, &k, value, None)).await
    }

    async fn kv_cas(&self, bucket: &str, key: &str, value: Bytes, expected: Option<u64>) -> Result<u64, BusError> {
        let (b, k) = (bucket.to_string(), key.to_string());
        blocking(&self.inner, move |i| i.kv_write(&b, &k, value, Some(expected))).await
    }

    async fn kv_watch(&self, bucket: &str, key: &str) -> Result<BoxStream<'static, Result<KvEntry, BusError>>, BusError> {
        // Subscribe first, then read the current value: no change can fall in between.
        let rx = self.inner.kv_changes.subscribe();
        let current = self.kv_get(bucket, key).await?;
        let floor = current.as_ref().map(|e| e.revision).unwrap_or(0);
        let (b, k) = (bucket.to_string(), key.to_string());
        let changes = stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(e) => return Some((Ok(e), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |r| {
            let keep = match r {
                Ok(e) => e.bucket == b && e.key == k && e.revision > floor,
                Err(_) => true,
            };
            futures::future::ready(keep)
        });
        Ok(stream::iter(current.map(Ok)).chain(changes).boxed())
    }

    async fn object_put(&self, _bucket: &str, _name: &str, _data: Bytes) -> Result<(), BusError> {
        Err(BusError::Unsupported("object store", "embedded"))
    }

    async fn object_get(&self, _bucket: &str, _name: &str) -> Result<Option<Bytes>, BusError> {
        Err(BusError::Unsupported("object store", "embedded"))
    }

    async fn healthy(&self) -> bool {
        true
    }
}

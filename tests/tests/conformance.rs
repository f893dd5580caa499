//! One conformance suite, run on both bus backends. Test names carry the backend:
//! `embedded::...` runs on the redb store, `jetstream::...` on a private nats-server.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fc_bus::{Bus, BusConfig, BusError, ConsumerConfig, DeliverPolicy, OutMessage};
use fc_events::{subjects, DeadLettered, Envelope};
use fc_integration_tests::NatsServer;
use futures::StreamExt;

/// Keeps the backend's resources (temp dir, server) alive for the test.
#[allow(dead_code)]
enum Guard {
    Dir(tempfile::TempDir),
    Nats(NatsServer),
}

async fn embedded() -> (Bus, Guard) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::connect(&BusConfig { nats_url: None, data_dir: dir.path().to_path_buf() }).await.expect("embedded bus");
    (bus, Guard::Dir(dir))
}

async fn jetstream() -> (Bus, Guard) {
    let server = NatsServer::start();
    let bus = Bus::connect(&BusConfig { nats_url: Some(server.url()), data_dir: "/nonexistent".into() })
        .await
        .expect("jetstream bus");
    (bus, Guard::Nats(server))
}

fn msg(subject: &str, body: &str, id: Option<&str>) -> OutMessage {
    OutMessage {
        subject: subject.into(),
        headers: Default::default(),
        payload: Bytes::from(body.to_string()),
        msg_id: id.map(str::to_string),
    }
}

fn body(d: &fc_bus::Delivery) -> String {
    String::from_utf8_lossy(&d.payload).to_string()
}

async fn publish_consume_ack(bus: Bus) {
    for i in 0..3 {
        let ack = bus.publish(msg("fc.run.r1.sft_step", &format!("m{i}"), None)).await.expect("publish");
        assert_eq!(ack.stream, subjects::STREAM_RUNS);
        assert!(!ack.duplicate);
    }
    let c = bus.consumer(ConsumerConfig::new(subjects::STREAM_RUNS, "c1", "fc.run.>")).await.expect("consumer");
    let got = c.fetch(10, Duration::from_secs(2)).await.expect("fetch");
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), vec!["m0", "m1", "m2"]);
    assert!(got.iter().all(|d| d.deliveries == 1));
    for d in &got {
        d.ack().await.expect("ack");
    }
    let again = c.fetch(10, Duration::from_millis(300)).await.expect("fetch");
    assert!(again.is_empty(), "acked messages are not redelivered: {again:?}");
    // A filter selects by subject.
    bus.publish(msg("fc.run.r2.sft_started", "other", None)).await.expect("publish");
    let f = bus
        .consumer(ConsumerConfig::new(subjects::STREAM_RUNS, "only-steps", &subjects::run_event_filter("sft_step")))
        .await
        .expect("consumer");
    let got = f.fetch(10, Duration::from_secs(1)).await.expect("fetch");
    assert_eq!(got.len(), 3);
    assert!(matches!(bus.publish(msg("nowhere.subject", "x", None)).await, Err(BusError::NoStream(_)) | Err(_)));
}

async fn dead_worker_is_redelivered(bus: Bus) {
    bus.publish(msg("fc.job.rollout.r1", "job-1", None)).await.expect("publish");
    let cfg = ConsumerConfig::new(subjects::STREAM_ROLLOUT_JOBS, "workers", "fc.job.rollout.>").ack_wait(Duration::from_secs(1));
    let a = bus.consumer(cfg.clone()).await.expect("worker a");
    let b = bus.consumer(cfg).await.expect("worker b");
    let taken = a.fetch(1, Duration::from_secs(2)).await.expect("fetch a");
    assert_eq!(taken.len(), 1);
    drop(taken); // worker a dies without acking
    drop(a);
    let started = std::time::Instant::now();
    let got = b.fetch(1, Duration::from_secs(5)).await.expect("fetch b");
    assert_eq!(got.len(), 1, "redelivered to the other worker");
    assert_eq!(body(&got[0]), "job-1");
    assert_eq!(got[0].deliveries, 2);
    assert!(started.elapsed() >= Duration::from_millis(500), "not before ack_wait");
    got[0].ack().await.expect("ack");
    let info = bus.stream_info(subjects::STREAM_ROLLOUT_JOBS).await.expect("info");
    assert_eq!(info.messages, 0, "work queue drops acknowledged jobs");
}

async fn dedup_by_message_id(bus: Bus) {
    let a = bus.publish(msg("fc.run.r1.pipeline_requested", "x", Some("r1:pipeline_requested:0"))).await.expect("first");
    let b = bus.publish(msg("fc.run.r1.pipeline_requested", "x", Some("r1:pipeline_requested:0"))).await.expect("second");
    assert!(!a.duplicate);
    assert!(b.duplicate);
    assert_eq!(a.sequence, b.sequence);
    let c = bus.publish(msg("fc.run.r1.pipeline_requested", "y", Some("r1:pipeline_requested:1"))).await.expect("third");
    assert!(!c.duplicate);
    assert_eq!(bus.stream_info(subjects::STREAM_RUNS).await.expect("info").messages, 2);
}

async fn dead_letter_after_max_deliver(bus: Bus) {
    let env = Envelope::new("r9", "test", &fc_events::PolicyUpdated {
        version: 1,
        adapter: fc_events::ArtifactRef {
            sha256: "0".repeat(64),
            kind: fc_events::ArtifactKind::Adapter,
            bytes: 1,
            name: String::new(),
        },
        step: 1,
    })
    .expect("envelope");
    let ack = bus
        .publish(OutMessage {
            subject: "fc.run.r9.policy_updated".into(),
            headers: Default::default(),
            payload: Bytes::from(env.to_bytes()),
            msg_id: None,
        })
        .await
        .expect("publish");
    let c = bus
        .consumer(ConsumerConfig::new(subjects::STREAM_RUNS, "flaky", "fc.run.>").max_deliver(2).ack_wait(Duration::from_secs(5)))
        .await
        .expect("consumer");
    for attempt in 1..=2u64 {
        let got = c.fetch(1, Duration::from_secs(3)).await.expect("fetch");
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].deliveries, attempt);
        got[0].nak(None, "adapter store unreachable").await.expect("nak");
    }
    let got = c.fetch(1, Duration::from_secs(2)).await.expect("fetch after limit");
    assert!(got.is_empty(), "over the limit: dead-lettered, not delivered");
    let mut dlq = bus.replay(subjects::STREAM_DLQ, "fc.dlq.>", DeliverPolicy::All).await.expect("replay dlq");
    let d = dlq.next().await.expect("one dead letter").expect("ok");
    let dl: DeadLettered = d.envelope().expect("envelope").decode().expect("payload");
    assert_eq!(d.subject, subjects::dlq(subjects::STREAM_RUNS));
    assert_eq!(dl.stream_sequence, ack.sequence);
    assert_eq!(dl.consumer, "flaky");
    assert!(dl.reason.contains("adapter store unreachable"), "{}", dl.reason);
    assert_eq!(d.envelope().expect("env").run_id, "r9");
    // An undecodable message dead-letters at once with its reason.
    bus.publish(msg("fc.run.r9.garbage", "not json", None)).await.expect("publish");
    let got = c.fetch(1, Duration::from_secs(2)).await.expect("fetch");
    assert_eq!(got.len(), 1);
    got[0].dead_letter("payload is not an event envelope").await.expect("dead letter");
    let n = bus.stream_info(subjects::STREAM_DLQ).await.expect("info").messages;
    assert_eq!(n, 2);
}

async fn replay_from_sequence_and_time(bus: Bus) {
    let mut seqs = Vec::new();
    for i in 0..10 {
        let a = bus.publish(msg(&format!("fc.rollout.r{}", i % 2), &format!("m{i}"), None)).await.expect("publish");
        seqs.push(a.sequence);
        if i == 5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let all: Vec<String> = bus
        .replay(subjects::STREAM_ROLLOUTS, "fc.rollout.>", DeliverPolicy::FromSequence(seqs[3]))
        .await
        .expect("replay")
        .map(|d| body(&d.expect("ok")))
        .collect()
        .await;
    assert_eq!(all, (3..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let r1: Vec<String> = bus
        .replay(subjects::STREAM_ROLLOUTS, "fc.rollout.r1", DeliverPolicy::All)
        .await
        .expect("replay")
        .map(|d| body(&d.expect("ok")))
        .collect()
        .await;
    assert_eq!(r1, vec!["m1", "m3", "m5", "m7", "m9"]);
    // From a time: everything published at or after the 7th message.
    let mut s = bus.replay(subjects::STREAM_ROLLOUTS, "fc.rollout.>", DeliverPolicy::All).await.expect("replay");
    let mut t6 = None;
    while let Some(d) = s.next().await {
        let d = d.expect("ok");
        if body(&d) == "m6" {
            t6 = Some(d.published);
        }
    }
    let t6 = t6.expect("m6 seen");
    let from_t: Vec<String> = bus
        .replay(subjects::STREAM_ROLLOUTS, "fc.rollout.>", DeliverPolicy::FromTime(t6))
        .await
        .expect("replay")
        .map(|d| body(&d.expect("ok")))
        .collect()
        .await;
    assert_eq!(from_t.first().map(String::as_str), Some("m6"));
    assert_eq!(from_t.len(), 4);
    let none: Vec<_> = bus
        .replay(subjects::STREAM_ROLLOUTS, "fc.rollout.nobody", DeliverPolicy::All)
        .await
        .expect("replay")
        .collect()
        .await;
    assert!(none.is_empty());
}

async fn kv_cas_under_contention(bus: Bus) {
    const TASKS: u64 = 6;
    const EACH: u64 = 8;
    let first = bus.kv_cas("fc-test", "counter", Bytes::from("0"), None).await.expect("create");
    assert!(matches!(
        bus.kv_cas("fc-test", "counter", Bytes::from("0"), None).await,
        Err(BusError::CasConflict { .. })
    ));
    let conflicts = Arc::new(Mutex::new(0u64));
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let (bus, conflicts) = (bus.clone(), conflicts.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..EACH {
                loop {
                    let e = bus.kv_get("fc-test", "counter").await.expect("get").expect("exists");
                    let n: u64 = String::from_utf8_lossy(&e.value).parse().expect("number");
                    match bus.kv_cas("fc-test", "counter", Bytes::from((n + 1).to_string()), Some(e.revision)).await {
                        Ok(_) => break,
                        Err(BusError::CasConflict { .. }) => *conflicts.lock().expect("lock") += 1,
                        Err(e) => panic!("kv: {e}"),
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let e = bus.kv_get("fc-test", "counter").await.expect("get").expect("exists");
    assert_eq!(String::from_utf8_lossy(&e.value), (TASKS * EACH).to_string(), "no lost update");
    assert!(e.revision > first);
    eprintln!("cas conflicts resolved: {}", conflicts.lock().expect("lock"));
}

async fn kv_watch_sees_current_then_changes(bus: Bus) {
    bus.kv_put(subjects::KV_POINTERS, subjects::KEY_PROMOTED, Bytes::from("v1")).await.expect("put");
    let mut w = bus.kv_watch(subjects::KV_POINTERS, subjects::KEY_PROMOTED).await.expect("watch");
    let first = tokio::time::timeout(Duration::from_secs(3), w.next()).await.expect("current").expect("some").expect("ok");
    assert_eq!(first.value, Bytes::from("v1"));
    bus.kv_put(subjects::KV_POINTERS, "policy.r1", Bytes::from("other key")).await.expect("put");
    bus.kv_put(subjects::KV_POINTERS, subjects::KEY_PROMOTED, Bytes::from("v2")).await.expect("put");
    let second = tokio::time::timeout(Duration::from_secs(3), w.next()).await.expect("change").expect("some").expect("ok");
    assert_eq!(second.value, Bytes::from("v2"));
    assert!(second.revision > first.revision);
}

async fn two_workers_split_one_consumer(bus: Bus) {
    const N: usize = 120;
    for i in 0..N {
        bus.publish(msg("fc.job.rollout.split", &format!("job-{i}"), Some(&format!("split:{i}")))).await.expect("publish");
    }
    let cfg = ConsumerConfig::new(subjects::STREAM_ROLLOUT_JOBS, "split-workers", "fc.job.rollout.>");
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::new(Mutex::new(HashMap::new()));
    let per_worker: Arc<Mutex<[usize; 2]>> = Arc::new(Mutex::new([0, 0]));
    let mut handles = Vec::new();
    for w in 0..2 {
        let c = bus.consumer(cfg.clone()).await.expect("consumer");
        let (seen, per_worker) = (seen.clone(), per_worker.clone());
        handles.push(tokio::spawn(async move {
            let mut idle = 0;
            while idle < 3 {
                let got = c.fetch(4, Duration::from_millis(300)).await.expect("fetch");
                if got.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                for d in got {
                    tokio::time::sleep(Duration::from_millis(2)).await; // "work"
                    *seen.lock().expect("lock").entry(body(&d)).or_insert(0) += 1;
                    per_worker.lock().expect("lock")[w] += 1;
                    d.ack().await.expect("ack");
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("worker");
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), N, "no loss");
    assert!(seen.values().all(|&n| n == 1), "no duplicate processing");
    let split = *per_worker.lock().expect("lock");
    eprintln!("split between workers: {split:?}");
    assert!(split[0] > 0 && split[1] > 0, "both workers took work: {split:?}");
    let unique: HashSet<_> = seen.keys().collect();
    assert_eq!(unique.len(), N);
}

async fn consumer_config_changes_apply(bus: Bus) {
    let long = ConsumerConfig::new(subjects::STREAM_RUNS, "upd", "fc.run.>").ack_wait(Duration::from_secs(60));
    drop(bus.consumer(long).await.expect("create"));
    // Re-opening with a shorter ack_wait applies it (get-or-create would keep 60 s).
    let short = ConsumerConfig::new(subjects::STREAM_RUNS, "upd", "fc.run.>").ack_wait(Duration::from_secs(1));
    let c = bus.consumer(short).await.expect("update");
    bus.publish(msg("fc.run.r1.b", "b", None)).await.expect("publish");
    let got = c.fetch(1, Duration::from_secs(2)).await.expect("fetch");
    assert_eq!(got.len(), 1);
    drop(got);
    let t = std::time::Instant::now();
    let re = c.fetch(1, Duration::from_secs(10)).await.expect("redelivery");
    assert_eq!(re.len(), 1);
    assert!(t.elapsed() < Duration::from_secs(5), "redelivered after the new 1 s ack_wait, took {:?}", t.elapsed());
    re[0].ack().await.expect("ack");
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn publish_consume_ack() {
                let (bus, _g) = super::$backend().await;
                super::publish_consume_ack(bus).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dead_worker_is_redelivered() {
                let (bus, _g) = super::$backend().await;
                super::dead_worker_is_redelivered(bus).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dedup_by_message_id() {
                let (bus, _g) = super::$backend().await;
                super::dedup_by_message_id(bus).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dead_letter_after_max_deliver() {
                let (bus, _g) = super::$backend().await;
                super::dead_letter_after_max_deliver(bus).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replay_from_sequence_and_time() {
                let (bus, _g) = super::$backend().await;
                super::replay_from_sequence_and_time(bus).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kv_cas_under_contention() {
                let (bus, _g) = super::$backend().await;
                super::kv_cas_under_contention(bus).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kv_watch_sees_current_then_changes() {
                let (bus, _g) = super::$backend().await;
                super::kv_watch_sees_current_then_changes(bus).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_workers_split_one_consumer() {
                let (bus, _g) = super::$backend().await;
                super::two_workers_split_one_consumer(bus).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn consumer_config_changes_apply() {
                let (bus, _g) = super::$backend().await;
                super::consumer_config_changes_apply(bus).await;
            }
        }
    };
}

suite!(embedded);
suite!(jetstream);

/// Embedded only: the store is on disk, so events and consumer positions survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_events_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = BusConfig { nats_url: None, data_dir: dir.path().to_path_buf() };
    {
        let bus = Bus::connect(&cfg).await.expect("open");
        for i in 0..3 {
            bus.publish(msg("fc.run.r1.sft_step", &format!("m{i}"), Some(&format!("id{i}")))).await.expect("publish");
        }
        let c = bus.consumer(ConsumerConfig::new(subjects::STREAM_RUNS, "durable", "fc.run.>")).await.expect("consumer");
        let got = c.fetch(1, Duration::from_secs(1)).await.expect("fetch");
        got[0].ack().await.expect("ack");
        bus.kv_put("fc-test", "k", Bytes::from("kept")).await.expect("kv");
    }
    let bus = Bus::connect(&cfg).await.expect("reopen");
    assert_eq!(bus.stream_info(subjects::STREAM_RUNS).await.expect("info").messages, 3);
    let dup = bus.publish(msg("fc.run.r1.sft_step", "m0", Some("id0"))).await.expect("publish");
    assert!(dup.duplicate, "dedup window survives restart");
    let c = bus.consumer(ConsumerConfig::new(subjects::STREAM_RUNS, "durable", "fc.run.>")).await.expect("consumer");
    let got = c.fetch(10, Duration::from_secs(1)).await.expect("fetch");
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), vec!["m1", "m2"], "position kept");
    assert_eq!(bus.kv_get("fc-test", "k").await.expect("get").map(|e| e.value), Some(Bytes::from("kept")));
}

/// JetStream only: the artifact store round-trips a directory through the Object Store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_artifacts_roundtrip_object_store() {
    let (bus, _g) = jetstream().await;
    let producer_dir = tempfile::tempdir().expect("tmp");
    let consumer_dir = tempfile::tempdir().expect("tmp");
    let src = producer_dir.path().join("adapter");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("adapter_config.json"), b"{\"r\": 8}").expect("write");
    std::fs::write(src.join("adapter_model.safetensors"), vec![1u8; 300_000]).expect("write");
    let producer = fc_artifacts::ArtifactStore::for_bus(&bus, &producer_dir.path().join("data"));
    let r = producer.put_dir(&src, fc_artifacts::ArtifactKind::Adapter, "adapter").await.expect("put");
    // Another "host": empty local cache, same bus.
    let consumer = fc_artifacts::ArtifactStore::for_bus(&bus, consumer_dir.path());
    let out = consumer.fetch(&r).await.expect("fetch");
    assert_eq!(std::fs::read(out.join("adapter_model.safetensors")).expect("read").len(), 300_000);
    assert_eq!(std::fs::read(out.join("adapter_config.json")).expect("read"), b"{\"r\": 8}");
}

/// JetStream only: a client survives its server crashing and coming back on the same store.
/// Events published before the crash are still there, a durable consumer keeps its
/// position, and new publishes work once the client has reconnected by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_bus_survives_a_server_crash() {
    let server = NatsServer::start();
    let bus = Bus::connect(&BusConfig { nats_url: Some(server.url()), data_dir: "/nonexistent".into() })
        .await
        .expect("jetstream bus");
    for i in 0..3 {
        bus.publish(msg("fc.run.r1.sft_step", &format!("m{i}"), Some(&format!("id{i}")))).await.expect("publish");
    }
    let c = bus.consumer(ConsumerConfig::new(subjects::STREAM_RUNS, "durable", "fc.run.>")).await.expect("consumer");
    let got = c.fetch(1, Duration::from_secs(2)).await.expect("fetch");
    got[0].ack().await.expect("ack");
    // The server writes consumer state a moment after an ack; a crash inside that moment
    // redelivers (at-least-once allows it), which is not what this test is about.
    tokio::time::sleep(Duration::from_secs(1)).await;

    tokio::task::block_in_place(|| server.crash());

    // The client reconnects on its own schedule; a publish during the gap may fail, so
    // give it a bounded time to come back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ack = loop {
        match bus.publish(msg("fc.run.r1.sft_step", "m3", Some("id3"))).await {
            Ok(a) => break a,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no publish within 20 s of the restart: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(ack.sequence, 4, "the stream kept its three events");
    let dup = bus.publish(msg("fc.run.r1.sft_step", "m0", Some("id0"))).await.expect("publish");
    assert!(dup.duplicate, "the dedup window survives the restart");
    let c = bus.consumer(ConsumerConfig::new(subjects::STREAM_RUNS, "durable", "fc.run.>")).await.expect("consumer");
    let got = c.fetch(10, Duration::from_secs(2)).await.expect("fetch");
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), vec!["m1", "m2", "m3"], "position kept");
    // A fresh process connecting now creates (updates) the streams as at any start.
    Bus::connect(&BusConfig { nats_url: Some(server.url()), data_dir: "/nonexistent".into() }).await.expect("reconnect");
}

//! The consume loop's settlement rules: success acks, a retryable error naks with delay,
//! a permanent error dead-letters with its reason, and shutdown never drops a message
//! (in-flight work finishes and is acked; fetched-but-unstarted work is nak'ed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fc_bus::{Bus, BusConfig, ConsumerConfig, DeliverPolicy, OutMessage};
use fc_events::{subjects, DeadLettered};
use fc_integration_tests::RedisServer;
use fc_runtime::{HandlerError, Shutdown, Worker};
use futures::StreamExt;

async fn bus() -> (Bus, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let bus = Bus::connect(&BusConfig { nats_url: None, data_dir: dir.path().to_path_buf() }).await.expect("bus");
    (bus, dir)
}

async fn publish(bus: &Bus, body: &str) {
    bus.publish(OutMessage {
        subject: "fc.job.rollout.w".into(),
        headers: Default::default(),
        payload: Bytes::from(body.to_string()),
        msg_id: None,
    })
    .await
    .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_settled_as_declared() {
    let (bus, _d) = bus().await;
    for b in ["ok", "retry-once", "poison"] {
        publish(&bus, b).await;
    }
    let cfg = ConsumerConfig::new(subjects::STREAM_ROLLOUT_JOBS, "w", "fc.job.rollout.>").max_deliver(3);
    let consumer = bus.consumer(cfg).await.expect("consumer");
    let attempts = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let shutdown = Shutdown::new();
    let (a, d, sd) = (attempts.clone(), done.clone(), shutdown.clone());
    let task = tokio::spawn(async move {
        let mut w = Worker::new("w", &consumer);
        w.fetch_wait = Duration::from_millis(100);
        w.run(consumer, sd, move |del| {
            let (a, d) = (a.clone(), d.clone());
            async move {
                match std::str::from_utf8(&del.payload).unwrap_or("") {
                    "retry-once" if a.fetch_add(1, Ordering::SeqCst) == 0 => Err(HandlerError::Retry {
                        reason: "busy".into(),
                        delay: Duration::from_millis(50),
                    }),
                    "poison" => Err(HandlerError::permanent("not a rollout job")),
                    _ => {
                        d.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }
            }
        })
        .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while done.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    task.await.expect("worker");
    assert_eq!(done.load(Ordering::SeqCst), 2, "ok and retried job both completed");
    let info = bus.stream_info(subjects::STREAM_ROLLOUT_JOBS).await.expect("info");
    assert_eq!(info.messages, 0, "every job settled (work queue empty)");
    let dl: Vec<DeadLettered> = bus
        .replay(subjects::STREAM_DLQ, "fc.dlq.>", DeliverPolicy::All)
        .await
        .expect("replay")
        .map(|d| d.expect("ok").envelope().expect("env").decode::<DeadLettered>().expect("dead letter"))
        .collect()
        .await;
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].reason, "not a rollout job");
    assert_eq!(dl[0].original, "poison");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_and_returns_the_rest() {
    let (bus, _d) = bus().await;
    for i in 0..3 {
        publish(&bus, &format!("job{i}")).await;
    }
    let cfg = ConsumerConfig::new(subjects::STREAM_ROLLOUT_JOBS, "slow", "fc.job.rollout.>").ack_wait(Duration::from_secs(60));
    let consumer = bus.consumer(cfg.clone()).await.expect("consumer");
    let shutdown = Shutdown::new();
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (s, f, sd) = (started.clone(), finished.clone(), shutdown.clone());
    let task = tokio::spawn(async move {
        // Fetch all three at once; the first is in flight when shutdown comes.
        let w = Worker::new("slow", &consumer).batch(3);
        w.run(consumer, sd, move |_d| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
    });
    while started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.trigger();
    task.await.expect("worker");
    assert_eq!(started.load(Ordering::SeqCst), 1, "no new work after shutdown");
    assert_eq!(finished.load(Ordering::SeqCst), 1, "in-flight work finished");
    // The two unstarted jobs were nak'ed: another worker gets them at once, not after 60 s.
    let other = bus.consumer(cfg).await.expect("consumer");
    let got = other.fetch(5, Duration::from_secs(2)).await.expect("fetch");
    let mut bodies: Vec<String> = got.iter().map(|d| String::from_utf8_lossy(&d.payload).to_string()).collect();
    bodies.sort();
    assert_eq!(bodies, vec!["job1", "job2"]);
}

#[test]
fn harness_starts_a_private_redis() {
    use std::io::{Read, Write};
    let redis = RedisServer::start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("connect");
    s.write_all(b"PING\r\n").expect("write");
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).expect("read");
    assert_eq!(&buf[..n], b"+PONG\r\n");
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
}

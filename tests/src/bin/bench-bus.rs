//! `make bench` (bus part): publish -> consume -> ack events/s on both fcmesh backends, with
//! raw async-nats publish rates against the same nats-server in the same run.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fc_bus::{Bus, BusConfig, ConsumerConfig, OutMessage};
use fc_events::subjects;
use fc_integration_tests::NatsServer;

const N: usize = 3000;

fn payload() -> Bytes {
    // About the size of a RewardScored event for a group of 8.
    Bytes::from(vec![b'x'; 700])
}

/// Producer and consumer run concurrently; events/s from first publish to last ack.
async fn pipeline_rate(bus: &Bus, tag: &str) -> (f64, f64) {
    let subject = format!("fc.rollout.bench{tag}");
    let consumer = bus
        .consumer(ConsumerConfig::new(subjects::STREAM_ROLLOUTS, &format!("bench{tag}"), &subject).max_ack_pending(10_000))
        .await
        .expect("consumer");
    let start = Instant::now();
    let pb = bus.clone();
    let subj = subject.clone();
    let producer = tokio::spawn(async move {
        let t = Instant::now();
        for i in 0..N {
            pb.publish(OutMessage {
                subject: subj.clone(),
                headers: Default::default(),
                payload: payload(),
                msg_id: Some(format!("bench{i}")),
            })
            .await
            .expect("publish");
        }
        t.elapsed()
    });
    let mut done = 0;
    while done < N {
        let got = consumer.fetch(64, Duration::from_millis(200)).await.expect("fetch");
        for d in got {
            d.ack().await.expect("ack");
            done += 1;
        }
    }
    let total = start.elapsed();
    let publish = producer.await.expect("producer");
    (N as f64 / publish.as_secs_f64(), N as f64 / total.as_secs_f64())
}

async fn raw_async_nats(url: &str) -> (f64, f64, f64) {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    // Sequential publish, each ack awaited (what fcmesh's publish does).
    let t = Instant::now();
    for i in 0..N {
        js.send_publish(
            "fc.rollout.rawseq",
            async_nats::jetstream::message::PublishMessage::build().payload(payload()).message_id(format!("raw{i}")),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    }
    let seq = N as f64 / t.elapsed().as_secs_f64();
    // Pipelined: send all, then await the acks.
    let t = Instant::now();
    let mut acks = Vec::with_capacity(N);
    for i in 0..N {
        acks.push(
            js.send_publish(
                "fc.rollout.rawpipe",
                async_nats::jetstream::message::PublishMessage::build().payload(payload()).message_id(format!("pipe{i}")),
            )
            .await
            .expect("publish"),
        );
    }
    for a in acks {
        a.await.expect("ack");
    }
    let pipelined = N as f64 / t.elapsed().as_secs_f64();
    // Core NATS, no persistence: the transport's ceiling.
    let t = Instant::now();
    for _ in 0..N {
        client.publish("bench.core", payload()).await.expect("publish");
    }
    client.flush().await.expect("flush");
    let core = N as f64 / t.elapsed().as_secs_f64();
    (seq, pipelined, core)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let embedded = Bus::connect(&BusConfig { nats_url: None, data_dir: dir.path().to_path_buf() }).await.expect("embedded");
    let (e_pub, e_pipe) = pipeline_rate(&embedded, "e").await;
    drop(embedded);

    let server = NatsServer::start();
    let js = Bus::connect(&BusConfig { nats_url: Some(server.url()), data_dir: dir.path().to_path_buf() }).await.expect("js");
    let (j_pub, j_pipe) = pipeline_rate(&js, "j").await;
    let (raw_seq, raw_pipe, raw_core) = raw_async_nats(&server.url()).await;

    println!("\nbus benchmark: {N} messages of 700 B, one producer and one consumer (fetch 64, ack each)");
    println!("{:<44} {:>14} {:>22}", "backend", "publish msg/s", "publish->ack msg/s");
    println!("{:<44} {:>14.0} {:>22.0}", "fcmesh embedded (redb, fsync per publish)", e_pub, e_pipe);
    println!("{:<44} {:>14.0} {:>22.0}", "fcmesh jetstream (awaited ack per publish)", j_pub, j_pipe);
    println!("{:<44} {:>14.0} {:>22}", "raw async-nats JetStream, awaited ack", raw_seq, "-");
    println!("{:<44} {:>14.0} {:>22}", "raw async-nats JetStream, pipelined acks", raw_pipe, "-");
    println!("{:<44} {:>14.0} {:>22}", "raw async-nats core publish (no persistence)", raw_core, "-");
    println!(
        "\nfcmesh jetstream publish / raw awaited publish = {:.2}x; embedded / jetstream publish->ack = {:.2}x",
        j_pub / raw_seq,
        e_pipe / j_pipe
    );
}

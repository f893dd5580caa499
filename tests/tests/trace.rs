//! A trace follows an event across tasks: published inside a span, consumed in another
//! task whose span continues the same trace id, on both backends.

use std::time::Duration;

use fc_bus::{Bus, BusConfig, ConsumerConfig};
use fc_events::{subjects, ArtifactKind, ArtifactRef, PolicyUpdated};
use fc_integration_tests::NatsServer;
use fc_runtime::{HandlerError, Publisher, Shutdown, Worker};
use tracing::Instrument;

async fn trace_crosses_the_bus(bus: Bus) {
    let _ = fc_telemetry::init("trace-test");
    let publisher = Publisher::new(bus.clone(), "trace-test");
    let span = tracing::info_span!("producer");
    let producer_trace = fc_telemetry::trace_id(&span).expect("producer span has a trace id");
    let payload = PolicyUpdated {
        version: 1,
        adapter: ArtifactRef { sha256: "0".repeat(64), kind: ArtifactKind::Adapter, bytes: 0, name: String::new() },
        step: 1,
    };
    publisher
        .emit("trace-run", None, &payload, "trace-run:policy_updated:1".into())
        .instrument(span)
        .await
        .expect("publish");

    let consumer = bus
        .consumer(ConsumerConfig::new(subjects::STREAM_RUNS, "tracer", &subjects::run_event_filter("policy_updated")))
        .await
        .expect("consumer");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = Shutdown::new();
    let sd = shutdown.clone();
    let task = tokio::spawn(async move {
        Worker::new("tracer", &consumer)
            .run(consumer, sd, move |d| {
                let tx = tx.clone();
                async move {
                    assert!(d.headers.contains_key("traceparent"), "traceparent travels in headers: {:?}", d.headers);
                    let _ = tx.send(fc_telemetry::trace_id(&tracing::Span::current()));
                    Ok::<(), HandlerError>(())
                }
            })
            .await
    });
    let consumer_trace = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("handled").expect("sent");
    shutdown.trigger();
    task.await.expect("worker");
    assert_eq!(consumer_trace.as_deref(), Some(producer_trace.as_str()), "same trace id on both sides");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_trace_follows_event() {
    let dir = tempfile::tempdir().expect("tmp");
    let bus = Bus::connect(&BusConfig { nats_url: None, data_dir: dir.path().to_path_buf() }).await.expect("bus");
    trace_crosses_the_bus(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_trace_follows_event() {
    let server = NatsServer::start();
    let bus = Bus::connect(&BusConfig { nats_url: Some(server.url()), data_dir: "/nonexistent".into() }).await.expect("bus");
    trace_crosses_the_bus(bus).await;
}

//! Telemetry shared by every fcmesh process: logs, traces and metrics.
//!
//! - Logs: `tracing` with `RUST_LOG` filtering (default `info`), human format on stderr, or
//!   JSON lines when `FC_LOG_FORMAT=json`.
//! - Traces: every process has an OpenTelemetry tracer so spans carry real trace ids; spans
//!   are exported over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The W3C
//!   `traceparent` travels in message headers ([`inject`], [`extract_into`]), so one trace
//!   follows a run across services and across both bus backends.
//! - Metrics: one process-wide Prometheus recorder ([`metrics_handle`]) with explicit
//!   histogram buckets; `/metrics` renders it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    #[error("FC_LOG_FORMAT must be `text` or `json`, got `{0}`")]
    LogFormat(String),
}

/// Flushes exported spans when dropped. The tracer provider itself lives for the whole
/// process, so dropping a guard never turns tracing off for others in the process.
pub struct TelemetryGuard {
    _private: (),
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = PROVIDER.get() {
            let _ = p.force_flush();
        }
    }
}

static INIT: OnceLock<()> = OnceLock::new();
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Builds the tracer provider: always able to mint trace ids, exporting only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
fn tracer_provider(service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build();
    let mut b = SdkTracerProvider::builder().with_resource(resource);
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|v| !v.trim().is_empty()).unwrap_or(false) {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        b = b.with_batch_exporter(exporter);
    }
    Ok(b.build())
}

/// Installs logging and tracing for the process. Safe to call more than once (later calls
/// do nothing), so in-process runs of several services share one setup.
pub fn init(service: &str) -> Result<TelemetryGuard, TelemetryError> {
    if INIT.get().is_some() {
        return Ok(TelemetryGuard { _private: () });
    }
    let json = match std::env::var("FC_LOG_FORMAT").unwrap_or_default().as_str() {
        "" | "text" => false,
        "json" => true,
        other => return Err(TelemetryError::LogFormat(other.to_string())),
    };
    let provider = PROVIDER.get_or_init(|| tracer_provider(service).unwrap_or_else(|e| {
        eprintln!("{service}: {e}; spans are not exported");
        SdkTracerProvider::builder().build()
    }));
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("fcmesh"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi).boxed()
    };
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    let _ = INIT.set(());
    let _ = metrics_handle();
    Ok(TelemetryGuard { _private: () })
}

/// Histogram buckets, chosen per unit so quantiles are meaningful.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
const TOKENS_BUCKETS: &[f64] = &[1.0, 8.0, 32.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];
const RATIO_BUCKETS: &[f64] = &[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_tokens".into()), TOKENS_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_ratio".into()), RATIO_BUCKETS));
            match builder {
                Ok(b) => {
                    let recorder = b.build_recorder();
                    let handle = recorder.handle();
                    // Fails only when another recorder is installed; then ours renders
                    // nothing but nothing breaks.
                    let _ = metrics::set_global_recorder(recorder);
                    handle
                }
                // Only reachable with empty bucket lists, which the constants are not.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);
impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);
impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|s| s.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes the current span's W3C `traceparent` (and `tracestate`) into `headers`.
pub fn inject(headers: &mut BTreeMap<String, String>) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(headers));
}

/// Makes `span` a child of the trace whose `traceparent` is in `headers` (if any).
pub fn extract_into(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&MapExtractor(headers));
    let _ = span.set_parent(cx);
}

/// The trace id of `span` as 32 hex digits, when it belongs to a sampled trace.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_explicit_buckets() {
        let h = metrics_handle();
        metrics::histogram!("fc_test_latency_seconds").record(0.003);
        let text = h.render();
        assert!(text.contains("fc_test_latency_seconds_bucket{le=\"0.005\"} 1"), "{text}");
    }

    #[test]
    fn inject_without_a_trace_writes_nothing() {
        let mut h = BTreeMap::new();
        inject(&mut h);
        assert!(!h.contains_key("traceparent"));
    }
}

#[cfg(test)]
mod trace_tests {
    #[test]
    fn spans_get_trace_ids_and_propagate() {
        let _g = super::init("unit").expect("init");
        let span = tracing::info_span!("producer");
        let id = super::trace_id(&span);
        assert!(id.is_some(), "span has a trace id");
        let mut h = std::collections::BTreeMap::new();
        {
            let _e = span.enter();
            super::inject(&mut h);
        }
        assert!(h.get("traceparent").is_some_and(|t| t.contains(id.as_deref().unwrap_or("-"))), "{h:?}");
        let child = tracing::info_span!("consumer");
        super::extract_into(&child, &h);
        assert_eq!(super::trace_id(&child), id);
    }
}

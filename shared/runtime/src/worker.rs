//! The consume loop: fetch small batches, run the handler inside a span that continues the
//! producer's trace, keep long jobs alive with progress acks, and settle every message:
//! ack on success, nak with delay on a retryable error, dead-letter on a permanent one.
//! On shutdown it stops fetching; a message fetched but not started is nak'ed at once.

use std::future::Future;
use std::time::Duration;

use fc_bus::{Consumer, Delivery};
use tracing::Instrument;

use crate::Shutdown;

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (a dependency is down, a resource is busy).
    #[error("retryable: {reason}")]
    Retry { reason: String, delay: Duration },
    /// This message can never succeed (invalid content): dead-letter it.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry { reason: reason.into(), delay: Duration::from_secs(1) }
    }
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent(reason.into())
    }
}

/// Settings of one consume loop.
#[derive(Debug, Clone)]
pub struct Worker {
    pub name: String,
    /// Messages per fetch; small so one worker does not hoard jobs.
    pub batch: usize,
    pub fetch_wait: Duration,
    /// Progress-ack interval for long handlers (about half the consumer's ack_wait).
    pub progress_every: Duration,
}

impl Worker {
    pub fn new(name: &str, consumer: &Consumer) -> Self {
        let ack_wait = consumer.config().ack_wait;
        Self {
            name: name.into(),
            batch: 1,
            fetch_wait: Duration::from_millis(500),
            progress_every: (ack_wait / 2).max(Duration::from_millis(50)),
        }
    }

    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Runs until `shutdown`. The handler gets each delivery; settling is done here.
    pub async fn run<F, Fut>(&self, consumer: Consumer, shutdown: Shutdown, handler: F)
    where
        F: Fn(Delivery) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        while !shutdown.is_triggered() {
            let batch = tokio::select! {
                r = consumer.fetch(self.batch, self.fetch_wait) => r,
                _ = shutdown.wait() => break,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(worker = %self.name, error = %e, "fetch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                    continue;
                }
            };
            for d in batch {
                if shutdown.is_triggered() {
                    // Not started: hand it back for another instance right away.
                    let _ = d.nak(None, "worker shutting down").await;
                    continue;
                }
                self.handle_one(d, &handler).await;
            }
        }
        tracing::info!(worker = %self.name, "worker stopped");
    }

    async fn handle_one<F, Fut>(&self, d: Delivery, handler: &F)
    where
        F: Fn(Delivery) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let span = tracing::info_span!("handle", worker = %self.name, subject = %d.subject, seq = d.stream_sequence,
            deliveries = d.deliveries);
        fc_telemetry::extract_into(&span, &d.headers);
        let started = std::time::Instant::now();
        let result = async {
            let fut = handler(d.clone());
            tokio::pin!(fut);
            // Long jobs (training) outlive ack_wait: tell the bus we are still at it.
            let mut ticker = tokio::time::interval(self.progress_every);
            ticker.tick().await;
            loop {
                tokio::select! {
                    out = &mut fut => break out,
                    _ = ticker.tick() => {
                        if let Err(e) = d.progress().await {
                            tracing::warn!(error = %e, "progress ack failed");
                        }
                    }
                }
            }
        }
        .instrument(span.clone())
        .await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(HandlerError::Retry { .. }) => "retry",
            Err(HandlerError::Permanent(_)) => "dead_letter",
        };
        metrics::histogram!("fc_worker_handle_duration_seconds", "worker" => self.name.clone(), "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        let settle = match result {
            Ok(()) => d.ack().await,
            Err(HandlerError::Retry { reason, delay }) => {
                tracing::warn!(parent: &span, %reason, "handler failed; will retry");
                d.nak(Some(delay), &reason).await
            }
            Err(HandlerError::Permanent(reason)) => {
                tracing::error!(parent: &span, %reason, "handler failed permanently; dead-lettering");
                d.dead_letter(&reason).await
            }
        };
        if let Err(e) = settle {
            tracing::warn!(parent: &span, error = %e, "could not settle message; it will be redelivered");
        }
    }
}

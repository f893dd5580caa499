//! The subject scheme and stream topology, shared by both bus backends.
//!
//! ```text
//! fc.run.<run>.<event_type>        FC_RUNS          limits   the run's timeline (retained)
//! fc.job.rollout.<run>             FC_ROLLOUT_JOBS  workqueue one RolloutRequested per GRPO group
//! fc.rollout.<run>                 FC_ROLLOUTS      limits   RolloutGenerated (replay source)
//! fc.reward.<run>.<reward_version> FC_REWARDS       limits   RewardScored, per reward version
//! fc.dlq.<stream>                  FC_DLQ           limits   DeadLettered
//! ```
//! Run ids and reward versions are single NATS tokens: `[A-Za-z0-9_-]`, see [`valid_token`].

use std::time::Duration;

pub const STREAM_RUNS: &str = "FC_RUNS";
pub const STREAM_ROLLOUT_JOBS: &str = "FC_ROLLOUT_JOBS";
pub const STREAM_ROLLOUTS: &str = "FC_ROLLOUTS";
pub const STREAM_REWARDS: &str = "FC_REWARDS";
pub const STREAM_DLQ: &str = "FC_DLQ";

/// KV bucket of pointers: `policy.<run>` (current policy version), `promoted` (served model).
pub const KV_POINTERS: &str = "fc-pointers";
/// Key of the promoted-model pointer in [`KV_POINTERS`].
pub const KEY_PROMOTED: &str = "promoted";
/// Object Store bucket for artifacts in distributed mode.
pub const OBJECT_ARTIFACTS: &str = "fc-artifacts";

pub fn run_event(run_id: &str, event_type: &str) -> String {
    format!("fc.run.{run_id}.{event_type}")
}
/// Filter matching every event of every run.
pub const ALL_RUN_EVENTS: &str = "fc.run.>";
/// Filter matching one event type across runs.
pub fn run_event_filter(event_type: &str) -> String {
    format!("fc.run.*.{event_type}")
}
pub fn rollout_job(run_id: &str) -> String {
    format!("fc.job.rollout.{run_id}")
}
pub fn rollout(run_id: &str) -> String {
    format!("fc.rollout.{run_id}")
}
pub fn reward(run_id: &str, reward_version: &str) -> String {
    format!("fc.reward.{run_id}.{reward_version}")
}
pub fn dlq(stream: &str) -> String {
    format!("fc.dlq.{stream}")
}
pub fn policy_key(run_id: &str) -> String {
    format!("policy.{run_id}")
}

/// True when `s` can be one subject token (run ids, reward versions).
pub fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Messages stay until limits (age) expire them: facts many may read.
    Limits,
    /// A message is removed once acknowledged: work done once by one of many workers.
    WorkQueue,
}

#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: &'static [&'static str],
    pub retention: Retention,
    /// Zero means forever.
    pub max_age: Duration,
}

const DAY: u64 = 24 * 3600;

/// Every stream fcmesh uses. Both backends create exactly these.
pub const STREAMS: &[StreamSpec] = &[
    StreamSpec { name: STREAM_RUNS, subjects: &["fc.run.>"], retention: Retention::Limits, max_age: Duration::ZERO },
    StreamSpec {
        name: STREAM_ROLLOUT_JOBS,
        subjects: &["fc.job.rollout.>"],
        retention: Retention::WorkQueue,
        max_age: Duration::from_secs(7 * DAY),
    },
    StreamSpec {
        name: STREAM_ROLLOUTS,
        subjects: &["fc.rollout.>"],
        retention: Retention::Limits,
        max_age: Duration::from_secs(90 * DAY),
    },
    StreamSpec {
        name: STREAM_REWARDS,
        subjects: &["fc.reward.>"],
        retention: Retention::Limits,
        max_age: Duration::from_secs(90 * DAY),
    },
    StreamSpec { name: STREAM_DLQ, subjects: &["fc.dlq.>"], retention: Retention::Limits, max_age: Duration::ZERO },
];

/// The stream whose subjects match `subject`, if any.
pub fn stream_for(subject: &str) -> Option<&'static StreamSpec> {
    STREAMS.iter().find(|s| s.subjects.iter().any(|f| subject_matches(f, subject)))
}

/// NATS subject matching: `*` matches one token, `>` one or more trailing tokens.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(subject_matches("fc.run.>", "fc.run.r1.sft_step"));
        assert!(subject_matches("fc.run.*.sft_step", "fc.run.r1.sft_step"));
        assert!(!subject_matches("fc.run.*.sft_step", "fc.run.r1.sft_started"));
        assert!(!subject_matches("fc.run.>", "fc.run"));
        assert!(subject_matches("fc.dlq.FC_RUNS", "fc.dlq.FC_RUNS"));
        assert!(!subject_matches("fc.dlq.FC_RUNS", "fc.dlq.FC_RUNS.x"));
    }

    #[test]
    fn every_subject_has_a_stream() {
        assert_eq!(stream_for(&run_event("r", "sft_step")).map(|s| s.name), Some(STREAM_RUNS));
        assert_eq!(stream_for(&rollout_job("r")).map(|s| s.name), Some(STREAM_ROLLOUT_JOBS));
        assert_eq!(stream_for(&rollout("r")).map(|s| s.name), Some(STREAM_ROLLOUTS));
        assert_eq!(stream_for(&reward("r", "v1")).map(|s| s.name), Some(STREAM_REWARDS));
        assert_eq!(stream_for(&dlq("FC_RUNS")).map(|s| s.name), Some(STREAM_DLQ));
        assert!(stream_for("other.subject").is_none());
    }

    #[test]
    fn tokens() {
        assert!(valid_token("run-01_ab"));
        assert!(!valid_token("a.b"));
        assert!(!valid_token(""));
        assert!(!valid_token("a b"));
    }
}

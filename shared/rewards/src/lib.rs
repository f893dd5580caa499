//! fc-rewards: rewards for function-calling completions.
//!
//! A completion (raw model text) is scored against a [`fc_data::Sample`] on
//! four components in [0, 1]:
//!
//! - **parse**: tool-call blocks are present and each parses to
//!   `{name, arguments}` (fraction of well-formed blocks); for samples whose
//!   right answer is plain text: 1 when there is no block and the text is
//!   non-empty.
//! - **schema**: fraction of calls whose name is an offered tool and whose
//!   arguments validate against its JSON Schema (validators compiled once
//!   per distinct schema, see [`fc_data::SchemaCache`]).
//! - **exec**: fraction of calls the [`exec::MockExecutor`] runs without
//!   error.
//! - **semantic**: calls match the expected ones (names and normalized
//!   argument values, order-insensitive); `binary` (all or nothing) or
//!   `partial` (F1 over matched calls).
//!
//! `total` is the weighted mean of the components. Every score carries the
//! reward [`RewardConfig::version`], so logged rewards can be traced back to
//! the exact config and code that produced them.
//!
//! Parsing uses `fc_toolcall::parse`, the same parser as the gateway and
//! the evaluator.

pub mod exec;
mod semantic;

use std::sync::{Arc, OnceLock};

use fc_data::{Expected, Sample, SchemaCache, ToolDef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use exec::{ExecError, MockExecutor, Resolved};
pub use semantic::values_equal;

/// Bumped whenever scoring code changes in a way that changes rewards.
pub const REWARD_CODE_VERSION: &str = "fc-rewards/1";

/// Component weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    pub parse: f64,
    pub schema: f64,
    pub exec: f64,
    pub semantic: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            parse: 0.25,
            schema: 0.25,
            exec: 0.25,
            semantic: 0.25,
        }
    }
}

/// How the semantic component is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SemanticMode {
    /// 1 when the predicted calls equal the expected ones as a multiset.
    Binary,
    /// F1 over matched calls: 2·matched / (predicted + expected).
    Partial,
}

/// Reward configuration (TOML):
///
/// ```toml
/// semantic_mode = "partial"      # or "binary"
/// case_insensitive_strings = true
/// require_close_tag = false
/// exec_ops_budget = 1000000
/// [weights]
/// parse = 0.25
/// schema = 0.25
/// exec = 0.25
/// semantic = 0.25
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    pub weights: Weights,
    pub semantic_mode: SemanticMode,
    /// Compare string argument values case-insensitively (always trimmed).
    pub case_insensitive_strings: bool,
    /// Relative tolerance for number comparison (3 == 3.0 always).
    pub number_tolerance: f64,
    /// Halve the parse component when a block lacks `</tool_call>` (the
    /// parser accepts an unclosed final block; enable this only if the
    /// rollout generator keeps the closing tag).
    pub require_close_tag: bool,
    /// Operation budget of one mock call.
    pub exec_ops_budget: u64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            weights: Weights::default(),
            semantic_mode: SemanticMode::Partial,
            case_insensitive_strings: true,
            number_tolerance: 1e-6,
            require_close_tag: false,
            exec_ops_budget: exec::DEFAULT_OPS_BUDGET,
        }
    }
}

/// Invalid reward configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot parse reward config: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid reward config: {0}")]
    Invalid(String),
}

impl RewardConfig {
    /// Parses and checks a TOML config (missing keys take defaults).
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let c: RewardConfig = toml::from_str(s)?;
        c.check()?;
        Ok(c)
    }

    /// Checks weights (finite, non-negative, not all zero) and tolerance.
    pub fn check(&self) -> Result<(), ConfigError> {
        let w = self.weights;
        for (n, x) in [("parse", w.parse), ("schema", w.schema), ("exec", w.exec), ("semantic", w.semantic)] {
            if !x.is_finite() || x < 0.0 {
                return Err(ConfigError::Invalid(format!("weight {n} must be finite and >= 0, got {x}")));
            }
        }
        if w.parse + w.schema + w.exec + w.semantic <= 0.0 {
            return Err(ConfigError::Invalid("all weights are zero".into()));
        }
        if !self.number_tolerance.is_finite() || self.number_tolerance < 0.0 {
            return Err(ConfigError::Invalid("number_tolerance must be finite and >= 0".into()));
        }
        Ok(())
    }

    /// Canonical JSON text of the config (fixed field order).
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Short hex id of (code version, canonical config): 12 hex chars of
    /// SHA-256. Identical configs on identical code give identical ids.
    pub fn version(&self) -> String {
        let mut h = Sha256::new();
        h.update(REWARD_CODE_VERSION.as_bytes());
        h.update(b"\n");
        h.update(self.canonical().as_bytes());
        hex::encode(&h.finalize()[..6])
    }
}

/// The four component scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Components {
    pub parse: f64,
    pub schema: f64,
    pub exec: f64,
    pub semantic: f64,
}

/// Diagnostics of one score (for logs and debugging reward hacking).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    /// `<tool_call>` blocks seen.
    pub blocks: usize,
    /// Blocks that parsed to a call.
    pub parsed_calls: usize,
    /// Expected calls (0 for text answers).
    pub expected_calls: usize,
    /// Predicted calls matched to expected ones.
    pub matched_calls: usize,
    /// The right answer is plain text.
    pub expects_text: bool,
    /// The completion has non-empty text outside blocks.
    pub has_text: bool,
    /// A block lacks its closing tag.
    pub unclosed_block: bool,
    /// First problems found, one line each (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub total: f64,
    pub components: Components,
    pub version: String,
    pub details: Details,
}

/// A sample prepared for repeated scoring (GRPO scores a group of
/// completions per sample): each tool's validator is resolved at most once,
/// and only for tools a completion actually calls.
pub struct Prepared<'a> {
    sample: &'a Sample,
    cache: &'static SchemaCache,
    /// Per offered tool (same index): its validator and implementation,
    /// resolved on first use.
    tools: Vec<ToolCell>,
}

#[derive(Default)]
struct ToolCell {
    validator: OnceLock<Result<Arc<jsonschema::Validator>, String>>,
    resolved: OnceLock<Resolved>,
}

impl<'a> Prepared<'a> {
    fn tool(&self, name: &str) -> Option<(usize, &'a ToolDef)> {
        self.sample.tools.iter().enumerate().find(|(_, t)| t.name == name)
    }

    fn validator(&self, i: usize) -> Option<&Result<Arc<jsonschema::Validator>, String>> {
        let tool = self.sample.tools.get(i)?;
        let cell = self.tools.get(i)?;
        Some(cell.validator.get_or_init(|| self.cache.get(&tool.parameters)))
    }

    fn resolved(&self, i: usize, tool: &ToolDef) -> Resolved {
        match self.tools.get(i) {
            Some(cell) => *cell.resolved.get_or_init(|| Resolved::of(tool)),
            None => Resolved::of(tool),
        }
    }
}

/// The reward scorer. Cheap to share between threads (`&Scorer`).
pub struct Scorer {
    config: RewardConfig,
    version: String,
    cache: &'static SchemaCache,
    executor: MockExecutor,
}

const MAX_ERRORS: usize = 8;

impl Scorer {
    /// A scorer for a checked config.
    pub fn new(config: RewardConfig) -> Result<Self, ConfigError> {
        config.check()?;
        Ok(Scorer {
            version: config.version(),
            executor: MockExecutor::new(config.exec_ops_budget),
            cache: SchemaCache::global(),
            config,
        })
    }

    /// The config.
    pub fn config(&self) -> &RewardConfig {
        &self.config
    }

    /// The reward version id.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Resolves the sample's tool validators (cached process-wide).
    pub fn prepare<'a>(&self, sample: &'a Sample) -> Prepared<'a> {
        Prepared {
            sample,
            cache: self.cache,
            tools: sample.tools.iter().map(|_| ToolCell::default()).collect(),
        }
    }

    /// Scores one completion.
    pub fn score(&self, sample: &Sample, completion: &str) -> Score {
        self.score_prepared(&self.prepare(sample), completion)
    }

    /// Scores a group of completions of the same sample.
    pub fn score_group<S: AsRef<str>>(&self, sample: &Sample, completions: &[S]) -> Vec<Score> {
        let p = self.prepare(sample);
        completions.iter().map(|c| self.score_prepared(&p, c.as_ref())).collect()
    }

    /// Scores one completion against a prepared sample. Never panics.
    pub fn score_prepared(&self, p: &Prepared<'_>, completion: &str) -> Score {
        let parsed = fc_toolcall::parse(completion);
        let mut d = Details {
            blocks: parsed.blocks,
            parsed_calls: parsed.calls.len(),
            expected_calls: p.sample.expected.call_count(),
            expects_text: p.sample.expected.is_text(),
            has_text: !parsed.content.is_empty(),
            ..Details::default()
        };
        if parsed.blocks > 0 {
            let closes = completion.matches(fc_toolcall::TOOL_CALL_CLOSE).count();
            d.unclosed_block = parsed.blocks > closes;
        }
        for e in parsed.errors.iter().take(MAX_ERRORS) {
            d.errors.push(format!("block {}: {}", e.index, e.reason));
        }

        let comps = if d.expects_text {
            let ok = parsed.blocks == 0;
            let ok_text = ok && d.has_text;
            if !ok {
                d.errors.push("tool call where a plain-text answer was expected".into());
            }
            let b = |x: bool| if x { 1.0 } else { 0.0 };
            Components {
                parse: b(ok_text),
                schema: b(ok),
                exec: b(ok),
                semantic: b(ok_text),
            }
        } else {
            self.score_calls(p, &parsed, &mut d)
        };
        let w = self.config.weights;
        let wsum = w.parse + w.schema + w.exec + w.semantic;
        let total = if wsum > 0.0 {
            (w.parse * comps.parse + w.schema * comps.schema + w.exec * comps.exec + w.semantic * comps.semantic) / wsum
        } else {
            0.0
        };
        Score {
            total: total.clamp(0.0, 1.0),
            components: comps,
            version: self.version.clone(),
            details: d,
        }
    }

    fn score_calls(&self, p: &Prepared<'_>, parsed: &fc_toolcall::ParsedOutput, d: &mut Details) -> Components {
        if parsed.blocks == 0 {
            d.errors.push("no tool call".into());
            return Components::default();
        }
        let mut parse = parsed.calls.len() as f64 / parsed.blocks as f64;
        if self.config.require_close_tag && d.unclosed_block {
            parse *= 0.5;
        }
        let n = parsed.calls.len();
        let (mut schema_ok, mut exec_ok) = (0usize, 0usize);
        for c in &parsed.calls {
            let Some((i, tool)) = p.tool(&c.name) else {
                if d.errors.len() < MAX_ERRORS {
                    d.errors.push(format!("unknown tool {:?}", c.name));
                }
                continue;
            };
            let no_validator = Err(String::new());
            let mut validator = None;
            let valid = match p.validator(i).unwrap_or(&no_validator) {
                Ok(v) => match fc_data::schema::check(v, &c.arguments) {
                    Ok(()) => {
                        validator = Some(&**v);
                        true
                    }
                    Err(e) => {
                        if d.errors.len() < MAX_ERRORS {
                            d.errors.push(format!("{}: schema: {e}", c.name));
                        }
                        false
                    }
                },
                Err(e) => {
                    if d.errors.len() < MAX_ERRORS {
                        d.errors.push(format!("{}: bad tool schema: {e}", c.name));
                    }
                    false
                }
            };
            if !valid {
                continue;
            }
            schema_ok += 1;
            match self.executor.execute_resolved(tool, p.resolved(i, tool), &c.arguments, validator) {
                Ok(_) => exec_ok += 1,
                Err(e) => {
                    if d.errors.len() < MAX_ERRORS {
                        d.errors.push(format!("{}: exec: {e}", c.name));
                    }
                }
            }
        }
        // Malformed blocks count as failed calls in every component.
        let denom = parsed.blocks.max(n) as f64;
        let schema = schema_ok as f64 / denom;
        let exec = exec_ok as f64 / denom;
        let opts = semantic::EqOptions {
            case_insensitive: self.config.case_insensitive_strings,
            tolerance: self.config.number_tolerance,
        };
        let matched = match &p.sample.expected {
            Expected::Calls(exp) => semantic::match_calls(&parsed.calls, exp, p.sample, &opts),
            Expected::Bfcl(gt) => semantic::match_bfcl(&parsed.calls, gt, &opts),
            Expected::Text(_) => 0,
        };
        d.matched_calls = matched;
        let expected = d.expected_calls;
        let predicted = parsed.blocks.max(n);
        let semantic = match self.config.semantic_mode {
            SemanticMode::Binary => {
                if matched == expected && predicted == expected {
                    1.0
                } else {
                    0.0
                }
            }
            SemanticMode::Partial => {
                if predicted + expected == 0 {
                    0.0
                } else {
                    2.0 * matched as f64 / (predicted + expected) as f64
                }
            }
        };
        Components {
            parse,
            schema,
            exec,
            semantic,
        }
    }
}

impl Default for Scorer {
    fn default() -> Self {
        let config = RewardConfig::default();
        Scorer {
            version: config.version(),
            executor: MockExecutor::new(config.exec_ops_budget),
            cache: SchemaCache::global(),
            config,
        }
    }
}

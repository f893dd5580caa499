//! Sample validation: every expected call names an offered tool and its
//! arguments validate against that tool's JSON Schema.

use serde_json::Value;

use crate::error::{Reject, RejectReason};
use crate::sample::{Expected, Role, Sample};
use crate::schema::{check, SchemaCache};

/// Validates a sample with the process-wide [`SchemaCache`].
pub fn validate(sample: &Sample) -> Result<(), Reject> {
    validate_with(SchemaCache::global(), sample)
}

/// Validates a sample with an explicit validator cache.
///
/// Checks, in order (the first failure is reported):
/// - `empty_query`: a non-empty user message exists;
/// - `bad_tools`: tool names are unique and non-empty, each parameters
///   schema is an object schema that compiles;
/// - `bad_answers`: an expected call list is non-empty and arguments are
///   objects;
/// - `unknown_tool`: each expected call names an offered tool;
/// - `schema_violation`: call arguments validate against the tool schema
///   (for BFCL ground truth: every argument is a declared property and each
///   allowed-value list is an array).
pub fn validate_with(cache: &SchemaCache, sample: &Sample) -> Result<(), Reject> {
    let pos = sample.source.position;
    let r = |reason: RejectReason, detail: String| Reject::new(reason, detail, pos).with_id(sample.id.clone());

    if !sample
        .messages
        .iter()
        .any(|m| m.role == Role::User && !m.content.trim().is_empty())
    {
        return Err(r(RejectReason::EmptyQuery, "no non-empty user message".into()));
    }
    // Compile (or fetch) every tool's validator once per sample.
    let mut validators = Vec::with_capacity(sample.tools.len());
    for (i, t) in sample.tools.iter().enumerate() {
        if t.name.trim().is_empty() {
            return Err(r(RejectReason::BadTools, format!("tool {i} has an empty name")));
        }
        if sample.tools[..i].iter().any(|o| o.name == t.name) {
            return Err(r(RejectReason::BadTools, format!("duplicate tool name {:?}", t.name)));
        }
        if !matches!(t.parameters.get("type"), Some(Value::String(s)) if s == "object") {
            return Err(r(
                RejectReason::BadTools,
                format!("tool {:?}: parameters schema is not of type object", t.name),
            ));
        }
        validators.push(
            cache
                .get(&t.parameters)
                .map_err(|e| r(RejectReason::BadTools, format!("tool {:?}: {e}", t.name)))?,
        );
    }
    match &sample.expected {
        Expected::Text(_) => Ok(()),
        Expected::Calls(calls) => {
            if calls.is_empty() {
                return Err(r(RejectReason::BadAnswers, "empty call list (use a text answer)".into()));
            }
            for (i, c) in calls.iter().enumerate() {
                let ti = sample
                    .tools
                    .iter()
                    .position(|t| t.name == c.name)
                    .ok_or_else(|| r(RejectReason::UnknownTool, format!("call {i}: tool {:?} is not offered", c.name)))?;
                if !c.arguments.is_object() {
                    return Err(r(RejectReason::BadAnswers, format!("call {i}: arguments is not an object")));
                }
                check(&validators[ti], &c.arguments).map_err(|e| {
                    r(RejectReason::SchemaViolation, format!("call {i} ({}): {e}", c.name))
                })?;
            }
            Ok(())
        }
        Expected::Bfcl(gt) => {
            if gt.is_empty() {
                return Err(r(RejectReason::BadAnswers, "empty ground truth".into()));
            }
            for (i, c) in gt.iter().enumerate() {
                let tool = sample
                    .tool(&c.name)
                    .ok_or_else(|| r(RejectReason::UnknownTool, format!("call {i}: tool {:?} is not offered", c.name)))?;
                let props = tool.parameters.get("properties").and_then(|p| p.as_object());
                for (arg, allowed) in &c.allowed {
                    if !allowed.is_array() {
                        return Err(r(
                            RejectReason::BadAnswers,
                            format!("call {i}: allowed values of {arg:?} are not a list"),
                        ));
                    }
                    if let Some(p) = props {
                        if !p.contains_key(arg) {
                            return Err(r(
                                RejectReason::SchemaViolation,
                                format!("call {i} ({}): argument {arg:?} is not a declared parameter", c.name),
                            ));
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

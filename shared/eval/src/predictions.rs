//! `--predictions FILE`: JSONL of `{"id": ..., "completion": "<raw model text>"}`.
//!
//! Predictions are produced by a separate generation step (gateway, vLLM, another team's
//! model), so the file is external input: every problem is an error with its line number,
//! never a panic, and a duplicated id is an error because which completion to score would
//! be ambiguous.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;

use crate::EvalError;

/// Raw completions by sample id.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    map: HashMap<String, String>,
}

impl Predictions {
    /// Empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) one completion.
    pub fn insert(&mut self, id: impl Into<String>, completion: impl Into<String>) {
        self.map.insert(id.into(), completion.into());
    }

    /// Completion for `id`.
    pub fn get(&self, id: &str) -> Option<&str> {
        self.map.get(id).map(String::as_str)
    }

    /// Number of predictions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All ids (unordered).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Read JSONL predictions. `id` may be a string or a number (BFCL and some exporters
    /// use numbers); blank lines are skipped.
    pub fn from_reader<R: Read>(input: R) -> Result<Self, EvalError> {
        let mut out = Predictions::new();
        for (i, line) in BufReader::new(input).lines().enumerate() {
            let line_no = i + 1;
            let line = line.map_err(|e| EvalError::Predictions {
                line: line_no,
                msg: e.to_string(),
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |msg: String| EvalError::Predictions { line: line_no, msg };
            let v: Value = serde_json::from_str(&line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
            let id = match v.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(bad("missing \"id\" (string or number)".into())),
            };
            let completion = match v.get("completion") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) => String::new(),
                _ => return Err(bad("missing \"completion\" string".into())),
            };
            if out.map.insert(id.clone(), completion).is_some() {
                return Err(bad(format!("duplicate id {id:?}")));
            }
        }
        Ok(out)
    }

    /// Read a predictions file.
    pub fn from_path(path: &Path) -> Result<Self, EvalError> {
        let f = std::fs::File::open(path).map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_reader(f).map_err(|e| match e {
            EvalError::Predictions { line, msg } => EvalError::Predictions {
                line,
                msg: format!("{}: {msg}", path.display()),
            },
            other => other,
        })
    }
}

impl FromIterator<(String, String)> for Predictions {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Predictions {
            map: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jsonl_and_rejects_bad_lines() {
        let p = Predictions::from_reader("{\"id\": \"a\", \"completion\": \"x\"}\n\n{\"id\": 7, \"completion\": \"y\"}\n".as_bytes());
        let p = p.unwrap_or_default();
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("7"), Some("y"));
        let dup = Predictions::from_reader("{\"id\": \"a\", \"completion\": \"x\"}\n{\"id\": \"a\", \"completion\": \"y\"}".as_bytes());
        assert!(matches!(dup, Err(EvalError::Predictions { line: 2, .. })));
        let bad = Predictions::from_reader("{\"id\": \"a\"}".as_bytes());
        assert!(matches!(bad, Err(EvalError::Predictions { line: 1, .. })));
        assert!(Predictions::from_reader("not json".as_bytes()).is_err());
    }
}

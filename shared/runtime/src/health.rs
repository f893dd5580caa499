//! Readiness: a service is ready when every component it registered says so.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared readiness state. Components start not ready with a reason.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, Option<String>>>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `component` not ready, with a reason shown on `/health`.
    pub fn not_ready(&self, component: &str, reason: impl Into<String>) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(component.into(), Some(reason.into()));
        }
    }

    pub fn ready(&self, component: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(component.into(), None);
        }
    }

    /// `Ok` when ready, else the reasons by component. No components: not ready.
    pub fn status(&self) -> Result<(), BTreeMap<String, String>> {
        let m = match self.inner.lock() {
            Ok(m) => m,
            Err(_) => return Err(BTreeMap::from([("health".to_string(), "state lock poisoned".to_string())])),
        };
        if m.is_empty() {
            return Err(BTreeMap::from([("service".to_string(), "starting".to_string())]));
        }
        let bad: BTreeMap<String, String> =
            m.iter().filter_map(|(k, v)| v.as_ref().map(|r| (k.clone(), r.clone()))).collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_all_components_are() {
        let h = Health::new();
        assert!(h.status().is_err());
        h.not_ready("bus", "connecting");
        h.not_ready("model", "loading");
        h.ready("bus");
        assert_eq!(h.status().expect_err("model loading").get("model").map(String::as_str), Some("loading"));
        h.ready("model");
        assert!(h.status().is_ok());
    }
}

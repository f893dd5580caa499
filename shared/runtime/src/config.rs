//! Typed service config from `FC_*` environment variables and an optional TOML file.
//!
//! Precedence: environment over file over default. The file (path in `FC_CONFIG`) holds
//! the same names, either as written (`FC_HTTP_ADDR = "..."`) or lower-case without the
//! `FC_` prefix (`http_addr = "..."`). Every bad value is collected, so one error message
//! names them all instead of failing on the first.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// One configuration variable, for parsing and for `--help`.
#[derive(Debug, Clone, Copy)]
pub struct VarSpec {
    pub name: &'static str,
    /// Shown in `--help`; parsed when the variable is unset. Empty means "unset".
    pub default: &'static str,
    pub help: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub service: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration for {} ({} problem(s)):", self.service, self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The merged view of environment and config file.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    values: HashMap<String, String>,
    /// Where each value came from, for error messages.
    origin: HashMap<String, String>,
}

impl ConfigSource {
    /// Reads the process environment and, when `FC_CONFIG` names one, the TOML file.
    pub fn load(service: &str) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::from_parts(service, env)
    }

    /// For tests: an explicit environment (may itself name `FC_CONFIG`).
    pub fn from_parts(service: &str, env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut src = Self::default();
        if let Some(path) = env.get("FC_CONFIG").filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                service: service.into(),
                problems: vec![format!("FC_CONFIG={path}: cannot read: {e}")],
            })?;
            let table: toml::Table = text.parse().map_err(|e| ConfigError {
                service: service.into(),
                problems: vec![format!("FC_CONFIG={path}: not valid TOML: {e}")],
            })?;
            for (k, v) in table {
                let name = if k.starts_with("FC_") || k.contains(char::is_uppercase) { k } else { format!("FC_{}", k.to_uppercase()) };
                let value = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                src.origin.insert(name.clone(), path.to_string());
                src.values.insert(name, value);
            }
        }
        for (k, v) in env {
            src.origin.insert(k.clone(), "environment".into());
            src.values.insert(k, v);
        }
        Ok(src)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|s| s.as_str()).filter(|s| !s.is_empty())
    }

    pub fn reader<'a>(&'a self, service: &str) -> ConfigReader<'a> {
        ConfigReader { src: self, service: service.into(), problems: Vec::new() }
    }
}

/// Parses values, collecting problems until [`ConfigReader::finish`].
pub struct ConfigReader<'a> {
    src: &'a ConfigSource,
    service: String,
    problems: Vec<String>,
}

impl ConfigReader<'_> {
    /// The value of `spec` (or its default) parsed as `T`; on error records the problem
    /// and returns `T::default()` (the caller never sees it: `finish` fails).
    pub fn get<T>(&mut self, spec: &VarSpec) -> T
    where
        T: FromStr + Default,
        T::Err: fmt::Display,
    {
        self.opt(spec).unwrap_or_default()
    }

    /// Like [`get`](Self::get) but `None` when unset with no default.
    pub fn opt<T>(&mut self, spec: &VarSpec) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let (raw, from) = match self.src.get(spec.name) {
            Some(v) => (v.to_string(), self.src.origin.get(spec.name).cloned().unwrap_or_default()),
            None if !spec.default.is_empty() => (spec.default.to_string(), "default".to_string()),
            None => return None,
        };
        match raw.trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(format!("{}={raw:?} (from {from}): {e}", spec.name));
                None
            }
        }
    }

    /// Records a problem found by a cross-field check.
    pub fn problem(&mut self, msg: impl Into<String>) {
        self.problems.push(msg.into());
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { service: self.service, problems: self.problems })
        }
    }
}

pub const FC_NATS_URL: VarSpec =
    VarSpec { name: "FC_NATS_URL", default: "", help: "NATS server with JetStream; unset: the embedded bus in FC_DATA_DIR" };
pub const FC_DATA_DIR: VarSpec =
    VarSpec { name: "FC_DATA_DIR", default: ".fcmesh", help: "embedded bus, artifacts and runs" };
pub const FC_CONFIG: VarSpec =
    VarSpec { name: "FC_CONFIG", default: "", help: "optional TOML file with any of these variables" };
pub const FC_LOG_FORMAT: VarSpec =
    VarSpec { name: "FC_LOG_FORMAT", default: "text", help: "`text` or `json` log lines on stderr" };
/// Read by the services that run a model (parsed there, into `fc_model::device::DeviceSpec`).
pub const FC_DEVICE: VarSpec = VarSpec {
    name: "FC_DEVICE",
    default: "cpu",
    help: "where models run: cpu, cuda or cuda:N (CUDA needs a binary built with --features cuda)",
};
pub const RUST_LOG: VarSpec = VarSpec { name: "RUST_LOG", default: "info", help: "log filter (tracing EnvFilter syntax)" };
pub const OTEL_ENDPOINT: VarSpec = VarSpec {
    name: "OTEL_EXPORTER_OTLP_ENDPOINT",
    default: "",
    help: "OTLP/HTTP collector for traces; unset: no export",
};

/// What every service reads.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub service: String,
    pub nats_url: Option<String>,
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
}

/// `FC_HTTP_ADDR` with a service's default.
pub fn http_addr_spec(default: &'static str) -> VarSpec {
    VarSpec { name: "FC_HTTP_ADDR", default, help: "HTTP address for /health and /metrics" }
}

impl CommonConfig {
    pub fn read(r: &mut ConfigReader<'_>, service: &str, default_http: &'static str) -> Self {
        let nats_url: Option<String> = r.opt(&FC_NATS_URL);
        if let Some(u) = &nats_url {
            if !(u.starts_with("nats://") || u.starts_with("tls://") || u.contains(':')) {
                r.problem(format!("FC_NATS_URL={u:?}: expected nats://host:port"));
            }
        }
        let data_dir: String = r.get(&FC_DATA_DIR);
        let http_addr: Option<SocketAddr> = r.opt(&http_addr_spec(default_http));
        let _: Option<String> = r.opt(&FC_CONFIG);
        let fmt: Option<String> = r.opt(&FC_LOG_FORMAT);
        if let Some(f) = fmt {
            if f != "text" && f != "json" {
                r.problem(format!("FC_LOG_FORMAT={f:?}: expected `text` or `json`"));
            }
        }
        Self {
            service: service.into(),
            nats_url,
            data_dir: PathBuf::from(data_dir),
            http_addr: http_addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    }

    pub fn vars(default_http: &'static str) -> Vec<VarSpec> {
        vec![FC_NATS_URL, FC_DATA_DIR, http_addr_spec(default_http), FC_CONFIG, FC_LOG_FORMAT, RUST_LOG, OTEL_ENDPOINT]
    }

    pub fn bus_config(&self) -> fc_bus::BusConfig {
        fc_bus::BusConfig { nats_url: self.nats_url.clone(), data_dir: self.data_dir.clone() }
    }
}

/// The `--help` text of a service binary: what it does and every variable it reads.
pub fn help_text(service: &str, about: &str, vars: &[VarSpec]) -> String {
    let mut s = format!("{service}: {about}\n\nUSAGE:\n    {service} [--help]\n\nCONFIGURATION (environment, or a TOML file named by FC_CONFIG):\n");
    let width = vars.iter().map(|v| v.name.len()).max().unwrap_or(10);
    for v in vars {
        let default = if v.default.is_empty() { String::new() } else { format!(" [default: {}]", v.default) };
        s.push_str(&format!("    {:width$}  {}{}\n", v.name, v.help, default, width = width));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(pairs: &[(&str, &str)]) -> ConfigSource {
        ConfigSource::from_parts("t", pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .expect("source")
    }

    #[test]
    fn defaults_apply() {
        let s = src(&[]);
        let mut r = s.reader("svc");
        let c = CommonConfig::read(&mut r, "svc", "0.0.0.0:9101");
        r.finish().expect("valid");
        assert_eq!(c.http_addr.port(), 9101);
        assert!(c.nats_url.is_none());
        assert_eq!(c.data_dir, PathBuf::from(".fcmesh"));
    }

    #[test]
    fn every_bad_value_is_named_once() {
        let s = src(&[("FC_HTTP_ADDR", "not-an-addr"), ("FC_LOG_FORMAT", "xml"), ("FC_NATS_URL", "nonsense")]);
        let mut r = s.reader("gateway");
        let _ = CommonConfig::read(&mut r, "gateway", "0.0.0.0:8000");
        let err = r.finish().expect_err("invalid");
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(text.contains("FC_HTTP_ADDR=\"not-an-addr\""), "{text}");
        assert!(text.contains("FC_LOG_FORMAT"), "{text}");
        assert!(text.contains("FC_NATS_URL"), "{text}");
    }

    #[test]
    fn toml_file_then_env_override() {
        let dir = std::env::temp_dir().join(format!("fc-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("svc.toml");
        std::fs::write(&path, "http_addr = \"127.0.0.1:7000\"\nFC_DATA_DIR = \"/tmp/x\"\n").expect("write");
        let p = path.to_string_lossy().to_string();
        let s = src(&[("FC_CONFIG", &p), ("FC_DATA_DIR", "/tmp/env-wins")]);
        let mut r = s.reader("svc");
        let c = CommonConfig::read(&mut r, "svc", "0.0.0.0:1");
        r.finish().expect("valid");
        assert_eq!(c.http_addr.port(), 7000);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/env-wins"));
    }

    #[test]
    fn bad_toml_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("fc-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bad.toml");
        std::fs::write(&path, "this is = = not toml").expect("write");
        let err = ConfigSource::from_parts("svc", [("FC_CONFIG".to_string(), path.to_string_lossy().to_string())].into())
            .expect_err("bad toml");
        assert!(err.to_string().contains("not valid TOML"), "{err}");
    }

    #[test]
    fn help_lists_every_variable() {
        let h = help_text("merger", "merges adapters", &CommonConfig::vars("0.0.0.0:9103"));
        for v in CommonConfig::vars("0.0.0.0:9103") {
            assert!(h.contains(v.name), "{h}");
        }
        assert!(h.contains("[default: 0.0.0.0:9103]"));
    }
}

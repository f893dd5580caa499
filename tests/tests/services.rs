//! The eight service binaries as separate processes on a real nats-server, and all of them
//! in one `fcmesh run --all` process on the embedded bus: each answers /health within 5 s
//! and serves Prometheus text on /metrics.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `make test` does).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fc_integration_tests::{free_port, free_port_range, http_get, wait_for_health, workspace_bin, NatsServer};

const SERVICES: &[&str] = &[
    "data-ingest",
    "sft-trainer",
    "merger",
    "rollout-generator",
    "reward-scorer",
    "grpo-learner",
    "evaluator",
    "gateway",
];

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check_health_and_metrics(name: &str, addr: &str, started: Instant) {
    let (status, body) = wait_for_health(addr, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{name} did not answer /health on {addr} within 5 s"));
    assert!(started.elapsed() < Duration::from_secs(6), "{name} answered too late");
    if name == "gateway" {
        // Ready only with a model loaded: until one is promoted it says why, as JSON.
        assert_eq!(status, 503, "{name}: {body}");
        assert!(body.contains("\"model\""), "{name}: {body}");
    } else {
        // Ready once the bus is connected (checked right after start; allow a moment).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = (status, body);
        while last.0 != 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            last = http_get(addr, "/health").unwrap_or(last);
        }
        assert_eq!(last.0, 200, "{name} not ready: {}", last.1);
    }
    let (status, metrics) = http_get(addr, "/metrics").expect("metrics answer");
    assert_eq!(status, 200, "{name} /metrics");
    assert!(metrics.contains("# TYPE"), "{name} serves Prometheus text:\n{metrics}");
}

#[test]
fn each_binary_runs_as_its_own_process_on_nats() {
    let nats = NatsServer::start();
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for name in SERVICES {
        let addr = format!("127.0.0.1:{}", free_port());
        let data = tempfile::tempdir().expect("tmp");
        let child = Command::new(workspace_bin(name))
            .env("FC_NATS_URL", nats.url())
            .env("FC_HTTP_ADDR", &addr)
            .env("FC_DATA_DIR", data.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        children.push((Killed(child), data));
        addrs.push(addr);
    }
    let started = Instant::now();
    for (name, addr) in SERVICES.iter().zip(&addrs) {
        check_health_and_metrics(name, addr, started);
    }
}

#[test]
fn fcmesh_run_all_on_the_embedded_bus() {
    let data = tempfile::tempdir().expect("tmp");
    let base = free_port_range(SERVICES.len() as u16);
    let child = Command::new(workspace_bin("fcmesh"))
        .args(["run", "--all", "--http-base-port", &base.to_string()])
        .env_remove("FC_NATS_URL")
        .env("FC_DATA_DIR", data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fcmesh");
    let _guard = Killed(child);
    let started = Instant::now();
    for (i, name) in SERVICES.iter().enumerate() {
        let addr = format!("127.0.0.1:{}", base + i as u16);
        check_health_and_metrics(name, &addr, started);
    }
}

#[test]
fn help_lists_configuration_and_bad_config_is_one_clear_error() {
    for name in SERVICES {
        let out = Command::new(workspace_bin(name)).arg("--help").output().expect("run --help");
        assert!(out.status.success(), "{name} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        for var in ["FC_NATS_URL", "FC_DATA_DIR", "FC_HTTP_ADDR"] {
            assert!(text.contains(var), "{name} --help lists {var}:\n{text}");
        }
    }
    let out = Command::new(workspace_bin("merger"))
        .env("FC_HTTP_ADDR", "not-an-address")
        .env("FC_LOG_FORMAT", "yaml")
        .output()
        .expect("run merger");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FC_HTTP_ADDR") && err.contains("FC_LOG_FORMAT"), "every bad value named:\n{err}");
}

#[test]
fn sigterm_stops_a_service_cleanly() {
    let data = tempfile::tempdir().expect("tmp");
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(workspace_bin("reward-scorer"))
        .env_remove("FC_NATS_URL")
        .env("FC_DATA_DIR", data.path())
        .env("FC_HTTP_ADDR", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut guard = Killed(child);
    wait_for_health(&addr, Duration::from_secs(5)).expect("up");
    let pid = guard.0.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = guard.0.try_wait().expect("wait") {
            assert!(status.success(), "clean exit on SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With OTEL_EXPORTER_OTLP_ENDPOINT set, spans are exported over OTLP/HTTP (flushed at exit).
#[test]
fn spans_are_exported_over_otlp_when_configured() {
    use std::io::{Read, Write};
    let collector = std::net::TcpListener::bind("127.0.0.1:0").expect("bind collector");
    let endpoint = format!("http://{}", collector.local_addr().expect("addr"));
    let data = tempfile::tempdir().expect("tmp");
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(workspace_bin("fcmesh"))
        .args(["status"])
        .env_remove("FC_NATS_URL")
        .env("FC_DATA_DIR", data.path())
        .env("FC_HTTP_ADDR", &addr)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let _guard = Killed(child);
    collector.set_nonblocking(false).expect("blocking");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = collector.accept() {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    });
    let request = rx.recv_timeout(Duration::from_secs(20)).expect("an OTLP export request arrives");
    assert!(request.starts_with("POST /v1/traces"), "{request}");
}

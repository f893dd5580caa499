//! Test harness for the integration tests: real `nats-server -js` and `redis-server`
//! processes on free ports with temporary directories, stopped on drop.
//!
//! A missing binary is a test failure with a clear message, never a silent skip:
//! `make test` installs both (Debian packages `nats-server`, `redis-server`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    l.local_addr().expect("local addr").port()
}

/// `count` distinct free ports, consecutive, for `fcmesh run --http-base-port`.
pub fn free_port_range(count: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base > u16::MAX - count {
            continue;
        }
        let all_free = (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no range of {count} free consecutive ports found on 127.0.0.1");
}

fn find_binary(name: &str, package: &str) -> PathBuf {
    let candidates = [format!("/usr/sbin/{name}"), format!("/usr/bin/{name}"), format!("/usr/local/bin/{name}")];
    for c in &candidates {
        if Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':') {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "`{name}` not found (looked in /usr/sbin, /usr/bin, /usr/local/bin and PATH). \
         Install it: `apt-get install -y {package}` (make test does this when run as root)."
    );
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up with {status}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 15 s");
}

/// A private `nats-server -js` with its own store directory.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts the server and checks it is still up and listening once JetStream had a
    /// moment to start; a server that died in between (seen once in CI as "connection
    /// refused" right after start-up) is replaced on a fresh port, up to three times.
    pub fn start() -> Self {
        let bin = find_binary("nats-server", "nats-server");
        for attempt in 1..=3 {
            let dir = tempfile::tempdir().expect("temp dir for nats-server");
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server");
            wait_for_port(port, &mut child, "nats-server");
            // The listener is up a moment before JetStream is.
            std::thread::sleep(Duration::from_millis(150));
            let alive = matches!(child.try_wait(), Ok(None));
            if alive && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, port, _dir: dir };
            }
            eprintln!("nats-server on port {port} went away after start-up (attempt {attempt}); starting another");
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nats-server did not stay up after three starts");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `redis-server` with persistence off.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let bin = find_binary("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let port = free_port();
        let mut child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        wait_for_port(port, &mut child, "redis-server");
        Self { child, port, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory holding the workspace's built binaries (target/<profile>), found from
/// the test executable's own path (target/<profile>/deps/<test>).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Path of a workspace binary; fails clearly when it has not been built.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (make test does)",
        p.display()
    );
    p
}

/// Polls `http://addr/health` until it answers (any status) or `timeout` passes.
/// Returns the status code and body.
pub fn wait_for_health(addr: &str, timeout: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(r) = http_get(addr, "/health") {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A minimal HTTP/1.1 GET (enough for /health and /metrics; no client dependency).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

//! Test harness for the integration tests: real `nats-server -js` and `redis-server`
//! processes on free ports with temporary directories, stopped on drop.
//!
//! A missing binary is a test failure with a clear message, never a silent skip:
//! `make test` installs both (Debian packages `nats-server`, `redis-server`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
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
    if let Err(status) = try_wait_for_port(port, child) {
        panic!("{what} exited during start-up with {status}");
    }
}

/// Waits until something listens on `port`; `Err` with the exit status if `child` exits
/// first. Panics after 15 s.
fn try_wait_for_port(port: u16, child: &mut Child) -> Result<(), std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listened on 127.0.0.1:{port} within 15 s");
}

/// A private `nats-server -js` with its own store directory, watched by a thread that
/// restarts it if it dies.
///
/// Debian bookworm ships nats-server 2.9.10, which has JetStream panics fixed only in later
/// releases (2.9.14 lists "possible panic and deadlock during a consumer filter subject
/// update"). CI has twice seen the server vanish in the first second, while five processes
/// created streams and consumers at once. A crashed server is not what these tests test, but
/// surviving a NATS restart is: the watcher prints the exit status and the tail of the
/// server's log (so the cause is on record), then starts it again on the same port with the
/// same store, which keeps every stream, and the clients reconnect as they would in
/// production. (In the moment between, another test could in principle be handed the same
/// port by [`free_port`]; with ports drawn from the whole ephemeral range that is left as
/// a theoretical risk.)
pub struct NatsServer {
    pub port: u16,
    shared: Arc<Supervised>,
    watcher: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// What the watcher thread and the handle share.
struct Supervised {
    child: Mutex<Child>,
    /// Restarts so far; [`NatsServer::crash`] waits for it to move.
    restarts: AtomicU32,
    stop: AtomicBool,
}

impl Supervised {
    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How many times the watcher restarts a server that exited (a [`NatsServer::crash`]
/// counts) before it gives up; the test then fails on its own timeouts, with the log
/// tails printed.
const NATS_RESTARTS: u32 = 3;

fn spawn_nats(bin: &Path, port: u16, store: &Path, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("nats-server log file");
    let err = out.try_clone().expect("nats-server log file");
    Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn nats-server")
}

/// The last `n` lines of a log file, for failure messages.
fn log_tail(path: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl NatsServer {
    /// Starts the server; one that exits before it listens is replaced on a fresh port, up
    /// to three times.
    pub fn start() -> Self {
        let bin = find_binary("nats-server", "nats-server");
        for attempt in 1..=3 {
            let dir = tempfile::tempdir().expect("temp dir for nats-server");
            let (store, log) = (dir.path().join("store"), dir.path().join("nats-server.log"));
            let port = free_port();
            let mut child = spawn_nats(&bin, port, &store, &log);
            if let Err(status) = try_wait_for_port(port, &mut child) {
                eprintln!("nats-server on port {port} exited during start-up with {status} (attempt {attempt}):\n{}", log_tail(&log, 30));
                continue;
            }
            let shared = Arc::new(Supervised { child: Mutex::new(child), restarts: AtomicU32::new(0), stop: AtomicBool::new(false) });
            let watcher = {
                let shared = shared.clone();
                std::thread::spawn(move || watch_nats(&bin, port, &store, &log, &shared))
            };
            return Self { port, shared, watcher: Some(watcher), _dir: dir };
        }
        panic!("nats-server did not start in three tries");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL, as a crash would; the watcher restarts it. Returns
    /// once a new server listens on the port.
    pub fn crash(&self) {
        let before = self.shared.restarts.load(Ordering::Acquire);
        let _ = self.shared.child().kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let restarted = self.shared.restarts.load(Ordering::Acquire) > before
                && matches!(self.shared.child().try_wait(), Ok(None));
            if restarted && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "nats-server on port {} was not restarted within 20 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The watcher's loop: see [`NatsServer`].
///
/// The lock on the child is held only to look at it or swap it: a restart spawns and waits
/// for the new server unlocked, and one that finishes after [`Drop`] set `stop` is killed
/// rather than installed.
fn watch_nats(bin: &Path, port: u16, store: &Path, log: &Path, shared: &Supervised) {
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let status = match shared.child().try_wait() {
            Ok(Some(status)) => status,
            _ => continue,
        };
        eprintln!("nats-server on port {port} exited with {status}; the end of its log:\n{}", log_tail(log, 60));
        let restarts = shared.restarts.load(Ordering::Acquire);
        if restarts == NATS_RESTARTS {
            eprintln!("nats-server on port {port}: not restarting it again after {NATS_RESTARTS} restarts");
            return;
        }
        eprintln!("restarting nats-server on port {port} with the same store (restart {})", restarts + 1);
        let mut fresh = spawn_nats(bin, port, store, log);
        let up = try_wait_for_port(port, &mut fresh);
        if shared.stop.load(Ordering::Acquire) {
            let _ = fresh.kill();
            let _ = fresh.wait();
            return;
        }
        *shared.child() = fresh;
        shared.restarts.store(restarts + 1, Ordering::Release);
        if let Err(status) = up {
            // The next turn of the loop sees the exit and tries again.
            eprintln!("the restarted nats-server exited with {status}");
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        let mut c = self.shared.child();
        let _ = c.kill();
        let _ = c.wait();
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

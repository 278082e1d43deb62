//! Starts real `strata` processes for end-to-end tests: each node gets its own
//! data directory and ephemeral ports, read back from the line the broker
//! prints on stdout once it serves.

#![allow(dead_code)]

pub mod cluster;
pub mod history;
pub mod proxy;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a node may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

pub struct Node {
    child: Option<Child>,
    /// Phases ("listening", "serving") the running process has announced.
    events: Option<mpsc::Receiver<(&'static str, Addrs)>>,
    pub dir: PathBuf,
    pub data: SocketAddr,
    pub control: SocketAddr,
    pub peer: SocketAddr,
    extra: Vec<String>,
    log: PathBuf,
}

type Addrs = (SocketAddr, SocketAddr, SocketAddr);

/// Parses `strata <phase> node=.. data=.. control=.. peer=..`.
fn parse_line(line: &str, phase: &str) -> Option<Addrs> {
    let rest = line
        .strip_prefix("strata ")?
        .strip_prefix(phase)?
        .strip_prefix(' ')?;
    let field = |name: &str| {
        rest.split_whitespace().find_map(|kv| {
            kv.strip_prefix(&format!("{name}="))
                .and_then(|v| v.parse().ok())
        })
    };
    Some((field("data")?, field("control")?, field("peer")?))
}

impl Node {
    /// Starts a node on ephemeral ports with data in `dir`.
    pub fn start(dir: &Path) -> Node {
        Self::start_with(dir, &[])
    }

    /// Starts a node with extra `serve` flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Node {
        let mut node = Self::unstarted(dir, extra);
        node.spawn("serving");
        node
    }

    /// Starts a node and returns once it listens, before it has recovered.
    pub fn start_listening(dir: &Path, extra: &[&str]) -> Node {
        let mut node = Self::unstarted(dir, extra);
        node.spawn("listening");
        node
    }

    fn unstarted(dir: &Path, extra: &[&str]) -> Node {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        Node {
            child: None,
            events: None,
            dir: dir.to_path_buf(),
            data: any,
            control: any,
            peer: any,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: dir.with_extension("log"),
        }
    }

    fn spawn(&mut self, phase: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(STRATA)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--data-addr", &self.data.to_string()])
            .args(["--control-addr", &self.control.to_string()])
            .args(["--peer-addr", &self.peer.to_string()])
            .args(&self.extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start strata serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                for phase in ["listening", "serving"] {
                    if let Some(addrs) = parse_line(&line, phase) {
                        let _ = tx.send((phase, addrs));
                    }
                }
            }
        });
        self.events = Some(rx);
        self.child = Some(child);
        self.wait_for(phase);
    }

    /// Waits until the node announces `phase`; learns its addresses from it.
    fn wait_for(&mut self, phase: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        let events = self.events.as_ref().expect("spawned");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok((p, (data, control, peer))) => {
                    self.data = data;
                    self.control = control;
                    self.peer = peer;
                    if p == phase {
                        return;
                    }
                }
                Err(_) => {
                    if let Some(mut child) = self.child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    panic!(
                        "strata did not reach {phase:?}; log:\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Waits for a node started with `start_listening` to serve (a cluster
    /// node serves once a quorum of its peers has elected a metadata leader).
    pub fn wait_serving(&mut self) {
        self.wait_for("serving");
    }

    /// The control address clients bootstrap from.
    pub fn bootstrap(&self) -> String {
        self.control.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGSTOP: the process freezes (no heartbeats, no answers) until `resume`.
    pub fn pause(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGSTOP) };
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM, then waits for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "strata did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets the `serve` flag `name` to `value` for the next (re)start.
    pub fn set_flag(&mut self, name: &str, value: &str) {
        self.drop_flag(name);
        self.extra.extend([name.to_owned(), value.to_owned()]);
    }

    /// Drops the `serve` flag `name` and its value from those the next
    /// (re)start uses.
    pub fn drop_flag(&mut self, name: &str) {
        if let Some(at) = self.extra.iter().position(|f| f == name) {
            self.extra.drain(at..(at + 2).min(self.extra.len()));
        }
    }

    /// Whether the process has exited on its own (it is not running anymore
    /// although nobody stopped it).
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("wait").is_some())
    }

    /// Starts the node again on the same ports (clients keep their address).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.spawn("serving");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory of the process so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a client command against `bootstrap`, feeding `stdin`.
pub fn cli(bootstrap: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(STRATA)
        .args(args)
        .args(["--bootstrap", bootstrap])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run strata");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    child.wait_with_output().unwrap()
}

/// Like `cli`, asserting success; returns stdout.
pub fn cli_ok(bootstrap: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = cli(bootstrap, args, stdin);
    assert!(
        out.status.success(),
        "strata {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A plain HTTP GET; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        // HTTP/1.0: the body arrives whole, not chunked.
        "GET {path} HTTP/1.0\r\nHost: strata\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The value of an unlabelled sample in a Prometheus exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

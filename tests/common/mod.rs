//! Harness for end-to-end tests: runs the real `tine` binary on 127.0.0.1 port 0
//! with its own temporary root, stats region and pid file, and talks to it as a
//! client would. Readiness is observed (the `listening on` line, the stats
//! region), never assumed from a sleep.

#![allow(dead_code)]

pub mod h2;
pub mod pebble;
pub mod tls;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound on any wait in a test, so a broken server fails a test instead
/// of hanging it. Never a performance threshold.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn tine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tine"))
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub stats_path: PathBuf,
    pub pid_file: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

pub struct Builder {
    workers: usize,
    config: Option<String>,
    /// The configuration file says everything but the stats and pid paths.
    config_only: bool,
    extra: Vec<String>,
}

impl Builder {
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// TOML appended to the generated configuration (listen, root, paths).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// A configuration file that sets listen, root and workers itself, so a
    /// reload can change them; `{root}` stands for the served directory.
    pub fn config_only(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self.config_only = true;
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_string());
        self
    }

    pub fn start(self) -> Server {
        self.start_with(|_| {})
    }

    /// As [`Builder::start`], with `prepare` run on the server's directory
    /// before the server starts.
    pub fn start_with(self, prepare: impl FnOnce(&Path)) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("www");
        std::fs::create_dir(&root).unwrap();
        prepare(dir.path());
        let stats_path = dir.path().join("tine.stats");
        let pid_file = dir.path().join("tine.pid");
        let mut cmd = tine();
        cmd.arg("serve");
        if let Some(extra_toml) = &self.config {
            let path = dir.path().join("tine.toml");
            std::fs::write(&path, extra_toml.replace("{root}", root.to_str().unwrap())).unwrap();
            cmd.arg("--config").arg(&path);
        }
        if !self.config_only {
            cmd.arg("--root").arg(&root).args([
                "--listen",
                "127.0.0.1:0",
                "--workers",
                &self.workers.to_string(),
            ]);
        }
        cmd.arg("--stats-path")
            .arg(&stats_path)
            .arg("--pid-file")
            .arg(&pid_file)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tine");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(PATIENCE) {
            Ok(a) => a.parse().expect("address"),
            Err(_) => {
                let _ = child.kill();
                panic!("tine did not start: {:?}", log.lock().unwrap());
            }
        };
        let server = Server { child: Some(child), addr, dir, root, stats_path, pid_file, log };
        server.wait_until("all workers running", |s| {
            s["workers"].as_array().unwrap().iter().all(|w| w["state"] == "running")
        });
        server
    }
}

impl Server {
    pub fn builder() -> Builder {
        Builder { workers: 1, config: None, config_only: false, extra: Vec::new() }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tine.toml")
    }

    /// The pid the pid file names now (a new master's after an upgrade).
    pub fn pid_in_pid_file(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    pub fn start(workers: usize) -> Server {
        Self::builder().workers(workers).start()
    }

    pub fn write_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn master_pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// `tine stats --json` for this server, parsed.
    pub fn stats(&self) -> Value {
        let out = tine()
            .args(["stats", "--json", "--stats-path"])
            .arg(&self.stats_path)
            .output()
            .expect("run tine stats");
        assert!(out.status.success(), "tine stats failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("stats JSON")
    }

    pub fn total(&self, counter: &str) -> u64 {
        self.stats()["total"][counter].as_u64().unwrap_or_else(|| panic!("no total {counter}"))
    }

    pub fn worker_pids(&self) -> Vec<i32> {
        self.stats()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_i64().unwrap() as i32)
            .collect()
    }

    /// Polls the stats region until `ready` holds (bounded by PATIENCE).
    pub fn wait_until(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        self.wait_until_for(what, PATIENCE, ready)
    }

    /// As [`Server::wait_until`], for something that takes longer by design
    /// (bounded by `patience`).
    pub fn wait_until_for(&self, what: &str, patience: Duration, ready: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if self.stats_path.exists() {
                if let Ok(out) =
                    tine().args(["stats", "--json", "--stats-path"]).arg(&self.stats_path).output()
                {
                    if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
                        if ready(&v) {
                            return v;
                        }
                    }
                }
            }
            assert!(start.elapsed() < patience, "gave up waiting for {what}; log: {:?}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().iter().any(|l| l.contains(needle)) {
            assert!(start.elapsed() < PATIENCE, "no log line with {needle:?}: {:?}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        send_signal(self.master_pid(), sig);
    }

    /// Waits for the master to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < PATIENCE, "master did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    pub fn get(&self, path: &str) -> Response {
        let mut s = self.connect();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        read_response(&mut BufReader::new(s), false)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A master that took over by upgrade is not our child: stop it by pid.
        if let Some(pid) = self.pid_in_pid_file().filter(|&p| p != self.master_pid()) {
            send_signal(pid, libc::SIGTERM);
            let start = Instant::now();
            while process_running(pid) && start.elapsed() < PATIENCE {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let Some(mut child) = self.child.take() else { return };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let workers = if self.stats_path.exists() { self.worker_pids_quietly() } else { Vec::new() };
        send_signal(child.id() as i32, libc::SIGTERM);
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > PATIENCE {
                let _ = child.kill();
                for pid in &workers {
                    send_signal(*pid, libc::SIGKILL);
                }
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Server {
    fn worker_pids_quietly(&self) -> Vec<i32> {
        tine()
            .args(["stats", "--json", "--stats-path"])
            .arg(&self.stats_path)
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
            .and_then(|v| {
                v["workers"]
                    .as_array()
                    .map(|ws| ws.iter().filter_map(|w| w["pid"].as_i64()).map(|p| p as i32).collect())
            })
            .unwrap_or_default()
    }
}

/// `tine check` refuses `toml` (with `{root}` standing for a directory that
/// exists) with `message`, located at file:line.
pub fn assert_check_refuses(toml: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, toml.replace("{root}", dir.path().to_str().unwrap())).unwrap();
    let out = tine().arg("check").arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(message), "{toml}: {err}");
    assert!(err.contains("t.toml:"), "errors point at the file: {err}");
}

pub fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// True while a process exists and is not a zombie.
pub fn process_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one response; `head_request` means no body follows whatever the
/// headers say. A body without Content-Length runs to the end of the stream.
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 "), "bad status line {line:?}");
    let status = line[9..12].parse().expect("status code");
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header colon");
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Response { status, headers, body: Vec::new() };
    if head_request || status == 304 || status == 204 {
        return resp;
    }
    match resp.header("content-length").map(|v| v.parse::<usize>().unwrap()) {
        Some(n) => {
            resp.body.resize(n, 0);
            r.read_exact(&mut resp.body).expect("body");
        }
        None => {
            r.read_to_end(&mut resp.body).expect("body to end");
        }
    }
    resp
}

/// Sends raw bytes and returns everything the server sends until it closes.
pub fn exchange_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Sends `raw`, half-closes, and checks that whatever comes back (if anything)
/// is an HTTP response: bad input may be answered or dropped, never garbled.
pub fn answer_is_http_or_nothing(addr: SocketAddr, raw: &[u8], case: impl std::fmt::Display) {
    let mut s = connect(addr);
    let _ = s.write_all(raw);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if !out.is_empty() {
        let shown = String::from_utf8_lossy(&out[..out.len().min(300)]).to_string();
        assert!(out.starts_with(b"HTTP/1.1 "), "case {case}: {shown:?}");
    }
}

/// Writes `data` and half-closes while another thread reads `reader` to its
/// end; returns what was read (for echoes through tunnels and streams).
pub fn duplex(reader: impl Read + Send + 'static, mut writer: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut reader = reader;
    let reading = std::thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        got
    });
    writer.write_all(data).unwrap();
    writer.shutdown(std::net::Shutdown::Write).unwrap();
    reading.join().unwrap()
}

pub fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    assert!(text.starts_with("HTTP/1.1 "), "not a response: {text:?}");
    text[9..12].parse().unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn cpus_allowed(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string()
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim().to_string()
}

pub fn parent_pid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Listening TCP sockets on `port` (IPv4), from /proc/net/tcp.
pub fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
        })
        .count()
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// Clients that loop over keep-alive connections until told to stop, counting
/// responses by status and every I/O failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    pub fn start(server: &Server, clients: usize, path: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let (addr, stop) = (server.addr, stop.clone());
                std::thread::spawn(move || {
                    let (mut ok, mut failures) = (0u64, Vec::new());
                    let mut conn: Option<BufReader<std::net::TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let r = conn.get_or_insert_with(|| BufReader::new(connect(addr)));
                        let sent = r
                            .get_mut()
                            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
                        let resp = sent.map_err(|e| e.to_string()).and_then(|()| try_read_response(r));
                        match resp {
                            Ok((200, close)) => {
                                ok += 1;
                                if close {
                                    conn = None;
                                }
                            }
                            Ok((status, _)) => failures.push(format!("status {status}")),
                            Err(e) => {
                                failures.push(e);
                                conn = None;
                            }
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load { stop, threads }
    }

    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = (0, Vec::new());
        for t in self.threads {
            let (ok, failures) = t.join().unwrap();
            total.0 += ok;
            total.1.extend(failures);
        }
        total
    }
}

/// Reads one response; returns its status and whether the server closes after it.
fn try_read_response(r: &mut BufReader<std::net::TcpStream>) -> Result<(u16, bool), String> {
    let mut line = String::new();
    if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Err("connection closed before a response".into());
    }
    let status: u16 =
        line.get(9..12).and_then(|s| s.parse().ok()).ok_or(format!("bad status line {line:?}"))?;
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| "bad length".to_string())?;
        }
        close |= lower == "connection: close";
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, close))
}

/// A raw upstream that records every connection's bytes and answers each
/// request head it sees with a small response (keep-alive).
pub fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for (i, s) in listener.incoming().flatten().enumerate() {
            record.lock().unwrap().push(Vec::new());
            let record = record.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let mut answered = 0;
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut all = record.lock().unwrap();
                    all[i].extend_from_slice(&buf[..n]);
                    let heads = all[i].windows(4).filter(|w| w == b"\r\n\r\n").count();
                    drop(all);
                    while answered < heads {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        answered += 1;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A raw echo server for the stream relay.
pub fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// The address a `[[stream]]` to `upstream` listens on, from the master's log
/// (the latest such line: a reload that adds a stream logs it too).
pub fn stream_addr(server: &Server, upstream: &str) -> SocketAddr {
    let needle = format!("relayed to upstream {upstream}");
    server.wait_for_log(&needle);
    let line = server.log().into_iter().rfind(|l| l.contains(&needle)).unwrap();
    line.split("stream on ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

/// The address of the admin endpoint, from the master's log.
pub fn admin_addr(server: &Server) -> SocketAddr {
    let needle = "admin endpoint on http://";
    server.wait_for_log(needle);
    let line = server.log().into_iter().rfind(|l| l.contains(needle)).unwrap();
    line.split(needle).nth(1).unwrap().split('/').next().unwrap().parse().unwrap()
}

/// An integer socket option of every listening socket the process `pid`
/// holds on `port`, read with getsockopt on a duplicate taken by
/// pidfd_getfd (the test started the process, so it may).
pub fn listener_opts(pid: i32, port: u16, level: i32, name: i32) -> Vec<i32> {
    let local = format!(":{port:04X}");
    socket_opts(pid, |f| f[1].ends_with(&local) && f[3] == "0A", level, name)
}

/// As [`listener_opts`], for the established connections `pid` holds to
/// remote port `port` (an upstream server's).
pub fn connection_opts(pid: i32, port: u16, level: i32, name: i32) -> Vec<i32> {
    let remote = format!(":{port:04X}");
    socket_opts(pid, |f| f[2].ends_with(&remote) && f[3] == "01", level, name)
}

/// An integer option of every TCP socket of `pid` whose /proc/net/tcp row
/// (split into fields) `row` accepts.
fn socket_opts(pid: i32, row: impl Fn(&[&str]) -> bool, level: i32, name: i32) -> Vec<i32> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && row(&f)).then(|| f[9].to_string())
        })
        .collect();
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    let mut values = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else { continue };
        let link = link.to_string_lossy().into_owned();
        if !inodes.iter().any(|i| link == format!("socket:[{i}]")) {
            continue;
        }
        let target: i32 = entry.file_name().to_string_lossy().parse().unwrap();
        // SAFETY: pidfd is ours; the call returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) } as i32;
        assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        let (mut value, mut len) = (0i32, std::mem::size_of::<i32>() as libc::socklen_t);
        // SAFETY: value and len are valid for writing and len says value's size.
        let rc = unsafe {
            libc::getsockopt(fd, level, name, &mut value as *mut i32 as *mut libc::c_void, &mut len)
        };
        assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
        values.push(value);
        // SAFETY: fd is the duplicate made above, used nowhere else.
        unsafe { libc::close(fd) };
    }
    // SAFETY: pidfd is ours.
    unsafe { libc::close(pidfd) };
    values
}

/// Whether node, Debian's chromium and playwright-core (tests/browser) are
/// here for a browser test. Under CI (whose script installs them) their
/// absence fails the test; elsewhere the test is skipped, and says so.
pub fn browser_ready() -> bool {
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let chromium = Path::new("/usr/bin/chromium").exists();
    let playwright = browser.join("node_modules/playwright-core").exists();
    let ready = node && chromium && playwright;
    assert!(
        ready || std::env::var_os("CI").is_none(),
        "node {node}, chromium {chromium}, playwright-core {playwright}: bash .ci/run installs them"
    );
    if !ready {
        eprintln!("SKIPPED: needs node, /usr/bin/chromium and tests/browser/node_modules (bash .ci/run installs them)");
    }
    ready
}

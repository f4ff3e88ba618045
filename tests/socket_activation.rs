//! systemd socket activation: listening sockets passed as descriptors 3.. with
//! LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are served instead of bound,
//! and a reload keeps them.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Starts `cmd` and returns it with a channel of its error-log lines.
fn start(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        let line =
            rx.recv_timeout(common::PATIENCE).unwrap_or_else(|_| panic!("no log line with {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

fn get(addr: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

fn site(addr: SocketAddr) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/a.txt"), b"A").unwrap();
    std::fs::write(
        dir.path().join("tine.toml"),
        format!(
            "listen = [\"{addr}\"]\nroot = \"www\"\nworkers = 2\nstats_path = \"{0}/stats\"\npid_file = \"{0}/pid\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    dir
}

fn stop(mut child: Child) {
    // SAFETY: kill signals the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

/// Starts tine on `config` with `listener` passed the way systemd passes a
/// socket: as fd 3, named `name`, with LISTEN_PID set to the pid that execs
/// tine.
fn activate(listener: TcpListener, name: &str, config: &std::path::Path) -> (Child, mpsc::Receiver<String>) {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES="$2" exec "$0" serve --config "$1""#)
        .arg(env!("CARGO_BIN_EXE_tine"))
        .arg(config)
        .arg(name);
    // SAFETY: between fork and exec only dup2 and fcntl run, which are
    // async-signal-safe. dup2 onto itself would keep close-on-exec, so a
    // socket that already is descriptor 3 has the flag cleared instead.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if rc == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    let started = start(cmd);
    drop(listener);
    started
}

// The socket is bound without SO_REUSEPORT, so tine could not have bound the
// address itself: an answer proves it served the socket it was given.
#[test]
fn passed_sockets_are_served_and_survive_a_reload() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = site(addr);
    let (child, log) = activate(listener, "web", &dir.path().join("tine.toml"));
    assert!(wait_line(&log, "sockets from systemd").contains(&format!("web={addr}")));
    wait_line(&log, "serving");
    assert!(get(addr).ends_with(b"\r\n\r\nA"));
    // SAFETY: kill signals the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_line(&log, "reload");
    for _ in 0..20 {
        assert!(get(addr).ends_with(b"\r\n\r\nA"));
    }
    stop(child);
}

// A socket named after a listener kind (FileDescriptorName=http) serves that
// kind's listener even when its address differs from the configured one,
// which tine then does not bind.
#[test]
fn a_passed_socket_named_http_serves_the_listen_address() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = listener.local_addr().unwrap();
    let configured: SocketAddr = "127.0.0.5:0".parse().unwrap();
    let dir = site(configured);
    let (child, log) = activate(listener, "http", &dir.path().join("tine.toml"));
    assert!(wait_line(&log, "serves 127.0.0.5:0").contains(&format!("http={passed}")));
    wait_line(&log, "serving");
    assert!(get(passed).ends_with(b"\r\n\r\nA"));
    stop(child);
}

// The same through systemd's own tool, where it is installed.
#[test]
fn through_systemd_socket_activate() {
    let Some(tool) = ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = site(addr);
    let mut cmd = Command::new(tool);
    cmd.args(["-l", &addr.to_string(), "--fdname=web", env!("CARGO_BIN_EXE_tine"), "serve", "--config"])
        .arg(dir.path().join("tine.toml"));
    let (child, log) = start(cmd);
    wait_line(&log, "Listening on");
    // systemd-socket-activate waits for the first connection before it
    // starts tine; that connection is tine's first request.
    assert!(get(addr).ends_with(b"\r\n\r\nA"));
    assert!(wait_line(&log, "sockets from systemd").contains(&format!("web={addr}")));
    assert!(get(addr).ends_with(b"\r\n\r\nA"));
    stop(child);
}

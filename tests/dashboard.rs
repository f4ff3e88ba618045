//! The dashboard in a real browser: Debian's chromium, driven by
//! playwright-core (tests/browser/dashboard.mjs), against tine with an admin
//! listener, a static and a proxied route under load. The page must show the
//! load (request rate, every worker's row, latency, the upstream), show a
//! killed worker's replacement, fit a phone's width, follow a reload and a
//! binary upgrade without a negative or spiking rate, say when the server
//! stops answering, and log no console error. Screenshots go to the test's
//! own temporary directory, which cargo keeps: target/tmp/dashboard/.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// An upstream answering every request with a small page, keep-alive.
fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => {
                            let body = "from the upstream\n";
                            let head =
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                            if reader.get_mut().write_all(head.as_bytes()).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

/// Requests on new connections (so that both workers get some) until
/// `stop`; the fifth client asks for a route whose client limit refuses it.
fn load(addr: SocketAddr, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> Vec<std::thread::JoinHandle<()>> {
    (0..5)
        .map(|i| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let path =
                    ["/index.html", "/api/items", "/index.html", "/api/items", "/limited/index.html"][i];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr) else { continue };
                    let request =
                        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
                    if s.write_all(request.as_bytes()).is_ok() {
                        let mut out = Vec::new();
                        if s.read_to_end(&mut out).is_ok() && out.starts_with(b"HTTP/1.1 200") {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        })
        .collect()
}

#[test]
fn the_dashboard_shows_load_a_respawn_and_a_stopped_server() {
    if !browser_ready() {
        return;
    }
    let mut server = Server::builder()
        .config(&format!(
            "admin_listen = \"127.0.0.1:0\"\n\
             [[client_limit]]\nname = \"scrapers\"\nrate = \"1r/m\"\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
             [[route]]\npath = \"/api/\"\nupstream = \"app\"\n\
             [[route]]\npath = \"/limited/\"\nroot = \"{{root}}\"\nclient_limits = [\"scrapers\"]\n\
             [[route]]\npath = \"/\"\nroot = \"{{root}}\"\n",
            upstream()
        ))
        .workers(2)
        .start();
    server.write_file("index.html", b"<p>hello</p>");
    let admin = admin_addr(&server);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let loaders = load(server.addr, stop.clone(), done.clone());

    let mut browser = Command::new("node")
        .arg(Path::new(ROOT).join("tests/browser/dashboard.mjs"))
        .arg(format!("http://{admin}/"))
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    // However the page behaves, the run ends: the browser is killed after
    // PATIENCE times a few steps.
    let pid = browser.id() as i32;
    let watchdog_done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let watchdog_done = watchdog_done.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !watchdog_done.load(Ordering::Relaxed) {
                if start.elapsed() > PATIENCE * 6 {
                    send_signal(pid, libc::SIGKILL);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let mut to_browser = browser.stdin.take().unwrap();
    let mut from_browser = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    let mut killed = None;
    let mut master = None;
    let mut stopped = false;
    while let Some(Ok(line)) = from_browser.next() {
        said.push(line.clone());
        if let Some(pids) = line.strip_prefix("load-seen ") {
            let shown: Vec<i32> = pids.split_whitespace().map(|p| p.parse().unwrap()).collect();
            let mut workers = server.worker_pids();
            workers.sort();
            let mut sorted = shown.clone();
            sorted.sort();
            assert_eq!(sorted, workers, "the page lists the workers the stats region names");
            send_signal(shown[0], libc::SIGKILL);
            killed = Some(shown[0]);
            writeln!(to_browser, "killed {}", shown[0]).unwrap();
        } else if line == "respawn-seen" {
            let workers = server.worker_pids();
            assert!(!workers.contains(&killed.unwrap()), "{workers:?}");
            server.signal(libc::SIGHUP);
            server.wait_until("the reload", |s| s["master"]["reloads"] == 1);
            server.signal(libc::SIGUSR2);
            assert!(server.wait_exit().success(), "the old master leaves once the new one serves");
            master = server.pid_in_pid_file();
            writeln!(to_browser, "upgraded {}", master.unwrap()).unwrap();
        } else if line == "upgrade-seen" {
            stop.store(true, Ordering::Relaxed);
            let pid = master.unwrap();
            send_signal(pid, libc::SIGTERM);
            wait_for("the new master to stop", || !process_running(pid));
            stopped = true;
            writeln!(to_browser, "stopped").unwrap();
        }
    }
    let status = browser.wait().unwrap();
    watchdog_done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let mut errors = String::new();
    browser.stderr.take().unwrap().read_to_string(&mut errors).unwrap();
    assert!(status.success(), "browser run failed: {said:?}\n{errors}\n(screenshots in {})", shots.display());
    assert!(stopped && said.last().map(String::as_str) == Some("ok"), "{said:?}");
    assert!(done.load(Ordering::Relaxed) > 0, "the load got answers");
    for shot in
        ["dashboard-load.png", "dashboard-respawn.png", "dashboard-phone.png", "dashboard-stopped.png"]
    {
        let size = std::fs::metadata(shots.join(shot)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "{shot}: {size} bytes");
    }
    eprintln!("screenshots: {}", shots.display());
}

//! `[[client_limit]]` end to end: clients on distinct loopback source
//! addresses (127.0.0.2, 127.0.0.3, ...) against the real binary. Rates are
//! slow enough (per minute) that no allowance refills while a test runs, so
//! every count asserted is exact.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: IpAddr = from.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// One request from `from` on a connection of its own.
fn get_from(from: &str, server: &Server, path: &str) -> Response {
    let mut s = connect_from(from, server.addr);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    read_response(&mut BufReader::new(s), false)
}

fn limit<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["client_limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no limit {name} in {stats}"))
}

fn statuses(server: &Server, from: &str, path: &str, n: usize) -> Vec<u16> {
    (0..n).map(|_| get_from(from, server, path).status).collect()
}

#[test]
fn a_client_over_the_rate_gets_429_with_retry_after_and_the_others_are_served() {
    let (up, seen) = recording_upstream();
    let server = Server::builder()
        .config(&format!(
            "[[client_limit]]\nname = \"login\"\nrate = \"1r/m\"\nburst = 2\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{up}\"]\n\n\
             [[route]]\npath = \"/login\"\nupstream = \"app\"\nclient_limits = [\"login\"]\n\n\
             [[route]]\npath = \"/\"\nroot = \"{{root}}\"\n"
        ))
        .start();
    server.write_file("index.html", b"home");
    assert_eq!(statuses(&server, "127.0.0.2", "/login", 3), [200, 200, 200], "the rate and the burst");
    let refused = get_from("127.0.0.2", &server, "/login");
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Another client, and another route of the same client, are not limited.
    assert_eq!(get_from("127.0.0.3", &server, "/login").status, 200);
    assert_eq!(get_from("127.0.0.2", &server, "/").status, 200);
    // Refused requests never reached the upstream.
    let requests: usize =
        seen.lock().unwrap().iter().map(|c| c.windows(4).filter(|w| w == b"GET ").count()).sum();
    assert_eq!(requests, 4);
    let stats = server.stats();
    let login = limit(&stats, "login");
    assert_eq!((login["checked"].as_u64(), login["refused"].as_u64()), (Some(5), Some(1)));
    server.wait_for_log("client limit \"login\": 127.0.0.2 refused");
}

#[test]
fn the_limit_holds_across_two_workers() {
    let server = Server::builder()
        .workers(2)
        .config("client_limits = [\"all\"]\n[[client_limit]]\nname = \"all\"\nrate = \"1r/m\"\nburst = 9\n")
        .start();
    server.write_file("a", b"a");
    let got = statuses(&server, "127.0.0.4", "/a", 40);
    assert_eq!(got.iter().filter(|&&s| s == 200).count(), 10, "{got:?}");
    assert_eq!(got.iter().filter(|&&s| s == 429).count(), 30, "{got:?}");
    // New connections were spread over both workers.
    let stats = server.stats();
    let per_worker: Vec<u64> =
        stats["workers"].as_array().unwrap().iter().map(|w| w["requests"].as_u64().unwrap()).collect();
    assert!(per_worker.iter().all(|&r| r > 0), "both workers answered: {per_worker:?}");
    assert_eq!(limit(&stats, "all")["refused"].as_u64(), Some(30));
}

#[test]
fn delay_holds_requests_over_the_rate_until_their_turn() {
    let server = Server::builder()
        .config(
            "[[client_limit]]\nname = \"slow\"\nrate = \"1r/s\"\nburst = 2\ndelay = true\n\n\
             [[route]]\npath = \"/\"\nroot = \"{root}\"\nclient_limits = [\"slow\"]\n",
        )
        .start();
    server.write_file("a", b"a");
    let started = Instant::now();
    // Four at once: the first now, the next two a second apart, the last
    // beyond the burst.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut s = connect_from("127.0.0.5", server.addr);
            s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
            s
        })
        .collect();
    let mut finished = Vec::new();
    for s in clients {
        let r = read_response(&mut BufReader::new(s), false);
        finished.push((r.status, started.elapsed()));
    }
    let mut codes: Vec<u16> = finished.iter().map(|(s, _)| *s).collect();
    codes.sort();
    assert_eq!(codes, [200, 200, 200, 429], "{finished:?}");
    let last = finished.iter().filter(|(s, _)| *s == 200).map(|(_, t)| *t).max().unwrap();
    // Not answered before its turn, two intervals after the first.
    assert!(last >= Duration::from_millis(1500), "{finished:?}");
    let stats = server.stats();
    let slow = limit(&stats, "slow");
    assert_eq!((slow["delayed"].as_u64(), slow["refused"].as_u64()), (Some(2), Some(1)));
}

#[test]
fn a_network_key_groups_its_clients() {
    let server = Server::builder()
        .config(
            "client_limits = [\"net\"]\n[[client_limit]]\nname = \"net\"\nkey = \"address/24\"\nrate = \"1r/m\"\nburst = 1\n",
        )
        .start();
    server.write_file("a", b"a");
    assert_eq!(get_from("127.0.1.2", &server, "/a").status, 200);
    assert_eq!(get_from("127.0.1.3", &server, "/a").status, 200);
    assert_eq!(get_from("127.0.1.200", &server, "/a").status, 429, "same /24");
    assert_eq!(get_from("127.0.2.2", &server, "/a").status, 200, "another /24");
}

#[test]
fn a_header_key_counts_by_its_value_and_leaves_requests_without_it_alone() {
    let server = Server::builder()
        .config(
            "client_limits = [\"key\"]\n[[client_limit]]\nname = \"key\"\nkey = \"header:X-Api-Key\"\nrate = \"1r/m\"\n",
        )
        .start();
    server.write_file("a", b"a");
    let with_key = |key: &str| {
        let raw = exchange_raw(
            server.addr,
            format!("GET /a HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        status_of(&raw)
    };
    assert_eq!((with_key("one"), with_key("one"), with_key("two")), (200, 429, 200));
    assert_eq!(server.get("/a").status, 200);
    assert_eq!(server.get("/a").status, 200);
}

#[test]
fn behind_a_balancer_the_address_it_names_is_limited() {
    let server = Server::builder()
        .config(
            "client_limits = [\"per-client\"]\n[proxy_protocol]\ntrusted = [\"127.0.0.0/8\"]\n\n\
             [[client_limit]]\nname = \"per-client\"\nrate = \"1r/m\"\nburst = 1\nconnections = 2\n",
        )
        .start();
    server.write_file("a", b"a");
    let via_balancer = |client: &str| {
        let mut s = connect_from("127.0.0.8", server.addr);
        s.write_all(
            format!("PROXY TCP4 {client} 192.0.2.1 40000 80\r\nGET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        read_response(&mut BufReader::new(s), false).status
    };
    assert_eq!([via_balancer("198.51.100.7"), via_balancer("198.51.100.7")], [200, 200]);
    assert_eq!(via_balancer("198.51.100.7"), 429);
    // Every connection came from the balancer's one address: only the named
    // client is held back.
    assert_eq!(via_balancer("198.51.100.8"), 200);
}

/// A connection that has been accepted and answered once, kept open.
fn open_connection(from: &str, server: &Server) -> BufReader<TcpStream> {
    let mut s = BufReader::new(connect_from(from, server.addr));
    s.get_mut().write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).status, 200);
    s
}

/// Whether a new connection from `from` is served or closed unanswered.
fn served(from: &str, server: &Server) -> bool {
    let mut s = connect_from(from, server.addr);
    // The request goes out at once: a connection is accepted when its first
    // bytes arrive (TCP_DEFER_ACCEPT).
    let _ = s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    !answer.is_empty()
}

#[test]
fn the_connection_limit_refuses_extra_connections_at_accept() {
    let server = Server::builder()
        .workers(2)
        .config("client_limits = [\"conns\"]\n[[client_limit]]\nname = \"conns\"\nconnections = 2\n")
        .start();
    server.write_file("a", b"a");
    let first = open_connection("127.0.0.6", &server);
    let _second = open_connection("127.0.0.6", &server);
    assert!(!served("127.0.0.6", &server), "a third connection is closed unanswered");
    assert!(served("127.0.0.7", &server), "another client is served");
    drop(first);
    // Once the server has seen the close, the place is free again.
    wait_for("the closed connection given back", || served("127.0.0.6", &server));
    let stats = server.stats();
    assert!(limit(&stats, "conns")["connections_refused"].as_u64().unwrap() >= 1);
}

#[test]
fn a_respawned_worker_resets_no_allowance_and_gives_back_its_connections() {
    let server = Server::builder()
        .config(
            "client_limits = [\"rate\", \"conns\"]\n\
             [[client_limit]]\nname = \"rate\"\nrate = \"1r/m\"\nburst = 2\n\n\
             [[client_limit]]\nname = \"conns\"\nconnections = 1\n",
        )
        .start();
    server.write_file("a", b"a");
    assert_eq!(statuses(&server, "127.0.0.9", "/a", 4), [200, 200, 200, 429]);
    let held = open_connection("127.0.0.10", &server);
    assert!(!served("127.0.0.10", &server));
    let old = server.worker_pids()[0];
    send_signal(old, libc::SIGKILL);
    server.wait_until("a new worker", |s| {
        s["workers"].as_array().unwrap().iter().all(|w| w["state"] == "running" && w["pid"] != old)
    });
    drop(held);
    assert_eq!(get_from("127.0.0.9", &server, "/a").status, 429, "the allowance survived the worker");
    // The killed worker's connection was given back by the master.
    assert!(served("127.0.0.10", &server));
}

#[test]
fn a_reload_keeps_the_state_of_limits_that_remain() {
    let config = |extra: &str| {
        format!(
            "listen = [\"127.0.0.1:0\"]\nroot = \"{{root}}\"\nworkers = 1\nclient_limits = [\"rate\"]\n\
             [[client_limit]]\nname = \"rate\"\nrate = \"1r/m\"\nburst = 1\n{extra}"
        )
    };
    let server = Server::builder().config_only(&config("")).start();
    server.write_file("a", b"a");
    assert_eq!(statuses(&server, "127.0.0.11", "/a", 3), [200, 200, 429]);
    // A new limit beside it: a new table region, the old state carried over.
    std::fs::write(
        server.config_path(),
        config("\n[[client_limit]]\nname = \"other\"\nrate = \"5r/s\"\n")
            .replace("{root}", server.root.to_str().unwrap()),
    )
    .unwrap();
    let generation = server.stats()["master"]["generation"].as_u64().unwrap();
    server.signal(libc::SIGHUP);
    server.wait_until("the reload", |s| s["master"]["generation"].as_u64() == Some(generation + 1));
    let stats = server.wait_until("the new worker", |s| {
        s["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "running").count() == 1
    });
    assert_eq!(stats["client_limits"].as_array().unwrap().len(), 2);
    // The listener kept its port across the reload.
    assert_eq!(get_from("127.0.0.11", &server, "/a").status, 429);
    assert_eq!(get_from("127.0.0.12", &server, "/a").status, 200);
}

#[test]
fn a_flood_of_fresh_addresses_evicts_keys_but_the_heavy_client_stays_limited() {
    let server = Server::builder()
        .workers(2)
        .config(
            "client_limits = [\"flood\"]\n[[client_limit]]\nname = \"flood\"\nrate = \"1r/m\"\nburst = 4\nmax_keys = 1024\n",
        )
        .start();
    server.write_file("a", b"a");
    assert_eq!(statuses(&server, "127.0.0.13", "/a", 5), [200; 5]);
    let flood = 100_000usize;
    let threads = 4;
    // The heavy client asks again after every 16 new addresses: a way of the
    // table's 1024 (128 buckets of 8) is taken from it only when 7 new keys
    // land in its bucket in between.
    let heavy_allowed = std::sync::atomic::AtomicUsize::new(0);
    let flood_ok = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (server, heavy_allowed, flood_ok) = (&server, &heavy_allowed, &flood_ok);
            scope.spawn(move || {
                for n in (t..flood).step_by(threads) {
                    let n = n + 65_536;
                    let from = format!("127.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, (n & 0xff).max(1));
                    if get_from(&from, server, "/a").status == 200 {
                        flood_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if n % 16 == 0 && get_from("127.0.0.13", server, "/a").status == 200 {
                        heavy_allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(heavy_allowed.into_inner(), 0, "the heavy client was refused throughout");
    let stats = server.wait_until("the keys sampled", |s| limit(s, "flood")["keys"].as_u64() > Some(0));
    let flood_limit = limit(&stats, "flood");
    assert!(flood_limit["evictions"].as_u64().unwrap() > 0);
    assert!(flood_limit["keys"].as_u64().unwrap() <= 1024);
    assert_eq!(flood_limit["max_keys"].as_u64(), Some(1024));
    // Addresses .0 end up counted as .1: a few repeat, so not all of them get through.
    assert!(flood_ok.into_inner() > flood * 9 / 10);
}

#[test]
fn refusals_over_http2_are_429_on_their_stream() {
    let server = Server::builder()
        .config(
            "client_limits = [\"rate\"]\n[http2]\nh2c = true\n\n\
             [[client_limit]]\nname = \"rate\"\nrate = \"1r/m\"\nburst = 1\n",
        )
        .start();
    server.write_file("a", b"a");
    // Three streams on one connection (nghttp; curl 7.88 sends nothing on a
    // reused prior-knowledge connection).
    let url = |n: usize| format!("http://{}/a?{n}", server.addr);
    let out = std::process::Command::new("nghttp")
        .args(["-nv", &url(1), &url(2), &url(3)])
        .output()
        .expect("nghttp");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut statuses: Vec<&str> =
        text.lines().filter_map(|l| l.split(":status: ").nth(1)).map(str::trim).collect();
    statuses.sort();
    assert_eq!(statuses, ["200", "200", "429"], "{text}");
    assert!(text.contains("retry-after: "), "{text}");
}

#[test]
fn check_refuses_limits_that_cannot_work() {
    let base = "[[client_limit]]\nname = \"l\"\n";
    assert_check_refuses(&format!("{base}rate = \"5\"\n"), "rate must be like");
    assert_check_refuses(&format!("{base}burst = 3\n"), "needs a rate, connections, or both");
    assert_check_refuses(
        &format!("client_limits = [\"l\"]\n{base}connections = 3\nkey = \"header:X-Key\"\n"),
        "the key must be an address",
    );
    assert_check_refuses(&format!("{base}connections = 3\n"), "name it in the top-level client_limits");
    assert_check_refuses(
        &format!("{base}rate = \"1r/s\"\n[[route]]\npath = \"/\"\nroot = \"{{root}}\"\nclient_limits = [\"nope\"]\n"),
        "no [[client_limit]] is named \"nope\"",
    );
    assert_check_refuses(&format!("{base}rate = \"1r/s\"\nkey = \"address/200\"\n"), "key must be");
    assert_check_refuses(&format!("{base}rate = \"1r/s\"\nstatus = 200\n"), "status must be");
}

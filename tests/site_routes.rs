//! What a route adds to a site, end to end: headers on static and proxied
//! responses, redirect routes of each kind, try_files fallbacks, custom
//! error pages, and configuration errors that point at the line.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};

fn get_with(server: &Server, request: &str) -> Response {
    let mut s = server.connect();
    s.write_all(request.as_bytes()).unwrap();
    read_response(&mut BufReader::new(s), request.starts_with("HEAD "))
}

/// An upstream that answers every request with a fixed response, then closes.
fn fixed_upstream(response: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = reader.get_mut().write_all(response.as_bytes());
        }
    });
    addr
}

#[test]
fn a_routes_headers_go_on_its_static_and_proxied_responses() {
    let upstream = fixed_upstream(
        "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nX-Upstream: yes\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    );
    let server = Server::builder()
        .config(&format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n\
             [[upstream]]\nname = \"down\"\nservers = [\"{}\"]\n\
             [[route]]\npath = \"/\"\nroot = \"{{root}}\"\n\
             headers = {{ Cache-Control = \"public, max-age=3600\", Strict-Transport-Security = \"max-age=63072000\" }}\n\
             [[route]]\npath = \"/api/\"\nupstream = \"app\"\n\
             headers = {{ Cache-Control = \"no-store\", X-Frame-Options = \"DENY\" }}\n\
             [[route]]\npath = \"/down/\"\nupstream = \"down\"\n\
             headers = {{ Cache-Control = \"no-store\", X-Frame-Options = \"DENY\" }}\n",
            closed_port()
        ))
        .start();
    server.write_file("index.html", b"<p>home</p>");

    let file = server.get("/index.html");
    assert_eq!(file.status, 200);
    assert_eq!(file.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(file.header("strict-transport-security"), Some("max-age=63072000"));
    let etag = file.header("etag").unwrap().to_string();
    let not_modified = get_with(
        &server,
        &format!("GET /index.html HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(server.get("/missing").header("strict-transport-security"), Some("max-age=63072000"));

    // The proxied response: the route's Cache-Control replaces the
    // upstream's, once; the upstream's other headers stay. tine's own 502
    // from a server that is down carries them too.
    let mut seen = (false, false);
    for path in ["/api/x", "/down/x"] {
        let r = server.get(path);
        let cache_controls =
            r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cache-control")).count();
        assert_eq!((r.header("cache-control"), cache_controls), (Some("no-store"), 1), "{r:?}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("strict-transport-security"), None, "another route's header");
        match r.status {
            200 => {
                assert_eq!((r.header("x-upstream"), &r.body[..]), (Some("yes"), &b"ok"[..]));
                seen.0 = true;
            }
            502 => seen.1 = true,
            other => panic!("{other}: {r:?}"),
        }
    }
    assert_eq!(seen, (true, true), "both the upstream's answer and tine's 502 were checked");
}

#[test]
fn redirect_routes_send_clients_on() {
    let server = Server::builder()
        .config(
            "[[route]]\npath = \"/\"\nroot = \"{root}\"\n\
             [[route]]\npath = \"/old/\"\nredirect_prefix = \"/new/\"\n\
             [[route]]\npath = \"/blog/\"\nredirect_prefix = \"https://blog.example.test\"\nredirect_status = 308\n\
             [[route]]\npath = \"/moved\"\nredirect = \"https://example.test/landing\"\nredirect_status = 302\n\
             [[route]]\npath = \"/form\"\nredirect = \"/thanks\"\nredirect_status = 303\n\
             [[route]]\npath = \"/tmp/\"\nredirect_prefix = \"/temporary/\"\nredirect_status = 307\n",
        )
        .start();
    let cases = [
        ("/old/a/b.html?x=1&y=2", 301, "/new/a/b.html?x=1&y=2"),
        ("/old/", 301, "/new/"),
        ("/old//a/./b", 301, "/new/a/b"),
        ("/blog/2024/post", 308, "https://blog.example.test/2024/post"),
        ("/blog/", 308, "https://blog.example.test/"),
        ("/moved?ignored=1", 302, "https://example.test/landing"),
        ("/form", 303, "/thanks"),
        ("/tmp/x", 307, "/temporary/x"),
    ];
    for (path, status, location) in cases {
        let r = server.get(path);
        assert_eq!((r.status, r.header("location")), (status, Some(location)), "{path}");
        assert!(
            String::from_utf8_lossy(&r.body).contains(&status.to_string()),
            "{path}: a small page says so"
        );
    }
    // Any method is redirected; 307 and 308 tell the client to keep it.
    let post = get_with(
        &server,
        "POST /tmp/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((post.status, post.header("location")), (307, Some("/temporary/upload")));
    let head = get_with(&server, "HEAD /old/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!((head.status, head.header("location"), head.body.len()), (301, Some("/new/x"), 0));
}

#[test]
fn try_files_falls_back_in_order() {
    let server = Server::builder()
        .config(
            "[[route]]\npath = \"/\"\nroot = \"{root}\"\n\
             try_files = [\"$uri\", \"$uri.html\", \"$uri/index.html\", \"/index.html\"]\n\
             [[route]]\npath = \"/strict/\"\nroot = \"{root}\"\ntry_files = [\"$uri\", \"/strict/missing.html\"]\n",
        )
        .start();
    std::fs::create_dir_all(server.root.join("docs")).unwrap();
    std::fs::create_dir_all(server.root.join("strict")).unwrap();
    server.write_file("index.html", b"app shell");
    server.write_file("about.html", b"about page");
    server.write_file("docs/index.html", b"docs index");
    server.write_file("app.js", b"code");
    server.write_file("strict/here.txt", b"here");

    let body = |path: &str| {
        let r = server.get(path);
        (r.status, String::from_utf8_lossy(&r.body).to_string())
    };
    assert_eq!(body("/app.js"), (200, "code".into()), "the file itself first");
    assert_eq!(body("/about"), (200, "about page".into()), "then $uri.html");
    assert_eq!(body("/docs"), (200, "docs index".into()), "a directory's index, no redirect");
    assert_eq!(body("/docs/"), (200, "docs index".into()));
    assert_eq!(body("/settings/profile"), (200, "app shell".into()), "the single-page app's shell last");
    assert_eq!(body("/"), (200, "app shell".into()));
    assert_eq!(server.get("/settings/profile").header("content-type"), Some("text/html"));
    assert_eq!(body("/strict/here.txt"), (200, "here".into()));
    assert_eq!(body("/strict/gone").0, 404, "nothing found: 404");
    // The fallback never serves outside the root.
    assert_eq!(server.get("/..%2f..%2fetc/passwd").status, 400);
}

#[test]
fn error_pages_replace_tines_own_with_the_same_status() {
    // Error pages are read when the configuration loads, from the route's
    // root (the top-level root for a proxy route).
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("errors")).unwrap();
    std::fs::create_dir(site.path().join("private")).unwrap();
    std::fs::write(site.path().join("errors/404.html"), b"<h1>no such page here</h1>").unwrap();
    std::fs::write(site.path().join("errors/403.json"), b"{\"error\":\"forbidden\"}").unwrap();
    std::fs::write(site.path().join("oops.html"), b"<h1>down</h1>").unwrap();
    let server = Server::builder()
        .config(&format!(
            "root = \"{1}\"\n[[upstream]]\nname = \"app\"\nservers = [\"{0}\"]\n\
             [[route]]\npath = \"/\"\nroot = \"{1}\"\n\
             error_pages = {{ 404 = \"/errors/404.html\", 403 = \"/errors/403.json\" }}\n\
             [[route]]\npath = \"/api/\"\nupstream = \"app\"\nerror_pages = {{ 502 = \"/oops.html\" }}\n",
            closed_port(),
            site.path().display()
        ))
        .start();
    // The proxy route's page is under the top-level root; changed on disk,
    // it is read again by a reload.
    assert_eq!(server.get("/api/x").body, b"<h1>down</h1>");
    std::fs::write(site.path().join("oops.html"), b"<h1>we are down</h1>").unwrap();
    server.signal(libc::SIGHUP);
    wait_for("the reloaded error page", || server.get("/api/x").body == b"<h1>we are down</h1>");

    let missing = server.get("/nowhere");
    assert_eq!((missing.status, missing.header("content-type")), (404, Some("text/html")));
    assert_eq!(missing.header("content-length"), Some("26"));
    let forbidden = server.get("/private/");
    assert_eq!(forbidden.status, 403, "a directory without an index");
    assert_eq!(forbidden.header("content-type"), Some("application/json"));
    assert_eq!(forbidden.body, b"{\"error\":\"forbidden\"}");
    let down = server.get("/api/x");
    assert_eq!((down.status, &down.body[..]), (502, &b"<h1>we are down</h1>"[..]));
    let head = get_with(&server, "HEAD /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!((head.status, head.header("content-length"), head.body.len()), (404, Some("26"), 0));
    // Statuses without a page keep tine's.
    let not_allowed = get_with(&server, "DELETE /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(not_allowed.status, 405);
    assert!(String::from_utf8_lossy(&not_allowed.body).contains("405 Method Not Allowed"));
}

fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[test]
fn route_keys_are_checked_where_they_are_written() {
    let bad = [
        (
            "[[route]]\nroot = \"{root}\"\nheaders = { Content-Length = \"5\" }\n",
            "Content-Length is written by tine",
        ),
        ("[[route]]\nroot = \"{root}\"\nheaders = { \"X Bad\" = \"1\" }\n", "is not a header name"),
        ("[[route]]\nroot = \"{root}\"\nheaders = { X-A = \"a\\r\\nInjected: 1\" }\n", "visible ASCII"),
        ("[[route]]\npath = \"/a/\"\nredirect = \"/b/\"\nredirect_status = 200\n", "redirect_status 200"),
        ("[[route]]\npath = \"/a/\"\nredirect = \"//evil.test/\"\n", "must be a path"),
        ("[[route]]\npath = \"/a/\"\nredirect = \"/b\"\nroot = \"{root}\"\n", "exactly one of"),
        ("[[route]]\nroot = \"{root}\"\nredirect_status = 301\n", "redirect_status applies"),
        ("[[route]]\nroot = \"{root}\"\ntry_files = [\"$uri\", \"../x\"]\n", "must not contain .."),
        ("[[route]]\nroot = \"{root}\"\ntry_files = [\"index.html\"]\n", "must start with $uri or /"),
        ("[[route]]\nroot = \"{root}\"\ntry_files = []\n", "at least one"),
        ("[[route]]\nroot = \"{root}\"\nerror_pages = { 404 = \"/none.html\" }\n", "none.html"),
        ("[[route]]\nroot = \"{root}\"\nerror_pages = { 200 = \"/x.html\" }\n", "not a status code"),
        ("[[route]]\nroot = \"{root}\"\nerror_pages = { 404 = \"/../x.html\" }\n", "under the root"),
    ];
    for (toml, message) in bad {
        assert_check_refuses(toml, message);
    }
}

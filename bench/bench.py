#!/usr/bin/env python3
"""Side-by-side load benchmark of tine and nginx on loopback.

    python3 bench/bench.py [--duration 6] [--connections 64] [--many 10000] [--workers 1 2] [--json FILE]

For each scenario (1 KiB, 64 KiB and 1 MiB files over 64 keep-alive
connections; 1 KiB over 10,000 connections) it runs wrk against tine and nginx
alternately, with equivalent settings: same worker count and CPU pinning,
sendfile, tcp_nopush, tcp_nodelay, keep-alive, no access log, and for nginx
open_file_cache (tine keeps open files in its own cache). With one worker,
the worker is pinned to the first CPU and wrk to another. It measures on the
server side the CPU time of all the server's processes (from
/proc/PID/schedstat) and their resident memory, and prints a table with the
tine/nginx ratio of each figure.

Builds tine in release mode; installs nginx and wrk from Debian's packages if
they are missing (as root). Only 127.0.0.1 is targeted; every run is bounded.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINE = os.path.join(ROOT, "target", "release", "tine")
SCENARIOS = [  # name, file, size, connections option
    ("1KiB", "1k.bin", 1024, "connections"),
    ("64KiB", "64k.bin", 64 * 1024, "connections"),
    ("1MiB", "1m.bin", 1024 * 1024, "connections"),
    ("1KiB-10k-conns", "1k.bin", 1024, "many"),
    # One request per connection (wrk sends Connection: close): the cost of
    # connection churn, accept to close.
    ("1KiB-close", "1k.bin", 1024, "connections"),
]
# Proxy scenarios: the server under test proxies every request, over a
# keep-alive pool (1024 idle connections kept by each server, more than any
# scenario has requests in flight), to one backend (nginx serving the files, on the CPU that is
# not the proxy's); only the proxy's CPU is measured.
PROXY_SCENARIOS = [
    ("proxy-1KiB", "1k.bin", 1024, "connections"),
    ("proxy-64KiB", "64k.bin", 64 * 1024, "connections"),
]
# HTTPS scenarios, both servers on the same ECDSA P-256 certificate with TLS
# 1.2 and 1.3 and session tickets. Keep-alive ones run wrk over https; the
# handshake ones run `openssl s_time` (one GET of 1 KiB per connection, so
# that TLS 1.3 tickets are read): `-new` never offers a session (every
# handshake is full), `-reuse` always offers the first one it got (every
# handshake after the first resumes). Their figure is CPU per handshake.
TLS_SCENARIOS = [
    ("https-1KiB", "1k.bin", 1024, "connections"),
    ("https-64KiB", "64k.bin", 64 * 1024, "connections"),
    ("full-tls1.3", "1k.bin", 1024, ("-new", "-tls1_3")),
    ("full-tls1.2", "1k.bin", 1024, ("-new", "-tls1_2")),
    ("resumed-tls1.3", "1k.bin", 1024, ("-reuse", "-tls1_3")),
    ("resumed-tls1.2", "1k.bin", 1024, ("-reuse", "-tls1_2")),
]
# Compressed static files: a 100 KiB JavaScript file over keep-alive, the
# client sending Accept-Encoding. Both servers have app.js.gz beside it
# (gzip -9); nginx serves it with gzip_static (gzip on for the rest), tine
# with its precompressed siblings. To "br, gzip" tine answers brotli, made
# once on the first request and kept (nginx has no brotli in Debian);
# to "gzip" alone both send the same sibling's bytes.
COMPRESSED_SCENARIOS = [
    ("compressed-100KiB", "app.js", 100 * 1024, "connections"),
    ("gzip-100KiB", "app.js", 100 * 1024, "connections"),
]
ACCEPT_ENCODING = {"compressed-100KiB": "br, gzip", "gzip-100KiB": "gzip"}
# HTTP/2 over TLS (ALPN h2; both servers on the same ECDSA certificate as
# the HTTPS scenarios, nginx with `http2` on its listener), loaded by h2load
# with 10 streams per connection. h2-proxy-1KiB proxies to the HTTP/1.1
# backend as the proxy scenarios do. h2-idle holds that many idle HTTP/2
# connections (preface and SETTINGS exchanged) and reports the server's
# memory per connection.
H2_SCENARIOS = [
    ("h2-1KiB", "1k.bin", 1024, "connections"),
    ("h2-64KiB", "64k.bin", 64 * 1024, "connections"),
    ("h2-proxy-1KiB", "1k.bin", 1024, "connections"),
    ("h2-idle", "1k.bin", 1024, ("idle", 1000)),
]
H2_STREAMS = 10
# Per-client limits, 1 KiB over keep-alive from one address. limited-1KiB:
# a limit on every request that never triggers (tine: a [[client_limit]] of
# 1,000,000 r/s with that burst; nginx: limit_req at the same rate, nodelay),
# to set beside 1KiB without one. refused-1KiB: a limit of 1 r/m, so that all
# but the first request are refused with 429 (nginx: limit_req_status 429,
# its refusals logged at info, below its error_log level, as tine logs at
# most ten a second).
LIMIT_SCENARIOS = [
    ("limited-1KiB", "1k.bin", 1024, "connections"),
    ("refused-1KiB", "1k.bin", 1024, "connections"),
]
LIMIT_RATES = {"limited-1KiB": (1_000_000, "s", 1_000_000), "refused-1KiB": (1, "m", 0)}
# Upstreams over TLS and gRPC. proxy-https-1KiB: wrk over plain HTTP to the
# proxy, which proxies to an nginx backend over HTTPS (a certificate for
# bench.test from a CA both proxies verify against; keep-alive pools; nginx with
# proxy_ssl_session_reuse on). grpc-unary: h2load over h2c with a 5-byte
# gRPC message and te: trailers, POST /t.T/Unary, to the proxy (tine: an h2c
# upstream; nginx: grpc_pass with a keep-alive upstream), to the grpcio
# server of tests/grpc_peer.py on the other CPU, which echoes it with its
# trailers.
UPSTREAM_SCENARIOS = [
    ("proxy-https-1KiB", "1k.bin", 1024, "connections"),
    ("grpc-unary", "t.T/Unary", 5, "connections"),
]
GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"
ALL_SCENARIOS = (SCENARIOS + PROXY_SCENARIOS + TLS_SCENARIOS + COMPRESSED_SCENARIOS + H2_SCENARIOS + LIMIT_SCENARIOS
                 + UPSTREAM_SCENARIOS)


def ensure_tools():
    missing = [p for t, p in [("wrk", "wrk"), ("nginx", "nginx-light"), ("h2load", "nghttp2-client")]
               if shutil.which(t) is None and not os.path.exists("/usr/sbin/" + t)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing packages {', '.join(missing)}: install them (Debian: apt-get install {' '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq"] + missing, check=True, env=env)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, limit=20):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def cpu_ns(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return total


def rss_bytes(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def make_backend_certificate(work):
    """A CA and a leaf for bench.test signed by it, for an HTTPS backend that
    the proxies verify (WebPKI takes no self-signed leaf as its own anchor)."""
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
        "-subj", "/CN=bench CA", "-keyout", f"{work}/ca.key", "-out", f"{work}/ca.pem")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=bench.test",
        "-keyout", f"{work}/backend.key", "-out", f"{work}/backend.csr")
    with open(f"{work}/backend.ext", "w") as f:
        f.write("subjectAltName=DNS:bench.test\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", f"{work}/backend.csr", "-CA", f"{work}/ca.pem", "-CAkey", f"{work}/ca.key",
        "-CAcreateserial", "-days", "30", "-extfile", f"{work}/backend.ext", "-out", f"{work}/backend.pem")
    return f"{work}/backend.pem", f"{work}/backend.key"


def make_certificate(work):
    """A self-signed ECDSA P-256 certificate both servers use."""
    cert, key = f"{work}/cert.pem", f"{work}/key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "30", "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


class Server:
    def __init__(self, kind, work, workers, port, backend=None, cpu_mask=None, tls=None, http2=False, limit=None,
                 upstream="http"):
        """With `tls` (cert, key), `port` is an HTTPS port (plain HTTP moves to another); with
        `limit` (count, unit, burst), every request is held to that rate per client address.
        `upstream` is how the backend is spoken to: "http", "https" (verified against the
        bench certificate) or "grpc" (h2c; the listener then speaks h2c too)."""
        self.kind, self.port, self.work = kind, port, work
        http_port = free_port() if tls else port
        if kind == "tine":
            cmd = [TINE, "serve", "--root", f"{work}/www", "--listen", f"127.0.0.1:{http_port}",
                   "--workers", str(workers), "--stats-path", f"{work}/tine.stats", "--pid-file", f"{work}/tine.pid"]
            config = ""
            if tls:
                config += f'tls_listen = ["127.0.0.1:{port}"]\n[[certificate]]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n'
            if limit:
                config = (f'client_limits = ["bench"]\n{config}[[client_limit]]\nname = "bench"\n'
                          f'rate = "{limit[0]}r/{limit[1]}"\nburst = {limit[2]}\n')
            if backend:
                config += f'[[upstream]]\nname = "backend"\nservers = ["127.0.0.1:{backend}"]\nkeepalive = 1024\n'
                if upstream == "https":
                    config += f'tls = true\ntls_server_name = "bench.test"\ntls_ca = "{work}/ca.pem"\n'
                if upstream == "grpc":
                    config = '[http2]\nh2c = true\n' + config + 'protocol = "h2c"\n'
                config += '[[route]]\npath = "/"\nupstream = "backend"\n'
            if config:
                conf = f"{work}/tine.toml"
                with open(conf, "w") as f:
                    f.write(config)
                cmd += ["--config", conf]
        else:
            affinity = cpu_mask or " ".join("0" * (workers - 1 - i) + "1" + "0" * i for i in range(workers))
            name = f"nginx-{port}"
            # The same work as tine's proxy: keep-alive upstream connections,
            # the client's Host, and the X-Forwarded-* headers tine adds.
            scheme = "https" if upstream == "https" else "http"
            reuse = (f"proxy_ssl_session_reuse on; proxy_ssl_verify on; proxy_ssl_name bench.test; "
                     f"proxy_ssl_server_name on; proxy_ssl_trusted_certificate {work}/ca.pem; "
                     if upstream == "https" else "")
            location = (f"location / {{ proxy_pass {scheme}://backend; {reuse}proxy_http_version 1.1; "
                        f"proxy_set_header Connection \"\"; proxy_set_header Host $host; "
                        f"proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
                        f"proxy_set_header X-Forwarded-Proto $scheme; "
                        f"proxy_set_header X-Forwarded-Host $host; }}" if backend else "")
            if upstream == "grpc":
                location = ("location / { grpc_pass grpc://backend; grpc_set_header X-Forwarded-For "
                            "$proxy_add_x_forwarded_for; }")
            h2c = " http2" if upstream == "grpc" else ""
            upstream = f"upstream backend {{ server 127.0.0.1:{backend}; keepalive 1024; }}" if backend else ""
            # nginx 1.22 leaves TLS 1.3 out by default: both versions, and
            # tickets (its default), for a fair anchor.
            ssl = (f"listen 127.0.0.1:{port} ssl{' http2' if http2 else ''} reuseport backlog=4096 deferred; "
                   f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; "
                   f"ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets on;" if tls else "")
            zone = (f"limit_req_zone $binary_remote_addr zone=bench:10m rate={limit[0]}r/{limit[1]};"
                    if limit else "")
            # nginx takes no burst=0: leaving burst out means none.
            burst = f" burst={limit[2]} nodelay" if limit and limit[2] else ""
            limit_req = (f"limit_req zone=bench{burst}; limit_req_status 429; "
                         f"limit_req_log_level info;" if limit else "")
            conf = f"{work}/{name}.conf"
            with open(conf, "w") as f:
                f.write(f"""
user root;
worker_processes {workers};
worker_cpu_affinity {affinity};
worker_rlimit_nofile 65536;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 60s; keepalive_requests 100000000;
    open_file_cache max=16384 inactive=60s; open_file_cache_valid 5s; open_file_cache_errors on;
    default_type application/octet-stream;
    types {{ application/javascript js; }}
    gzip_static on; gzip on; gzip_vary on; gzip_comp_level 6; gzip_types application/javascript;
    {upstream}
    {zone}
    server {{ listen 127.0.0.1:{http_port}{h2c} reuseport backlog=4096 deferred; {ssl} root {work}/www; {limit_req} {location} }}
}}
""")
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            cmd = [nginx, "-c", conf, "-p", work, "-g", "daemon off;"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=raise_nofile)
        wait_port(port)
        end = time.time() + 10
        while len(children(self.proc.pid)) < workers and time.time() < end:
            time.sleep(0.05)
        time.sleep(0.3)  # let workers finish starting; no measurement runs yet

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM if self.kind == "tine" else signal.SIGQUIT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class GrpcBackend:
    """The grpcio server of tests/grpc_peer.py on CPU 1 (the proxy has CPU 0)."""

    def __init__(self, work):
        cmd = ["taskset", "-c", "1" if os.cpu_count() > 1 else "0", "python3", f"{ROOT}/tests/grpc_peer.py",
               "server", f"{work}/grpc-events"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.port = int(self.proc.stdout.readline())

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()


def wrk(port, path, connections, seconds, threads, cpus, batch=False, close=False, https=False, headers=()):
    scheme = "https" if https else "http"
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
           "--timeout", "10s", f"{scheme}://127.0.0.1:{port}/{path}"]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    for h in headers:
        cmd[1:1] = ["-H", h]
    if cpus:
        cmd = ["taskset", "-c", cpus] + cmd
    if batch:
        cmd = ["chrt", "--batch", "0"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                         preexec_fn=raise_nofile).stdout
    return parse_wrk(out)


def to_us(text):
    """wrk's durations: 850.00us, 1.20ms, 2.00s, 1.50m, 1.00h. Anything else
    (a run with no completed request prints -nan) counts as 0, shown as such."""
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", text)
    if not m:
        print(f"  (could not read wrk latency {text!r})", file=sys.stderr)
        return 0.0
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7, "h": 3.6e9}[m.group(2)]


def parse_wrk(out):
    r = {"requests": 0, "errors": 0, "rps": 0.0, "mbit": 0.0, "mean_us": 0.0, "p99_us": 0.0}
    m = re.search(r"(\d+) requests in ([\d.]+)(s|m)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    if m:
        r["mbit"] = float(m.group(1)) * {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}[m.group(2)] * 8 / 1e6
    m = re.search(r"Latency\s+(\S+)", out)
    r["mean_us"] = to_us(m.group(1)) if m else 0.0
    m = re.search(r"99%\s+(\S+)", out)
    r["p99_us"] = to_us(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] = sum(map(int, m.groups()))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["errors"] += int(m.group(1))
    return r


def s_time(port, path, options, seconds, cpus, clients=2):
    """Handshakes by `clients` openssl s_time processes at once; returns the
    connections (each one handshake) they completed."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-www", f"/{path}", "-time", str(seconds)]
    cmd += list(options)
    if cpus:
        cmd = ["taskset", "-c", cpus] + cmd
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(clients)]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        m = re.search(r"(\d+) connections in [\d.]+s;", out)
        total += int(m.group(1)) if m else 0
    return total


def measure_handshakes(server, scenario, args, workers):
    name, path, _, options = scenario
    cpus = "1" if workers == 1 and os.cpu_count() > 1 else None
    s_time(server.port, path, options, 1, cpus)  # warm up
    pids = server.pids()
    cpu0 = cpu_ns(pids)
    start = time.time()
    handshakes = s_time(server.port, path, options, args.duration, cpus)
    cpu1 = cpu_ns(pids)
    elapsed = time.time() - start
    return {"requests": handshakes, "errors": 0, "rps": handshakes / elapsed, "mbit": 0.0, "mean_us": 0.0,
            "p99_us": 0.0, "cpu_us_per_req": (cpu1 - cpu0) / 1000 / handshakes if handshakes else 0.0,
            "rss_bytes": rss_bytes(pids), "per_conn_bytes": 0, "connections": 2}


def h2load(port, path, connections, seconds, threads, cpus, batch=False, extra=(), scheme="https"):
    cmd = ["h2load", "-D", str(seconds), "-c", str(connections), "-m", str(H2_STREAMS), "-t", str(threads),
           *extra, f"{scheme}://127.0.0.1:{port}/{path}"]
    if cpus:
        cmd = ["taskset", "-c", cpus] + cmd
    if batch:
        cmd = ["chrt", "--batch", "0"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                         preexec_fn=raise_nofile).stdout
    r = {"requests": 0, "errors": 0, "rps": 0.0, "mbit": 0.0, "mean_us": 0.0, "p99_us": 0.0}
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if m:
        r["requests"] = int(m.group(1))
        r["errors"] = int(m.group(2)) + int(m.group(3))
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s, ([\d.]+)(B|KB|MB|GB)/s", out)
    if m:
        r["rps"] = float(m.group(1))
        r["mbit"] = float(m.group(2)) * {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}[m.group(3)] * 8 / 1e6
    m = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if m:
        r["mean_us"] = to_us(m.group(1))
    m = re.search(r"status codes: (\d+) 2xx", out)
    if m and r["requests"]:
        r["errors"] += r["requests"] - int(m.group(1))
    return r


def measure_idle_h2(server, count):
    """Opens `count` HTTP/2 connections (TLS, ALPN h2, preface and SETTINGS
    both ways) and leaves them idle: the server's memory per connection."""
    import socket
    import ssl
    pids = server.pids()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    before = rss_bytes(pids)
    held = []
    try:
        for _ in range(count):
            s = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port)))
            if s.selected_alpn_protocol() != "h2":
                sys.exit("the server did not agree to h2")
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            s.recv(4096)
            held.append(s)
        time.sleep(1)
        after = rss_bytes(pids)
    finally:
        for s in held:
            s.close()
    return {"requests": count, "errors": 0, "rps": 0.0, "mbit": 0.0, "mean_us": 0.0, "p99_us": 0.0,
            "cpu_us_per_req": 0.0, "rss_bytes": after, "per_conn_bytes": max(0, after - before) / count,
            "connections": count}


def measure(server, scenario, args, workers):
    name, path, size, conn_opt = scenario
    if isinstance(conn_opt, tuple) and conn_opt[0] == "idle":
        return measure_idle_h2(server, conn_opt[1])
    if isinstance(conn_opt, tuple):
        return measure_handshakes(server, scenario, args, workers)
    if name.startswith("h2-") or name == "grpc-unary":
        return measure_h2(server, scenario, args, workers, server.work)
    connections = getattr(args, conn_opt)
    https = name.startswith("https-")
    pinned = workers == 1
    cpus = "1" if pinned and os.cpu_count() > 1 else None
    threads = 1 if pinned else 2
    close = name.endswith("-close")
    headers = [f"Accept-Encoding: {ACCEPT_ENCODING[name]}"] if name in ACCEPT_ENCODING else []
    if name in ACCEPT_ENCODING:
        r_encoding = check_encoding(server.port, path, ACCEPT_ENCODING[name])
    # Warm up: open files, caches, connection pools of both sides.
    wrk(server.port, path, min(connections, 64), 1, threads, cpus, args.batch_load, close, https, headers)
    pids = server.pids()
    idle_rss = rss_bytes(pids)
    mid = {}

    def sample_memory():
        time.sleep(args.duration / 2)
        mid["rss"] = rss_bytes(pids)
    sampler = threading.Thread(target=sample_memory)
    cpu0 = cpu_ns(pids)
    sampler.start()
    r = wrk(server.port, path, connections, args.duration, threads, cpus, args.batch_load, close, https, headers)
    cpu1 = cpu_ns(pids)
    sampler.join()
    r["cpu_us_per_req"] = (cpu1 - cpu0) / 1000 / r["requests"] if r["requests"] else 0.0
    r["rss_bytes"] = mid.get("rss", 0)
    r["per_conn_bytes"] = max(0, mid.get("rss", 0) - idle_rss) / connections
    r["connections"] = connections
    if name in ACCEPT_ENCODING:
        r["content_encoding"], r["body_bytes"] = r_encoding
    return r


def measure_h2(server, scenario, args, workers, work=None):
    name, path, _, conn_opt = scenario
    connections = getattr(args, conn_opt)
    pinned = workers == 1
    cpus = "1" if pinned and os.cpu_count() > 1 else None
    threads = 1 if pinned else 2
    extra, scheme = (), "https"
    if name == "grpc-unary":
        body = f"{work}/grpc-message"
        with open(body, "wb") as f:
            f.write(GRPC_MESSAGE)
        extra = ("-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers")
        scheme = "http"
    h2load(server.port, path, min(connections, 16), 1, threads, cpus, args.batch_load, extra, scheme)  # warm up
    pids = server.pids()
    cpu0 = cpu_ns(pids)
    r = h2load(server.port, path, connections, args.duration, threads, cpus, args.batch_load, extra, scheme)
    cpu1 = cpu_ns(pids)
    r["cpu_us_per_req"] = (cpu1 - cpu0) / 1000 / r["requests"] if r["requests"] else 0.0
    r["rss_bytes"] = rss_bytes(pids)
    r["per_conn_bytes"] = 0
    r["connections"] = connections
    return r


def check_encoding(port, path, accept):
    """What the server sends to this Accept-Encoding: a compressed scenario
    that got the file as it is would measure something else."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"/{path}", headers={"Accept-Encoding": accept})
    resp = conn.getresponse()
    body = resp.read()
    encoding = resp.getheader("Content-Encoding")
    conn.close()
    if resp.status != 200 or not encoding:
        sys.exit(f"/{path} with Accept-Encoding {accept!r}: status {resp.status}, Content-Encoding {encoding!r}")
    return encoding, len(body)


def write_script(path, size):
    """JavaScript-like text that compresses as real bundles do (about 4:1),
    with its gzip -9 sibling."""
    import gzip
    import random
    rng = random.Random(1)
    words = ["function", "return", "const", "let", "if", "else", "for", "while", "this", "new", "await",
             "async", "export", "import", "from", "null", "undefined", "true", "false", "Object", "Array"]
    text = []
    n = 0
    while n < size:
        line = (f"{rng.choice(words)} v{rng.randrange(5000)} = {rng.choice(words)}"
                f"(a{rng.randrange(100)}, {rng.randrange(1 << 16)}, \"{rng.choice(words)}\");\n")
        text.append(line)
        n += len(line)
    data = "".join(text).encode()[:size]
    with open(path, "wb") as f:
        f.write(data)
    with open(path + ".gz", "wb") as f:
        f.write(gzip.compress(data, 9))
    stat = os.stat(path)
    os.utime(path + ".gz", ns=(stat.st_atime_ns, stat.st_mtime_ns))


def main():
    ap = argparse.ArgumentParser(description="tine vs nginx on loopback")
    ap.add_argument("--duration", type=int, default=6, help="seconds per measured run (default 6)")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    ap.add_argument("--many", type=int, default=10000, help="connections of the high-concurrency scenario")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run (default 1 2)")
    ap.add_argument("--scenarios", nargs="+", default=[s[0] for s in ALL_SCENARIOS])
    ap.add_argument("--servers", nargs="+", default=["tine", "nginx"])
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every scenario (tine and nginx alternate in each); the table shows medians")
    ap.add_argument("--batch-load", action="store_true",
                    help="run wrk and the proxy scenarios' backend with SCHED_BATCH (no wakeup preemption "
                         "between the two on their shared CPU); see bench/README.md")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "tine"], cwd=ROOT, check=True)
    raise_nofile()
    results = []
    with tempfile.TemporaryDirectory(prefix="tine-bench-") as work:
        os.chmod(work, 0o755)
        os.mkdir(f"{work}/www")
        cert = make_certificate(work)
        for _, path, size, _ in SCENARIOS:
            with open(f"{work}/www/{path}", "wb") as f:
                f.write(os.urandom(size))
        write_script(f"{work}/www/app.js", 100 * 1024)
        for round_ in range(args.repeat):
            for workers in args.workers:
                for scenario in [s for s in ALL_SCENARIOS if s[0] in args.scenarios]:
                    upstream = {"proxy-https-1KiB": "https", "grpc-unary": "grpc"}.get(scenario[0], "http")
                    proxy = "proxy-" in scenario[0] or upstream == "grpc"
                    if proxy and workers != 1:
                        continue  # the proxy comparison runs with one pinned worker
                    if upstream == "grpc":
                        backend = GrpcBackend(work)
                    elif proxy:
                        backend = Server("nginx", work, 1, free_port(), cpu_mask="10",
                                         tls=make_backend_certificate(work) if upstream == "https" else None)
                    else:
                        backend = None
                    if backend and args.batch_load:
                        for pid in backend.pids():
                            subprocess.run(["chrt", "--batch", "--pid", "0", str(pid)], check=True)
                    for kind in args.servers:  # alternate servers within each scenario
                        http2 = scenario in H2_SCENARIOS
                        tls = cert if scenario in TLS_SCENARIOS or http2 else None
                        server = Server(kind, work, workers, free_port(), backend=backend.port if backend else None,
                                        tls=tls, http2=http2, limit=LIMIT_RATES.get(scenario[0]), upstream=upstream)
                        try:
                            r = measure(server, scenario, args, workers)
                        finally:
                            server.stop()
                        r.update(server=kind, scenario=scenario[0], workers=workers, round=round_)
                        results.append(r)
                        print(f"  round {round_ + 1} {kind:<6} {workers} worker(s) {scenario[0]:<15} "
                              f"{r['rps']:>10.0f} req/s {r['cpu_us_per_req']:>7.2f} us/req", file=sys.stderr)
                    if backend:
                        backend.stop()
    medians = median_results(results)
    report(medians, args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "duration_s": args.duration, "repeat": args.repeat,
                       "medians": medians, "runs": results}, f, indent=2)


def median_results(results):
    """One row per (workers, scenario, server): the median of each figure."""
    groups = {}
    for r in results:
        groups.setdefault((r["workers"], r["scenario"], r["server"]), []).append(r)
    out = []
    for (workers, scenario, server), runs in groups.items():
        row = {"workers": workers, "scenario": scenario, "server": server, "runs": len(runs)}
        for key, value in runs[0].items():
            if isinstance(value, (int, float)) and key not in ("workers", "round"):
                values = sorted(r[key] for r in runs)
                row[key] = values[len(values) // 2]
        out.append(row)
    return out


def machine():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    nginx = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, {nginx}"


def report(results, args, runs=()):
    rounds = f", median of {args.repeat} rounds" if args.repeat > 1 else ""
    if args.batch_load:
        rounds += "; wrk and the backend under SCHED_BATCH"
    print(f"\n{machine()}; wrk on loopback, {args.duration} s per run{rounds}")
    cols = ["req/s", "Mbit/s", "mean", "p99", "CPU us/req", "RSS MiB", "B/conn", "errors"]
    print(f"\n{'scenario':<16}{'workers':>8} {'server':<8}" + "".join(f"{c:>11}" for c in cols))
    for workers in args.workers:
        for name in [s[0] for s in ALL_SCENARIOS if s[0] in args.scenarios]:
            rows = {r["server"]: r for r in results if r["scenario"] == name and r["workers"] == workers}
            for kind in args.servers:
                r = rows.get(kind)
                if not r:
                    continue
                vals = [f"{r['rps']:.0f}", f"{r['mbit']:.0f}", f"{r['mean_us']:.0f}us", f"{r['p99_us']:.0f}us",
                        f"{r['cpu_us_per_req']:.2f}", f"{r['rss_bytes'] / 2**20:.1f}",
                        f"{r['per_conn_bytes']:.0f}" if "10k" in name or "idle" in name else "-", str(r["errors"])]
                print(f"{name:<16}{workers:>8} {kind:<8}" + "".join(f"{v:>11}" for v in vals))
            if "tine" in rows and "nginx" in rows:
                t, n = rows["tine"], rows["nginx"]
                ratio = lambda a, b: f"{a / b:.2f}x" if b else "-"
                vals = [ratio(t["rps"], n["rps"]), ratio(t["mbit"], n["mbit"]), ratio(t["mean_us"], n["mean_us"]),
                        ratio(t["p99_us"], n["p99_us"]), ratio(t["cpu_us_per_req"], n["cpu_us_per_req"]),
                        ratio(t["rss_bytes"], n["rss_bytes"]),
                        ratio(t["per_conn_bytes"], n["per_conn_bytes"]) if "10k" in name or "idle" in name else "-",
                        ""]
                print(f"{'':<16}{'':>8} {'ratio':<8}" + "".join(f"{v:>11}" for v in vals))
                per_round = sorted(
                    a["rps"] / b["rps"]
                    for a in runs for b in runs
                    if a["server"] == "tine" and b["server"] == "nginx" and a["scenario"] == name
                    and b["scenario"] == name and a["workers"] == workers == b["workers"]
                    and a["round"] == b["round"] and b["rps"]
                )
                if len(per_round) > 1:
                    print(f"{'':<16}{'':>8} {'':<8}   req/s ratio by round: "
                          + ", ".join(f"{x:.2f}x" for x in per_round))
            plain = {r["server"]: r for r in results if r["scenario"] == "1KiB" and r["workers"] == workers}
            if name == "limited-1KiB":
                for kind in args.servers:
                    if kind in rows and kind in plain and plain[kind]["cpu_us_per_req"]:
                        print(f"{'':<16}{'':>8} {kind:<8}   CPU per request with the limit / without (1KiB): "
                              f"{rows[kind]['cpu_us_per_req'] / plain[kind]['cpu_us_per_req']:.3f}x")


if __name__ == "__main__":
    main()

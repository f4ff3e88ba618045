#!/usr/bin/env python3
"""A chaos soak: mixed hostile load and process faults, then an account of
what was lost.

    python3 bench/chaos.py --seconds 120            # tine, then nginx
    python3 bench/chaos.py --seconds 600 --json out.json
    python3 bench/chaos.py --servers tine --seed 7

For --seconds, client threads run a mix against the server on loopback:
keep-alive, one-request and pipelined static requests, proxied requests to
an upstream group, slow readers, slowloris heads, clients that vanish in the
middle of a request or of a response. The upstreams are two processes of
this script: proxied requests ask them to answer, stall, reset, send
garbage, truncate, drip or chunk. Meanwhile faults come every one to three
seconds: HUP (reload), USR1 (reopen logs), SIGKILL of a worker, SIGKILL of an
upstream (restarted a moment later), and one USR2 binary upgrade.

Every response is checked: a static file must arrive whole and be the file
asked for; a proxied answer must carry the request id of the request it
answers (an answer that reaches the wrong client is the worst bug a front
end can have). Afterwards the script waits for the server to settle and
compares with the baseline taken before the load: the master's and every
worker's open descriptors and resident memory, and (tine) the statistics
gauges. It exits 1 when, for tine, any response was wrong, any client was
left hanging, an fd count or gauge did not come back, a worker's memory
stayed above its baseline (+50 %, +4 MiB), or the error log shows a panic.
nginx runs the same load and faults for the side-by-side counts (its
descriptors and memory are reported, not judged).

Needs root for nothing; nginx is taken from PATH or /usr/sbin (bench.py
installs it).
"""

import argparse
import collections
import json
import os
import random
import re
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
FILES = {"1k.txt": 1024, "64k.bin": 64 * 1024, "1m.bin": 1024 * 1024}
CLIENT_PATIENCE = 20.0  # a response not complete in this long is a hang
FAULTS = ("hup", "usr1", "kill_worker", "kill_upstream")
# What must be back exactly where it started once the load is over.
SETTLED = ("master fds", "worker sockets", "worker other fds", "active", "upstream open", "upstream active")

# ----------------------------------------------------------------------------
# The upstream: one process per server, behaviour chosen by the request path.

UPSTREAM_CODE = r'''
import os, random, socket, struct, sys, threading, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(1024)
def head_of(c, buf):
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d: return None, b""
        buf += d
    h, rest = buf.split(b"\r\n\r\n", 1)
    return h, rest
def serve(c):
    buf = b""
    try:
        while True:
            h, buf = head_of(c, buf)
            if h is None: return
            lines = h.split(b"\r\n"); path = lines[0].split(b" ")[1].decode()
            rid = b""
            length = 0
            for l in lines[1:]:
                k, _, v = l.partition(b":")
                if k.strip().lower() == b"x-req-id": rid = v.strip()
                if k.strip().lower() == b"content-length": length = int(v)
            while len(buf) < length:
                d = c.recv(65536)
                if not d: return
                buf += d
            buf = buf[length:]
            kind = path.split("/")[2] if path.count("/") >= 2 else "ok"
            if kind == "ok":
                n = int(path.split("/")[3]) if path.count("/") >= 3 else 100
                body = (rid + b":" + b"x" * n)[:max(n, len(rid) + 1)]
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            elif kind == "chunked":
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n5\r\nhello\r\n0\r\n\r\n" % (len(rid), rid))
            elif kind == "stall":
                time.sleep(30); return
            elif kind == "reset":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); return
            elif kind == "garbage":
                c.sendall(os.urandom(random.randint(1, 3000))); return
            elif kind == "truncated":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"t" * 5000); return
            elif kind == "slow":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
                for _ in range(20): time.sleep(0.05); c.sendall(b"s" * 10)
            else:
                c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


class Upstream:
    def __init__(self, port):
        self.port = port
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", UPSTREAM_CODE, str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        self.kill()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


# ----------------------------------------------------------------------------
# The servers under test.

class Tine:
    name = "tine"

    def __init__(self, work, port, upstreams):
        self.work, self.port = work, port
        self.stats_path = f"{work}/tine.stats"
        self.pid_file = f"{work}/tine.pid"
        conf = f"{work}/tine.toml"
        servers = ", ".join(f'"127.0.0.1:{u}"' for u in upstreams)
        with open(conf, "w") as f:
            f.write(f'''listen = ["127.0.0.1:{port}"]
root = "{work}/www"
workers = 2
error_log = "{work}/tine-error.log"
[timeouts]
header = "2s"
idle = "5s"
send = "5s"
drain = "5s"
[[upstream]]
name = "app"
servers = [{servers}]
connect_timeout = "1s"
response_timeout = "2s"
io_timeout = "2s"
keepalive = 16
keepalive_timeout = "2s"
max_fails = 2
fail_timeout = "1s"
[[route]]
path = "/up/"
upstream = "app"
[[route]]
path = "/"
root = "{work}/www"
''')
        self.proc = subprocess.Popen([TINE, "serve", "--config", conf, "--stats-path", self.stats_path,
                                      "--pid-file", self.pid_file], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(port)
        self.wait_workers(2)

    def master(self):
        return int(open(self.pid_file).read())

    def workers(self):
        return children(self.master())

    def wait_workers(self, n, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            try:
                if len(self.workers()) == n and self.stats()["total"]["active"] >= 0:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)

    def stats(self):
        out = subprocess.run([TINE, "stats", "--json", "--stats-path", self.stats_path],
                             capture_output=True, text=True, timeout=10)
        return json.loads(out.stdout)

    def gauges(self):
        s = self.stats()
        return {"active": s["total"]["active"],
                "upstream open": sum(u["open"] for u in s["upstreams"]),
                "upstream active": sum(u["active"] for u in s["upstreams"])}

    def signal(self, sig):
        os.kill(self.master(), sig)

    def upgrade(self):
        """USR2: a new master from the same binary takes the listeners; the
        old one is told to stop once the new one serves."""
        old = self.master()
        os.kill(old, signal.SIGUSR2)
        end = time.time() + 20
        while time.time() < end:
            try:
                if self.master() != old and len(self.workers()) == 2:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        try:
            os.kill(old, signal.SIGQUIT)
        except ProcessLookupError:
            pass

    def error_log(self):
        try:
            return open(f"{self.work}/tine-error.log", errors="replace").read().splitlines()
        except OSError:
            return []

    def stop(self):
        try:
            os.kill(self.master(), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        self.proc.wait(20)
        deadline = time.time() + 20
        while os.path.exists(self.pid_file) and time.time() < deadline:
            time.sleep(0.1)


class Nginx:
    name = "nginx"

    def __init__(self, work, port, upstreams):
        self.work, self.port = work, port
        self.pid_file = f"{work}/nginx.pid"
        conf = f"{work}/nginx.conf"
        servers = "\n".join(f"server 127.0.0.1:{u} max_fails=2 fail_timeout=1s;" for u in upstreams)
        with open(conf, "w") as f:
            f.write(f"""
user root;
worker_processes 2;
worker_cpu_affinity auto;
pid {self.pid_file};
error_log {work}/nginx-error.log error;
events {{ worker_connections 16384; }}
http {{
    access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;
    client_header_timeout 2s; keepalive_timeout 5s; send_timeout 5s;
    default_type application/octet-stream;
    upstream app {{ {servers} keepalive 16; keepalive_timeout 2s; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {work}/www;
        location /up/ {{
            proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_connect_timeout 1s; proxy_read_timeout 2s; proxy_send_timeout 2s;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
""")
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([self.binary, "-c", conf, "-p", work, "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

    def master(self):
        return int(open(self.pid_file).read())

    def workers(self):
        return children(self.master())

    def gauges(self):
        return {}

    def signal(self, sig):
        os.kill(self.master(), sig)

    # nginx's binary upgrade (USR2, then QUIT to the old master) hands the
    # listeners to a master the old one starts; under "daemon off", which
    # this script needs to supervise it, that hand-over does not complete,
    # so the nginx run has no upgrade (the report says so).
    upgrade = None

    def error_log(self):
        try:
            return open(f"{self.work}/nginx-error.log", errors="replace").read().splitlines()
        except OSError:
            return []

    def stop(self):
        try:
            os.kill(self.master(), signal.SIGQUIT)
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        deadline = time.time() + 20
        while os.path.exists(self.pid_file) and time.time() < deadline:
            time.sleep(0.1)


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_kinds(pid):
    """A process's descriptors by kind: sockets, pipes, files, other."""
    kinds = collections.Counter()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            kind = ("socket" if target.startswith("socket:") else "pipe" if target.startswith("pipe:")
                    else "file" if target.startswith("/") else "other")
            kinds[kind] += 1
    except OSError:
        pass
    return kinds


def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def snapshot(server):
    master = server.master()
    workers = server.workers()
    kinds = [fd_kinds(w) for w in workers]
    return {
        "master fds": fds(master),
        "master RSS KiB": rss_kib(master),
        "worker fds": sorted(fds(w) for w in workers),
        # Sockets must come back exactly: one left over is a leaked
        # connection. Pipes (the splice pool) and files (the open-file
        # cache) are bounded caches, reported beside them.
        "worker sockets": sorted(k["socket"] for k in kinds),
        "worker pipes": sorted(k["pipe"] for k in kinds),
        "worker files": sorted(k["file"] for k in kinds),
        "worker other fds": sorted(k["other"] for k in kinds),
        "worker RSS KiB": sorted(rss_kib(w) for w in workers),
        **server.gauges(),
    }


# ----------------------------------------------------------------------------
# The clients.

class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def add(self, kind):
        with self.lock:
            self.counts[kind] += 1


def read_response(f, head_request=False):
    """One response from a buffered socket file: (status, headers, body), or
    raises EOFError when the connection ends first."""
    line = f.readline()
    if not line:
        raise EOFError("closed before a response")
    if not line.startswith(b"HTTP/1."):
        raise ValueError("not a status line (bytes that are not HTTP)")
    status = int(line.split()[1])
    headers = {}
    while True:
        h = f.readline()
        if not h:
            raise EOFError("closed inside the head")
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if head_request or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if "content-length" in headers:
        n = int(headers["content-length"])
        body = f.read(n)
        if len(body) != n:
            raise EOFError(f"closed after {len(body)} of {n} body bytes")
        return status, headers, body
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return status, headers, body
            chunk = f.read(size)
            if len(chunk) != size:
                raise EOFError("closed inside a chunk")
            body += chunk
            f.readline()
    body = f.read()
    return status, headers, body


class Load:
    def __init__(self, port, contents, tally, deadline, rng_seed):
        self.port, self.contents, self.tally, self.deadline = port, contents, tally, deadline
        self.rng = random.Random(rng_seed)
        self.ids = 0

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), 5)
        s.settimeout(CLIENT_PATIENCE)
        return s

    def outcome(self, fn):
        """Runs one scenario and files its outcome under a kind."""
        try:
            kind = fn()
        except socket.timeout:
            kind = "HUNG: no answer within the client's patience"
        except ConnectionResetError:
            kind = "connection reset"
        except ConnectionRefusedError:
            kind = "connection refused"
        except (EOFError, BrokenPipeError) as e:
            kind = "closed early" if "closed" in str(e) or isinstance(e, BrokenPipeError) else str(e)
        except ValueError as e:
            kind = f"WRONG: {e}"
        except OSError as e:
            kind = f"socket error {e.errno}"
        self.tally.add(f"{fn.__name__}: {kind}")

    def check_static(self, name, status, body):
        if status != 200:
            return f"static {status}"
        if body != self.contents[name]:
            raise ValueError(f"static {name}: {len(body)} bytes that are not the file")
        return "ok"

    def request(self, path, rid=None, close=False):
        extra = f"X-Req-Id: {rid}\r\n" if rid else ""
        conn = "Connection: close\r\n" if close else ""
        return f"GET {path} HTTP/1.1\r\nHost: chaos\r\n{extra}{conn}\r\n".encode()

    def keepalive_static(self):
        s = self.connect()
        f = s.makefile("rb")
        kind = "ok"
        for _ in range(5):
            name = self.rng.choice(list(FILES))
            s.sendall(self.request("/" + name))
            status, _, body = read_response(f)
            k = self.check_static(name, status, body)
            kind = k if k != "ok" else kind
        s.close()
        return kind

    def close_static(self):
        s = self.connect()
        s.sendall(self.request("/1k.txt", close=True))
        status, _, body = read_response(s.makefile("rb"))
        s.close()
        return self.check_static("1k.txt", status, body)

    def pipelined(self):
        s = self.connect()
        names = [self.rng.choice(list(FILES)) for _ in range(3)]
        s.sendall(b"".join(self.request("/" + n) for n in names))
        f = s.makefile("rb")
        kind = "ok"
        for n in names:
            status, _, body = read_response(f)
            k = self.check_static(n, status, body)
            kind = k if k != "ok" else kind
        s.close()
        return kind

    def proxied(self):
        s = self.connect()
        f = s.makefile("rb")
        kind = "ok"
        for _ in range(3):
            self.ids += 1
            rid = f"{threading.get_ident()}-{self.ids}"
            size = self.rng.choice([10, 1000, 100_000])
            s.sendall(self.request(f"/up/ok/{size}", rid=rid))
            status, _, body = read_response(f)
            if status != 200:
                kind = f"proxied {status}"
                continue
            if not body.startswith(rid.encode() + b":"):
                raise ValueError(f"proxied answer for {body[:30]!r} reached request {rid}")
        s.close()
        return kind

    def proxied_fault(self):
        what = self.rng.choice(["stall", "reset", "garbage", "truncated", "slow", "chunked"])
        s = self.connect()
        self.ids += 1
        rid = f"{threading.get_ident()}-f{self.ids}"
        s.sendall(self.request(f"/up/{what}", rid=rid, close=True))
        try:
            status, _, body = read_response(s.makefile("rb"))
        finally:
            s.close()
        if what == "chunked" and status == 200 and not body.startswith(rid.encode()):
            raise ValueError(f"chunked answer {body[:30]!r} reached request {rid}")
        return f"fault {what}: {status}"

    def slow_reader(self):
        s = self.connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(self.request("/1m.bin"))
        for _ in range(10):
            s.recv(4096)
            time.sleep(0.1)
        s.close()
        return "slow reader left"

    def slowloris(self):
        s = self.connect()
        for b in self.request("/1k.txt")[:-4]:
            try:
                s.send(bytes([b]))
            except OSError:
                break
            time.sleep(0.3)
            if time.time() > self.deadline:
                break
        try:
            got = s.recv(100)
        except OSError:
            got = b""
        s.close()
        return "slowloris cut off" if not got or got.startswith(b"HTTP/1.1 408") else "slowloris answered"

    def vanish_mid_request(self):
        s = self.connect()
        s.sendall(b"GET /1m.bin HTTP/1.1\r\nHost: chaos\r\nX-Half: ")
        if self.rng.random() < 0.5:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        return "vanished mid-request"

    def vanish_mid_response(self):
        s = self.connect()
        s.sendall(self.request(self.rng.choice(["/1m.bin", "/up/ok/100000"]), rid="vanish"))
        s.recv(1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        return "vanished mid-response"

    SCENARIOS = [("keepalive_static", 30), ("close_static", 15), ("pipelined", 10), ("proxied", 20),
                 ("proxied_fault", 8), ("slow_reader", 3), ("slowloris", 2), ("vanish_mid_request", 5),
                 ("vanish_mid_response", 5)]

    def run(self):
        names = [n for n, _ in self.SCENARIOS]
        weights = [w for _, w in self.SCENARIOS]
        while time.time() < self.deadline:
            name = self.rng.choices(names, weights)[0]
            self.outcome(getattr(self, name))


# ----------------------------------------------------------------------------

def inject_faults(server, upstreams, deadline, rng, done):
    upgrade_at = time.time() + (deadline - time.time()) / 2
    upgraded = False
    while time.time() < deadline:
        time.sleep(rng.uniform(1, 3))
        if time.time() >= deadline:
            break
        if not upgraded and time.time() >= upgrade_at:
            upgraded = True
            if server.upgrade:
                server.upgrade()
                done["upgrade"] += 1
                continue
            done["upgrade (not done)"] += 1
        fault = rng.choice(FAULTS)
        try:
            if fault == "hup":
                server.signal(signal.SIGHUP)
            elif fault == "usr1":
                server.signal(signal.SIGUSR1)
            elif fault == "kill_worker":
                workers = server.workers()
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
            elif fault == "kill_upstream":
                u = rng.choice(upstreams)
                u.kill()
                time.sleep(rng.uniform(0.5, 2))
                u.start()
            done[fault] += 1
        except (OSError, ValueError):
            done[fault + " (missed)"] += 1


def settle(server, baseline, timeout=40):
    """Waits until descriptors and gauges are back where they started (or
    the timeout passes); returns the snapshot it ended with."""
    end = time.time() + timeout
    while True:
        now = snapshot(server)
        same = all(now.get(k) == baseline.get(k) for k in SETTLED)
        if same or time.time() > end:
            return now
        time.sleep(0.5)


def run_one(kind, args, seed):
    work = tempfile.mkdtemp(prefix=f"tine-chaos-{kind}-")
    os.chmod(work, 0o755)
    os.mkdir(f"{work}/www")
    contents = {}
    rng = random.Random(seed)
    for name, size in FILES.items():
        data = bytes(rng.getrandbits(8) for _ in range(min(size, 4096))) * (size // min(size, 4096))
        contents[name] = data
        with open(f"{work}/www/{name}", "wb") as f:
            f.write(data)
    upstreams = [Upstream(free_port()), Upstream(free_port())]
    port = free_port()
    server = (Tine if kind == "tine" else Nginx)(work, port, [u.port for u in upstreams])
    try:
        # Warm up: every kind of request once, then the baseline.
        warm = Load(port, contents, Tally(), time.time() + 1, seed)
        for fn in (warm.keepalive_static, warm.proxied, warm.close_static):
            warm.outcome(fn)
        time.sleep(3)  # pooled upstream connections from the warm-up expire
        baseline = snapshot(server)
        tally = Tally()
        faults = collections.Counter()
        deadline = time.time() + args.seconds
        threads = [threading.Thread(target=Load(port, contents, tally, deadline, seed * 1000 + i).run)
                   for i in range(args.clients)]
        fault_thread = threading.Thread(target=inject_faults,
                                        args=(server, upstreams, deadline, random.Random(seed), faults))
        for t in threads + [fault_thread]:
            t.start()
        for t in threads + [fault_thread]:
            t.join()
        after = settle(server, baseline)
        log = server.error_log()
        return {"server": kind, "outcomes": dict(tally.counts), "faults": dict(faults),
                "baseline": baseline, "after": after, "error_log": summarise_log(log),
                "panics": sum("panick" in l for l in log)}
    finally:
        server.stop()
        for u in upstreams:
            u.stop()
        shutil.rmtree(work, ignore_errors=True)


def summarise_log(lines):
    """Error-log lines by message, numbers and addresses folded, most common first."""
    counts = collections.Counter()
    for l in lines:
        if not re.search(r"\[(error|warn|crit|alert|emerg)\]", l):
            continue
        msg = re.sub(r"^\S+ \S+ \[", "[", l)
        msg = re.sub(r"\d+", "N", msg)[:140]
        counts[msg] += 1
    return counts.most_common(12)


def judge(r):
    """What the soak requires of tine; empty when all held."""
    problems = []
    for kind, n in r["outcomes"].items():
        if kind.startswith("WRONG") or kind.startswith("HUNG"):
            problems.append(f"{n} x {kind}")
    b, a = r["baseline"], r["after"]
    for k in SETTLED:
        if a.get(k) != b.get(k):
            problems.append(f"{k}: {b.get(k)} before, {a.get(k)} after")
    limit = max(b["worker RSS KiB"]) * 1.5 + 4096
    if any(x > 2 * 256 for x in a["worker pipes"]) or any(x > len(FILES) + 8 for x in a["worker files"]):
        problems.append(f"worker pipes {a['worker pipes']} or files {a['worker files']} beyond their caches")
    if any(x is None or x > limit for x in a["worker RSS KiB"]):
        problems.append(f"worker RSS {a['worker RSS KiB']} KiB after, baseline {b['worker RSS KiB']}")
    if r["panics"]:
        problems.append(f"{r['panics']} panics in the error log")
    return problems


def report(results):
    kinds = sorted({k for r in results for k in r["outcomes"]})
    names = [r["server"] for r in results]
    print(f"\n{'outcome':<48}" + "".join(f"{n:>12}" for n in names))
    for k in kinds:
        print(f"{k[:47]:<48}" + "".join(f"{r['outcomes'].get(k, 0):>12}" for r in results))
    print(f"{'scenarios run':<48}" + "".join(f"{sum(r['outcomes'].values()):>12}" for r in results))
    print()
    for r in results:
        print(f"{r['server']} faults: " + ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items())))
    print(f"\n{'':<20}" + "".join(f"{n + ' before':>20}{n + ' after':>20}" for n in names))
    for k in ("master fds", "worker fds", "worker sockets", "worker pipes", "worker files", "worker other fds",
              "master RSS KiB", "worker RSS KiB", "active", "upstream open", "upstream active"):
        row = f"{k:<20}"
        for r in results:
            row += f"{str(r['baseline'].get(k, '-')):>20}{str(r['after'].get(k, '-')):>20}"
        print(row)
    for r in results:
        print(f"\n{r['server']} error log (most common, numbers folded):")
        for msg, n in r["error_log"] or [("(nothing)", 0)]:
            print(f"  {n:>6}  {msg}")


def main():
    ap = argparse.ArgumentParser(description="chaos soak: hostile load and faults, then what was lost")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--servers", default="tine,nginx")
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "tine"], cwd=ROOT, check=True)
    results = []
    for kind in args.servers.split(","):
        if kind == "nginx" and not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
            print("nginx is not installed; skipped", file=sys.stderr)
            continue
        print(f"{kind}: {args.seconds:.0f} s of load and faults ...", file=sys.stderr)
        results.append(run_one(kind, args, args.seed))
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    failed = False
    for r in results:
        if r["server"] != "tine":
            continue
        problems = judge(r)
        print(f"\n{r['server']}: " + ("everything accounted for" if not problems else "FAILED"))
        for p in problems:
            print(f"  {p}")
        failed |= bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

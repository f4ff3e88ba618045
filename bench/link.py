#!/usr/bin/env python3
"""tine and nginx across an emulated long, lossy link.

    python3 bench/link.py [--rtt-ms 40] [--loss 1] [--rate-mbit 50] [--json FILE]

Builds two network namespaces of its own (tine-link-srv, tine-link-cli) joined
by a link with delay, jitter and loss, runs tine and nginx in the server
namespace and curl (or a raw socket) in the client one, and measures:

1. time to first byte of a new connection, with and without TCP Fast Open
   (no loss: the saving is one round trip);
2. download throughput of 1 MiB and 16 MiB files with cubic and with bbr as
   the server's congestion control, on the lossy link;
3. a client that vanishes in the middle of a download, and one that vanishes
   while its keep-alive connection is idle: how long tine holds each
   connection with [tcp] user_timeout / keepalive set and without, and what
   it counts.

The link is `tc netem` on a veth pair where the kernel has sch_netem. Where it
does not (the machine the figures in docs/tuning.md come from), the link is a
user-space emulator: a TUN device in each namespace, joined by this script,
which delays each packet by half the RTT (plus jitter), drops a share of them
at random, and paces them to --rate-mbit through a drop-tail queue of one
bandwidth-delay product. It runs on the same machine as both servers, so keep
--rate-mbit well under what it can forward (the script reports its drops).

Needs root, ip (iproute2), curl, nginx; builds tine in release mode. Every run
is bounded; the namespaces are removed at the end.
"""

import argparse
import fcntl
import heapq
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINE = os.path.join(ROOT, "target", "release", "tine")
SRV, CLI = "tine-link-srv", "tine-link-cli"
SRV_IP, CLI_IP = "10.77.0.1", "10.77.0.2"


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def in_ns(ns, *args):
    return ["ip", "netns", "exec", ns, *args]


def netem_available():
    sh("ip", "link", "add", "tine-probe0", "type", "veth", "peer", "name", "tine-probe1", check=False)
    ok = sh("tc", "qdisc", "add", "dev", "tine-probe0", "root", "netem", "delay", "1ms", check=False).returncode == 0
    sh("ip", "link", "del", "tine-probe0", check=False)
    return ok


class Link:
    """Two namespaces and the emulated path between them."""

    def __init__(self, rtt_ms, jitter_ms, loss, rate_mbit):
        self.delay = rtt_ms / 2000.0
        self.jitter = jitter_ms / 1000.0
        self.loss = loss / 100.0
        self.rate = rate_mbit * 1e6 / 8
        self.blackhole = False
        self.dropped_queue = 0
        for ns in (SRV, CLI):
            sh("ip", "netns", "del", ns, check=False)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.kind = "netem" if netem_available() else "tun"
        if self.kind == "netem":
            sh("ip", "link", "add", "tl0", "netns", SRV, "type", "veth", "peer", "name", "tl1", "netns", CLI)
            for ns, dev, ip in ((SRV, "tl0", SRV_IP), (CLI, "tl1", CLI_IP)):
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")
            self.set_netem()
        else:
            self.fds = {}
            for ns, dev, ip, peer in ((SRV, "tlA", SRV_IP, CLI_IP), (CLI, "tlB", CLI_IP, SRV_IP)):
                fd = os.open("/dev/net/tun", os.O_RDWR)
                fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", dev.encode(), 0x0001 | 0x1000))  # TUNSETIFF, TUN|NO_PI
                sh("ip", "link", "set", dev, "netns", ns)
                sh("ip", "-n", ns, "addr", "add", ip, "peer", peer, "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")
                self.fds[ns] = fd
            self.stop = False
            self.thread = threading.Thread(target=self.forward, daemon=True)
            self.thread.start()

    def set_netem(self):
        loss = 100.0 if self.blackhole else self.loss * 100
        for ns, dev in ((SRV, "tl0"), (CLI, "tl1")):
            sh("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "netem", "delay",
               f"{self.delay * 1000:.1f}ms", f"{self.jitter * 1000:.1f}ms", "loss", f"{loss}%",
               "rate", f"{int(self.rate * 8 / 1e6)}mbit")

    def configure(self, loss=None, blackhole=None):
        if loss is not None:
            self.loss = loss / 100.0
        if blackhole is not None:
            self.blackhole = blackhole
        if self.kind == "netem":
            self.set_netem()

    def forward(self):
        """The user-space path: per direction, a drop-tail queue of one
        bandwidth-delay product drained at the link rate, then the delay."""
        a, b = self.fds[SRV], self.fds[CLI]
        limit = max(64 * 1024, int(self.rate * self.delay * 2))
        state = {a: {"busy_until": 0.0, "queued": 0}, b: {"busy_until": 0.0, "queued": 0}}
        due = []  # (time, seq, out_fd, from_fd, packet)
        seq = 0
        while not self.stop:
            now = time.monotonic()
            timeout = min(max(0.0, due[0][0] - now), 0.05) if due else 0.05
            ready, _, _ = select.select([a, b], [], [], timeout)
            now = time.monotonic()
            for fd in ready:
                packet = os.read(fd, 65536)
                s = state[fd]
                if self.blackhole or random.random() < self.loss:
                    continue
                if s["queued"] + len(packet) > limit:
                    self.dropped_queue += 1
                    continue
                start = max(now, s["busy_until"])
                s["busy_until"] = start + len(packet) / self.rate
                s["queued"] += len(packet)
                jitter = random.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
                seq += 1
                heapq.heappush(due, (s["busy_until"] + max(0.0, self.delay + jitter), seq, b if fd == a else a, fd, packet))
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, out, src, packet = heapq.heappop(due)
                state[src]["queued"] -= len(packet)
                try:
                    os.write(out, packet)
                except OSError:
                    pass

    def close(self):
        if self.kind == "tun":
            self.stop = True
            self.thread.join(2)
            for fd in self.fds.values():
                os.close(fd)
        for ns in (SRV, CLI):
            sh("ip", "netns", "del", ns, check=False)


class Server:
    def __init__(self, kind, work, port, fastopen=False, tcp_extra="", timeouts=""):
        self.kind, self.port = kind, port
        if kind == "tine":
            conf = f"{work}/tine-{port}.toml"
            tcp = "[tcp]\n" + ("fastopen = 256\n" if fastopen else "") + tcp_extra
            with open(conf, "w") as f:
                f.write(f'listen = ["{SRV_IP}:{port}"]\nroot = "{work}/www"\nworkers = 1\n{tcp}\n{timeouts}\n')
            self.stats_path = f"{work}/tine-{port}.stats"
            cmd = [TINE, "serve", "--config", conf, "--stats-path", self.stats_path, "--pid-file", f"{work}/tine-{port}.pid"]
        else:
            conf = f"{work}/nginx-{port}.conf"
            with open(conf, "w") as f:
                f.write(f"""
user root;
worker_processes 1;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off; sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_timeout 60s;
    default_type application/octet-stream;
    server {{ listen {SRV_IP}:{port} reuseport {'fastopen=256' if fastopen else ''}; root {work}/www; }}
}}
""")
            cmd = [shutil.which("nginx") or "/usr/sbin/nginx", "-c", conf, "-p", work, "-g", "daemon off;"]
        self.proc = subprocess.Popen(in_ns(SRV, *cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + 10
        while time.time() < end:
            if subprocess.run(in_ns(SRV, "python3", "-c", f"import socket; socket.create_connection(('{SRV_IP}', {port}), 0.5)"),
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        time.sleep(0.3)

    def stats(self):
        out = subprocess.run([TINE, "stats", "--json", "--stats-path", self.stats_path], capture_output=True, text=True)
        return json.loads(out.stdout)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def curl(url, fastopen=False, timeout=60):
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{time_connect} %{time_starttransfer} %{time_total} %{speed_download}",
           "--max-time", str(timeout), url]
    if fastopen:
        cmd.insert(1, "--tcp-fastopen")
    out = subprocess.run(in_ns(CLI, *cmd), capture_output=True, text=True).stdout.split()
    return [float(x) for x in out] if len(out) == 4 else None


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else 0.0


def first_byte(link, work, args, port):
    """Median time to first byte of a new connection, TFO off and on."""
    link.configure(loss=0)
    rows = []
    for kind in ("tine", "nginx"):
        for tfo in (False, True):
            server = Server(kind, work, port, fastopen=tfo)
            try:
                url = f"http://{SRV_IP}:{port}/1k.bin"
                curl(url, fastopen=tfo)  # the client gets its Fast Open cookie
                times = [r[1] for r in (curl(url, fastopen=tfo) for _ in range(args.samples)) if r]
            finally:
                server.stop()
            rows.append({"server": kind, "fastopen": tfo, "ttfb_ms": median(times) * 1000})
            port += 1
    return rows, port


def throughput(link, work, args, port):
    """Median download rate of each file size, per congestion control."""
    link.configure(loss=args.loss)
    available = open("/proc/sys/net/ipv4/tcp_available_congestion_control").read().split()
    # A namespace may only pick an algorithm the host allows; allow both for
    # the run (restored in main).
    allowed = open("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read().split()
    wanted = sorted(set(allowed) | ({"cubic", "bbr"} & set(available)))
    sh("sysctl", "-q", "-w", f"net.ipv4.tcp_allowed_congestion_control={' '.join(wanted)}")
    rows = []
    for cc in ("cubic", "bbr"):
        if cc not in available:
            print(f"  {cc} is not available in this kernel; skipped", file=sys.stderr)
            continue
        sh(*in_ns(SRV, "sysctl", "-q", "-w", f"net.ipv4.tcp_congestion_control={cc}"))
        for kind in ("tine", "nginx"):
            server = Server(kind, work, port)
            try:
                for name in ("1m.bin", "16m.bin"):
                    rates = [r[3] * 8 / 1e6 for r in (curl(f"http://{SRV_IP}:{port}/{name}") for _ in range(args.samples)) if r]
                    rows.append({"congestion": cc, "server": kind, "file": name, "mbit": median(rates)})
                    print(f"  {cc:<6} {kind:<6} {name:<8} {median(rates):7.1f} Mbit/s", file=sys.stderr)
            finally:
                server.stop()
            port += 1
    return rows, port


def vanish(link, work, port, tcp_extra, timeouts, idle):
    """A client that vanishes mid-download (or while idle): seconds until
    tine closes its connection, and the timeouts counted."""
    link.configure(loss=0, blackhole=False)
    server = Server("tine", work, port, tcp_extra=tcp_extra, timeouts=timeouts)
    client = subprocess.Popen(in_ns(CLI, "python3", "-c", f"""
import socket, time
s = socket.create_connection(('{SRV_IP}', {port}))
s.sendall(b'GET /{"1k.bin" if idle else "16m.bin"} HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')
s.recv(65536)
time.sleep(120)
"""))
    try:
        end = time.time() + 15
        while server.stats()["total"]["active"] == 0 and time.time() < end:
            time.sleep(0.05)
        time.sleep(1.0)
        start = time.time()
        link.configure(blackhole=True)
        while server.stats()["total"]["active"] > 0 and time.time() - start < 90:
            time.sleep(0.1)
        held = time.time() - start
        counted = server.stats()["total"]["timeouts"]
    finally:
        link.configure(blackhole=False)
        client.kill()
        server.stop()
    return {"held_s": round(held, 1), "timeouts": counted}


def main():
    ap = argparse.ArgumentParser(description="tine and nginx across an emulated lossy link")
    ap.add_argument("--rtt-ms", type=float, default=40)
    ap.add_argument("--jitter-ms", type=float, default=2)
    ap.add_argument("--loss", type=float, default=1.0, help="per cent of packets dropped, each way")
    ap.add_argument("--rate-mbit", type=float, default=50)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "tine"], cwd=ROOT, check=True)
    results = {}
    allowed = open("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read().strip()
    link = Link(args.rtt_ms, args.jitter_ms, args.loss, args.rate_mbit)
    try:
        for ns in (SRV, CLI):
            sh(*in_ns(ns, "sysctl", "-q", "-w", "net.ipv4.tcp_fastopen=3"))
        with tempfile.TemporaryDirectory(prefix="tine-link-") as work:
            os.chmod(work, 0o755)
            os.mkdir(f"{work}/www")
            for name, size in (("1k.bin", 1024), ("1m.bin", 1 << 20), ("16m.bin", 16 << 20)):
                with open(f"{work}/www/{name}", "wb") as f:
                    f.write(os.urandom(size))
            port = 8080
            results["link"] = {"kind": link.kind, "rtt_ms": args.rtt_ms, "jitter_ms": args.jitter_ms,
                               "loss_pct": args.loss, "rate_mbit": args.rate_mbit}
            results["first_byte"], port = first_byte(link, work, args, port)
            results["throughput"], port = throughput(link, work, args, port)
            short = '[timeouts]\nsend = "20s"\nidle = "20s"\n'
            results["vanished_mid_download"] = {
                "default": vanish(link, work, port, "", short, idle=False),
                "user_timeout 3s": vanish(link, work, port + 1, 'user_timeout = "3s"\n', short, idle=False),
            }
            results["vanished_while_idle"] = {
                "default": vanish(link, work, port + 2, "", short, idle=True),
                "keepalive 2s/1s x2": vanish(link, work, port + 3,
                                             'keepalive_idle = "2s"\nkeepalive_interval = "1s"\nkeepalive_count = 2\n',
                                             short, idle=True),
            }
            results["emulator_queue_drops"] = link.dropped_queue
    finally:
        link.close()
        sh("sysctl", "-q", "-w", f"net.ipv4.tcp_allowed_congestion_control={allowed}")
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def report(r):
    l = r["link"]
    print(f"\nlink: {l['kind']}, RTT {l['rtt_ms']:.0f} ms +-{l['jitter_ms']:.0f} ms, "
          f"{l['rate_mbit']:.0f} Mbit/s, {l['loss_pct']}% loss each way (none for first byte)")
    print("\ntime to first byte, new connection (median)")
    for row in r["first_byte"]:
        print(f"  {row['server']:<6} fastopen {'on ' if row['fastopen'] else 'off'}  {row['ttfb_ms']:7.1f} ms")
    print("\ndownload rate on the lossy link (median)")
    for row in r["throughput"]:
        print(f"  {row['congestion']:<6} {row['server']:<6} {row['file']:<8} {row['mbit']:7.1f} Mbit/s")
    for name in ("vanished_mid_download", "vanished_while_idle"):
        print(f"\nclient {name.replace('_', ' ')}: how long tine held the connection")
        for setting, v in r[name].items():
            print(f"  {setting:<20} {v['held_s']:6.1f} s, timeouts counted {v['timeouts']}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Lifecycle under load: a real keep-alive load (wrk) on loopback while tine is
reloaded, has workers killed, and is upgraded, with nginx on the reload test
for comparison. Prints what wrk counts (socket errors, non-2xx responses) and
what the stats region shows.

    python3 bench/lifecycle.py [--connections 64] [--events 8] [--window 10] [--json FILE]

Needs wrk and nginx (Debian: apt-get install wrk nginx-light); run as root it
installs them if missing. Only 127.0.0.1 is ever targeted, and every run is
bounded in time.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINE = os.path.join(ROOT, "target", "release", "tine")


def ensure_tools(need):
    missing = [t for t in need if shutil.which(t) is None and not os.path.exists("/usr/sbin/" + t)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: install them (Debian: apt-get install wrk nginx-light)")
    pkgs = {"wrk": "wrk", "nginx": "nginx-light"}
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq"] + [pkgs[m] for m in missing], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "tine"], cwd=ROOT, check=True)


class Tine:
    def __init__(self, work, workers):
        self.work = work
        self.stats_path = os.path.join(work, "tine.stats")
        self.pid_file = os.path.join(work, "tine.pid")
        self.config = os.path.join(work, "tine.toml")
        with open(self.config, "w") as f:
            f.write(f'listen = ["127.0.0.1:0"]\nroot = "{work}/www"\nworkers = {workers}\n')
        self.proc = subprocess.Popen(
            [TINE, "serve", "--config", self.config, "--stats-path", self.stats_path, "--pid-file", self.pid_file],
            stderr=subprocess.PIPE, text=True)
        self.log = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"listening on (\S+)", line)
                if m and not ready.is_set():
                    self.addr = m.group(1)
                    ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(20):
            sys.exit("tine did not start: " + "\n".join(self.log))
        self.wait(lambda s: all(w["state"] == "running" for w in s["workers"]))

    def stats(self):
        out = subprocess.run([TINE, "stats", "--json", "--stats-path", self.stats_path], capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def wait(self, cond, limit=20):
        end = time.time() + limit
        while time.time() < end:
            s = self.stats()
            if s and cond(s):
                return s
            time.sleep(0.02)
        raise RuntimeError("timed out waiting on the stats region")

    def master_pid(self):
        with open(self.pid_file) as f:
            return int(f.read().strip())

    def stop(self):
        try:
            os.kill(self.master_pid(), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_nginx(work, workers, root):
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
user root;
worker_processes {workers};
worker_cpu_affinity auto;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 60s; keepalive_requests 1000000;
    server {{ listen 127.0.0.1:0 reuseport; root {root}; }}
}}
""")
    # nginx cannot report a port it chose; pick a free one first.
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with open(conf) as f:
        text = f.read().replace("127.0.0.1:0", f"127.0.0.1:{port}")
    with open(conf, "w") as f:
        f.write(text)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", conf, "-p", work, "-g", "daemon off;"])
    for _ in range(200):
        if os.path.exists(f"{work}/nginx.pid"):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                pass
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


def run_wrk(addr, connections, seconds, threads=2):
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", f"http://{addr}/1k.bin"],
        capture_output=True, text=True, timeout=seconds + 30).stdout
    r = {"requests": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0, "rps": 0.0}
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["connect"], r["read"], r["write"], r["timeout"] = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    return r


def with_events(addr, args, action, lead=1.0):
    """Runs wrk for lead + window + 1 s; `action(i)` fires args.events times,
    evenly over the window."""
    seconds = int(lead + args.window + 1)
    result = {}
    t = threading.Thread(target=lambda: result.update(run_wrk(addr, args.connections, seconds)))
    t.start()
    time.sleep(lead)
    gap = args.window / args.events
    for i in range(args.events):
        action(i)
        time.sleep(gap)
    t.join()
    return result


def rate_samples(tine, stop, samples):
    while not stop.is_set():
        s = tine.stats()
        if s:
            samples.append((time.monotonic(), s["total"]["requests"]))
        time.sleep(0.1)


def recovery_after(samples, moments):
    """For each moment, how long until the 100 ms request rate is back to 90 % of
    the median rate seen over the whole run."""
    rates = [((t0 + t1) / 2, (c1 - c0) / (t1 - t0)) for (t0, c0), (t1, c1) in zip(samples, samples[1:]) if t1 > t0]
    if not rates:
        return []
    median = sorted(r for _, r in rates)[len(rates) // 2]
    out = []
    for m in moments:
        after = [(t, r) for t, r in rates if t > m]
        back = next((t for t, r in after if r >= 0.9 * median), None)
        out.append(None if back is None else back - m)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-nginx", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    ensure_tools(["wrk"] + ([] if args.skip_nginx else ["nginx"]))
    build()
    report = {"connections": args.connections, "events": args.events, "window_s": args.window}
    with tempfile.TemporaryDirectory(prefix="tine-lifecycle-") as work:
        os.chmod(work, 0o755)
        os.mkdir(f"{work}/www")
        with open(f"{work}/www/1k.bin", "wb") as f:
            f.write(os.urandom(1024))

        tine = Tine(work, args.workers)
        try:
            master = tine.master_pid()
            r = with_events(tine.addr, args, lambda i: os.kill(master, signal.SIGHUP))
            s = tine.wait(lambda s: s["master"]["reloads"] == args.events)
            r["reloads"], r["reloads_failed"] = s["master"]["reloads"], s["master"]["reloads_failed"]
            report["tine_reload"] = r

            samples, stop = [], threading.Event()
            sampler = threading.Thread(target=rate_samples, args=(tine, stop, samples))
            sampler.start()
            kills, held = [], 0

            def kill_worker(i):
                nonlocal held
                s = tine.stats()
                w = s["workers"][i % len(s["workers"])]
                held += w["active"]
                kills.append(time.monotonic())
                os.kill(w["pid"], signal.SIGKILL)
            r = with_events(tine.addr, args, kill_worker)
            stop.set()
            sampler.join()
            s = tine.stats()
            r["respawns"] = s["master"]["respawns"]
            r["connections_held_by_killed_workers"] = held
            rec = [x for x in recovery_after(samples, kills) if x is not None]
            r["recovery_max_s"] = round(max(rec), 2) if rec else None
            report["tine_kill"] = r

            before = tine.stats()["total"]["requests"]
            old = tine.master_pid()
            r = with_events(tine.addr, argparse.Namespace(**{**vars(args), "events": 1}),
                            lambda i: os.kill(old, signal.SIGUSR2), lead=3.0)
            tine.proc.wait(30)
            new = tine.master_pid()
            s = tine.stats()
            r["old_master"], r["new_master"] = old, new
            r["old_master_gone"] = tine.proc.returncode is not None
            r["requests_before"], r["requests_after"] = before, s["total"]["requests"]
            r["counters_continued"] = s["total"]["requests"] >= before + r["requests"]
            report["tine_upgrade"] = r
        finally:
            tine.stop()

        if not args.skip_nginx:
            proc, addr = start_nginx(work, args.workers, f"{work}/www")
            try:
                r = with_events(addr, args, lambda i: proc.send_signal(signal.SIGHUP))
                report["nginx_reload"] = r
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)

    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def print_report(rep):
    n, c, w = rep["events"], rep["connections"], rep["window_s"]
    print(f"\nkeep-alive load: wrk, {c} connections, 1 KiB file; {n} events in {w:g} s\n")
    print(f"{'scenario':<28}{'requests':>10}{'req/s':>10}{'connect':>9}{'read':>7}{'write':>7}{'timeout':>9}{'non-2xx':>9}")
    for key, name in [("tine_reload", f"tine: HUP x{n}"), ("nginx_reload", f"nginx 1.22: HUP x{n}"),
                      ("tine_kill", f"tine: SIGKILL worker x{n}"), ("tine_upgrade", "tine: USR2 upgrade")]:
        r = rep.get(key)
        if r:
            print(f"{name:<28}{r['requests']:>10}{r['rps']:>10.0f}{r['connect']:>9}{r['read']:>7}{r['write']:>7}"
                  f"{r['timeout']:>9}{r['non2xx']:>9}")
    k = rep["tine_kill"]
    print(f"\nkills: {k['respawns']} respawns; the killed workers held {k['connections_held_by_killed_workers']} "
          f"connection(s); throughput back to 90 % of its median within {k['recovery_max_s']} s at worst")
    u = rep["tine_upgrade"]
    print(f"upgrade: master {u['old_master']} -> {u['new_master']}, old master gone: {u['old_master_gone']}, "
          f"requests {u['requests_before']} -> {u['requests_after']} (continued: {u['counters_continued']})")
    r = rep["tine_reload"]
    print(f"reloads: {r['reloads']} done, {r['reloads_failed']} failed")


if __name__ == "__main__":
    main()

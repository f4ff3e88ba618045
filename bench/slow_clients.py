#!/usr/bin/env python3
"""Slow clients against tine, measured: slowhttptest's slowloris, slow-body
and slow-read attacks, each with wrk running beside it to show what the other
clients still get.

    python3 bench/slow_clients.py [--connections 4000] [--seconds 30] [--json FILE]
    python3 bench/slow_clients.py --attacks "slow read" --send-timeout 10s --min-send-rate 4096

For each attack: tine starts fresh (one worker pinned to CPU 0, production
defaults: header timeout 10 s, idle 60 s, send 60 s, 16,384 connections per
worker), slowhttptest opens its connections (a few hundred per second, so
that after 10 s most of them are open), then wrk (pinned to CPU 1, 32
keep-alive connections) measures requests per second on a 1 KiB file for
10 s while the attack holds its connections. The same wrk run without an
attack is the baseline. slowhttptest runs on wrk's CPU, so that tine's CPU
is its own: the table shows what wrk got, tine's worker CPU per request
(what the attack costs tine), the connections tine had open after the wrk
run, slowhttptest's peak of open connections, and what tine counted:
timeouts and refused requests.

Needs slowhttptest and wrk (Debian packages; installed if missing, as root).
"""

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINE = os.path.join(ROOT, "target", "release", "tine")

ATTACKS = {
    # Heads sent a header line at a time, every 5 s: the header timeout
    # (10 s from the first byte) is what ends them.
    "slowloris": ["-H", "-i", "5"],
    # Bodies of 8 KiB sent a few bytes every 10 s to a static route: tine
    # answers at once and reads the body to throw it away; the idle timeout
    # is what ends them.
    "slow body": ["-B", "-i", "10", "-s", "8192", "-t", "POST"],
    # Responses read 32 bytes every 5 s through a tiny window: the send
    # timeout (no progress for 60 s) is what ends them; until then the kernel
    # holds what the socket buffer takes.
    "slow read": ["-X", "-k", "1", "-w", "512", "-y", "1024", "-n", "5", "-z", "32"],
}


def need(tool, package):
    if shutil.which(tool):
        return
    if os.geteuid() != 0:
        sys.exit(f"{tool} is missing: apt-get install {package}")
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, capture_output=True)
    if not shutil.which(tool):
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, capture_output=True)


# Settings beyond the production defaults (--send-timeout, --min-send-rate).
TIMEOUTS = {}
LIMITS = {}


def start_tine(work, port):
    cmd = ["taskset", "-c", "0", TINE, "serve", "--listen", f"127.0.0.1:{port}", "--root", f"{work}/www",
           "--workers", "1", "--stats-path", f"{work}/stats", "--pid-file", f"{work}/pid"]
    if TIMEOUTS or LIMITS:
        with open(f"{work}/tine.toml", "w") as f:
            f.write(f'root = "{work}/www"\n[timeouts]\n')
            f.writelines(f'{k} = "{v}"\n' for k, v in TIMEOUTS.items())
            f.write("[limits]\n")
            f.writelines(f"{k} = {v}\n" for k, v in LIMITS.items())
        cmd += ["--config", f"{work}/tine.toml"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(f"{work}/pid") and stats(work):
            return proc
        time.sleep(0.1)
    raise RuntimeError("tine did not start")


def stats(work):
    out = subprocess.run([TINE, "stats", "--json", "--stats-path", f"{work}/stats"], capture_output=True, text=True)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return None


def stop_tine(proc, work):
    try:
        os.kill(int(open(f"{work}/pid").read()), signal.SIGTERM)
    except (OSError, ValueError):
        pass
    proc.wait(30)


def wrk(url, seconds):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", url],
                         capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def attack(name, args, work, port, connections, seconds):
    proc = start_tine(work, port)
    try:
        url = f"http://127.0.0.1:{port}/" + ("1m.bin" if name == "slow read" else "1k.txt")
        out_prefix = f"{work}/slow-{name.replace(' ', '-')}"
        # The attacker runs on wrk's CPU, so tine's CPU is tine's alone.
        cmd = ["taskset", "-c", "1", "slowhttptest", *args, "-c", str(connections), "-r", str(max(connections // 8, 50)),
               "-l", str(seconds), "-p", "3", "-u", url, "-g", "-o", out_prefix]
        attacker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(10)
        peak = 0
        cpu_before, requests_before = worker_cpu_ns(work), stats(work)["total"]["requests"]
        during = wrk(f"http://127.0.0.1:{port}/1k.txt", 10)
        s = stats(work)
        during["cpu_us_per_req"] = cpu_per_request(work, cpu_before, requests_before)
        peak = s["total"]["active"] if s else 0
        attacker.wait(seconds + 60)
        time.sleep(1)
        end = stats(work)["total"]
        return {"attack": name, "wrk": during, "open_during_wrk": peak, "attacker": attacker_view(out_prefix),
                "timeouts": end["timeouts"], "parse_errors": end["parse_errors"],
                "closed_idle_at_limit": end["closed_idle_at_limit"], "requests": end["requests"]}
    finally:
        stop_tine(proc, work)


def worker_cpu_ns(work):
    """CPU time of tine's worker (nanoseconds, from /proc/PID/schedstat)."""
    master = int(open(f"{work}/pid").read())
    with open(f"/proc/{master}/task/{master}/children") as f:
        worker = int(f.read().split()[0])
    with open(f"/proc/{worker}/schedstat") as f:
        return int(f.read().split()[0])


def cpu_per_request(work, cpu_before, requests_before):
    requests = stats(work)["total"]["requests"] - requests_before
    return (worker_cpu_ns(work) - cpu_before) / 1000 / max(requests, 1)


def attacker_view(prefix):
    """slowhttptest's own time series: connections open at its peak, and
    whether its probe request was still served at the end."""
    try:
        with open(prefix + ".csv") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    if not rows:
        return {}
    connected = max(int(r.get("Connected", 0) or 0) for r in rows)
    return {"peak_connected": connected, "seconds": len(rows)}


def main():
    ap = argparse.ArgumentParser(description="slowhttptest attacks against tine, with wrk beside them")
    ap.add_argument("--connections", type=int, default=4000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), help="which attacks (default: all)")
    ap.add_argument("--send-timeout", metavar="DURATION", help="[timeouts] send (default 60s)")
    ap.add_argument("--min-send-rate", type=int, metavar="BYTES_PER_S", help="[limits] min_send_rate (default off)")
    args = ap.parse_args()
    if args.send_timeout:
        TIMEOUTS["send"] = args.send_timeout
    if args.min_send_rate is not None:
        LIMITS["min_send_rate"] = args.min_send_rate
    need("slowhttptest", "slowhttptest")
    need("wrk", "wrk")
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "tine"], cwd=ROOT, check=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="tine-slow-") as work:
        os.chmod(work, 0o755)
        os.mkdir(f"{work}/www")
        with open(f"{work}/www/1k.txt", "wb") as f:
            f.write(b"x" * 1024)
        with open(f"{work}/www/1m.bin", "wb") as f:
            f.write(os.urandom(1 << 20))
        port = 18500
        proc = start_tine(work, port)
        try:
            cpu_before, requests_before = worker_cpu_ns(work), stats(work)["total"]["requests"]
            baseline = wrk(f"http://127.0.0.1:{port}/1k.txt", 10)
            baseline["cpu_us_per_req"] = cpu_per_request(work, cpu_before, requests_before)
        finally:
            stop_tine(proc, work)
        results.append({"attack": "none", "wrk": baseline})
        for name, attack_args in [(n, a) for n, a in ATTACKS.items() if n in args.attacks]:
            port += 1
            print(f"{name} ...", file=sys.stderr)
            results.append(attack(name, attack_args, work, port, args.connections, args.seconds))
    base = results[0]["wrk"]["rps"]
    print(f"\n{'attack':<12}{'wrk req/s':>12}{'vs none':>9}{'CPU us/req':>12}{'wrk errors':>12}{'open':>8}"
          f"{'attacker peak':>15}{'timeouts':>10}{'refused':>9}")
    for r in results:
        w = r["wrk"]
        a = r.get("attacker", {})
        print(f"{r['attack']:<12}{w['rps']:>12.0f}{w['rps'] / base:>8.2f}x{w['cpu_us_per_req']:>12.2f}"
              f"{w['socket_errors'] + w['non_2xx']:>12}{r.get('open_during_wrk', '-'):>8}"
              f"{a.get('peak_connected', '-'):>15}{r.get('timeouts', '-'):>10}{r.get('parse_errors', '-'):>9}")
    if args.json:
        for r in results:
            r["settings"] = {**TIMEOUTS, **LIMITS}
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

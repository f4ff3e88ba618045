#!/usr/bin/env python3
"""A reader of tine's statistics region written only from docs/stats-abi.md, to
show (and test) that the document is enough. Prints JSON shaped like the
`master`, `host`, `listeners`, `total` and `workers` parts of
`tine stats --json`.

    python3 tests/stats_reader.py /dev/shm/tine-8080.stats
"""

import json
import mmap
import os
import struct
import sys
import time

MAGIC = b"TINESTAT"
HEADER_SIZE, MASTER_SIZE, HOST_SIZE, SLOT_SIZE = 192, 64, 1152, 448

MASTER = ["generation", "reloads", "reloads_failed", "respawns", "watchdog_kills", "backoffs"]
MASTER_COUNTERS = MASTER[1:]
HOST = ["sampled_unix_ms", "tcp_active_opens", "tcp_passive_opens", "tcp_attempt_fails", "tcp_estab_resets",
        "tcp_retrans_segs", "tcp_in_errs", "tcp_listen_overflows", "tcp_listen_drops", "interface_count"]
SLOT = ["pid", "cpu", "state", "generation", "started_unix_ms", "heartbeat_unix_ms", "accepted", "active",
        "requests", "responses_1xx", "responses_2xx", "responses_3xx", "responses_4xx", "responses_5xx",
        "bytes_received", "bytes_sent", "bytes_sent_sendfile", "timeouts", "parse_errors", "closed_by_reset",
        "cpu_time_us", "rss_bytes", "latency_us_sum"]
SLOT_INFO = {"pid", "cpu", "state", "generation", "started_unix_ms", "heartbeat_unix_ms"}
GAUGES = {"active", "rss_bytes", "http2_active"}
UPSTREAM = ["requests", "failures", "timeouts", "pool_hits", "pool_misses", "open", "down", "bytes_spliced",
            "bytes_copied", "active", "responses", "response_us_sum", "tls_handshakes", "tls_resumed", "tls_failed",
            "tls_verify_expired", "tls_verify_unknown_issuer", "tls_verify_name", "tls_verify_other",
            "h2_connections", "h2_streams", "h2_goaways", "h2_resets"]
UPSTREAM_GAUGES = {"open", "down", "active"}
LIMIT = ["checked", "delayed", "refused", "connections_refused", "evictions"]
STATES = ["empty", "starting", "running", "draining", "dead", "backoff", "retired"]
LATENCY_OFFSET, LATENCY_BUCKETS = 184, 32
# Fields after the histogram, with their offsets in the slot.
SLOT_AFTER_HISTOGRAM = {"closed_idle_at_limit": 440, "tls_handshakes": 448, "tls_resumed": 456, "tls_v1_3": 464,
                        "tls_v1_2": 472, "tls_failed_protocol": 480, "tls_failed_timeout": 488,
                        "tls_failed_no_certificate": 496, "tls_failed_plain_http": 504, "tls_record_errors": 512,
                        "tcp_info_samples": 520, "sampled_rtt_us_sum": 528, "sampled_retrans_segs": 536,
                        "sampled_segs_out": 544}
SAMPLED_RTT_OFFSET = 552
# Fields after the RTT histogram.
SLOT_AFTER_RTT = {"rejected_malformed": 808, "rejected_target": 816, "rejected_uri_too_long": 824,
                  "rejected_head_too_large": 832, "rejected_version": 840, "rejected_not_implemented": 848,
                  "proxy_headers": 856, "proxy_refused_untrusted": 864, "proxy_refused_missing": 872,
                  "proxy_refused_malformed": 880, "proxy_refused_timeout": 888, "tls_failed_no_common": 896,
                  "http2_connections": 904, "http2_active": 912, "http2_requests": 920, "http2_client_resets": 928,
                  "http2_tine_resets": 936, "http2_stalled": 944, "http2_goaway_graceful": 952,
                  "http2_goaway_calm": 960, "http2_goaway_error": 968,
                        "grpc_ok": 976, "grpc_cancelled": 984, "grpc_unknown": 992, "grpc_invalid_argument": 1000, "grpc_deadline_exceeded": 1008, "grpc_not_found": 1016, "grpc_already_exists": 1024, "grpc_permission_denied": 1032, "grpc_resource_exhausted": 1040, "grpc_failed_precondition": 1048, "grpc_aborted": 1056, "grpc_out_of_range": 1064, "grpc_unimplemented": 1072, "grpc_internal": 1080, "grpc_unavailable": 1088, "grpc_data_loss": 1096, "grpc_unauthenticated": 1104, "grpc_by_tine": 1112}


class Invalid(Exception):
    pass


def read(path):
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    if len(m) < HEADER_SIZE or m[:8] != MAGIC:
        raise Invalid("not a tine stats region")
    (endian,) = struct.unpack_from("=I", m, 12)
    if endian == 0x04030201:
        raise Invalid("written on a machine of the other byte order")
    if endian != 0x01020304:
        raise Invalid("bad endianness marker")
    (version,) = struct.unpack_from("=I", m, 8)
    if version != 1:
        raise Invalid(f"layout version {version}, this reader knows 1")
    (header_size, master_size, slot_count, slot_size, listener_count, listener_entry_size) = struct.unpack_from("=6I", m, 16)
    master_offset, listeners_offset, slots_offset, total_size = struct.unpack_from("=4Q", m, 40)
    master_pid, start_ms, heartbeat_ms, state = struct.unpack_from("=4Q", m, 72)
    (host_offset,) = struct.unpack_from("=Q", m, 104)
    host_size, interface_capacity = struct.unpack_from("=2I", m, 112)
    (upstreams_offset,) = struct.unpack_from("=Q", m, 120)
    upstream_count, upstream_capacity, upstream_name_size, upstream_entry_size = struct.unpack_from("=4I", m, 128)
    if header_size < HEADER_SIZE or master_size < MASTER_SIZE or slot_size < SLOT_SIZE or slot_size % 64:
        raise Invalid("section sizes")
    if host_size < 128 + interface_capacity * 64:
        raise Invalid("host section size")
    if upstream_entry_size < 128 or upstream_entry_size % 64 or upstream_count > upstream_capacity:
        raise Invalid("upstream section")
    upstream_bytes = upstream_capacity * (upstream_name_size + slot_count * upstream_entry_size)
    for off, size in [(master_offset, master_size), (host_offset, host_size), (upstreams_offset, upstream_bytes),
                      (listeners_offset, listener_count * listener_entry_size), (slots_offset, slot_count * slot_size)]:
        if off + size > len(m) or total_size > len(m):
            raise Invalid("section offsets")
    for off in (master_offset, host_offset, slots_offset):
        if off % 64:
            raise Invalid("unaligned section")

    u64 = lambda off: struct.unpack_from("=Q", m, off)[0]
    master = {name: u64(master_offset + 8 * i) for i, name in enumerate(MASTER)}
    master.update(pid=master_pid, start_unix_ms=start_ms, heartbeat_unix_ms=heartbeat_ms,
                  state={1: "running", 2: "stopping", 3: "stopped", 4: "draining"}.get(state, "unknown"))
    master["live"] = live(master_pid, state, heartbeat_ms)

    host = {name: u64(host_offset + 8 * i) for i, name in enumerate(HOST)}
    interfaces = []
    for i in range(min(host["interface_count"], interface_capacity)):
        e = host_offset + 128 + 64 * i
        name = m[e:e + 16].split(b"\0")[0].decode("ascii", "replace")
        interfaces.append({"name": name, "rx_bytes": u64(e + 16), "rx_drops": u64(e + 24),
                           "tx_bytes": u64(e + 32), "tx_drops": u64(e + 40)})
    host["interfaces"] = interfaces

    listeners = []
    for i in range(listener_count):
        e = listeners_offset + i * listener_entry_size
        listeners.append(m[e:e + listener_entry_size].split(b"\0")[0].decode("ascii", "replace"))

    slots = []
    for i in range(slot_count):
        base = slots_offset + i * slot_size
        w = {"slot": i}
        for j, name in enumerate(SLOT):
            w[name] = u64(base + 8 * j)
        for name, off in {**SLOT_AFTER_HISTOGRAM, **SLOT_AFTER_RTT}.items():
            # Appended fields a region's slots may be too old to have.
            w[name] = u64(base + off) if off + 8 <= slot_size else 0
        w["latency_us"] = [u64(base + LATENCY_OFFSET + 8 * b) for b in range(LATENCY_BUCKETS)]
        w["sampled_rtt_us"] = [u64(base + SAMPLED_RTT_OFFSET + 8 * b)
                               if SAMPLED_RTT_OFFSET + 8 * (b + 1) <= slot_size else 0
                               for b in range(LATENCY_BUCKETS)]
        slots.append(w)

    total = {}
    for name in SLOT + list(SLOT_AFTER_HISTOGRAM) + list(SLOT_AFTER_RTT):
        if name in SLOT_INFO:
            continue
        s = sum(w[name] for w in slots) % (1 << 64)
        if name in GAUGES and s >= 1 << 63:
            s = 0  # a gauge that reads below zero shows as zero
        total[name] = s
    total["latency_us"] = [sum(w["latency_us"][b] for w in slots) % (1 << 64) for b in range(LATENCY_BUCKETS)]
    total["sampled_rtt_us"] = [sum(w["sampled_rtt_us"][b] for w in slots) % (1 << 64) for b in range(LATENCY_BUCKETS)]

    workers = []
    for w in slots:
        if w["generation"] == 0:
            continue  # never used
        w = dict(w)
        w["state"] = STATES[w["state"]] if w["state"] < len(STATES) else "unknown"
        w["cpu"] = None if w["cpu"] == (1 << 64) - 1 else w["cpu"]
        if w["active"] >= 1 << 63:
            w["active"] = 0
        workers.append(w)
    upstreams = []
    for u, name in enumerate(upstream_names(m, upstreams_offset, upstream_capacity, upstream_name_size)):
        entry = {"name": name}
        entries = upstreams_offset + upstream_capacity * upstream_name_size
        for j, name in enumerate(UPSTREAM):
            if 8 * j + 8 > upstream_entry_size:
                break  # appended after this region was written
            total_u = sum(u64(entries + (s * upstream_capacity + u) * upstream_entry_size + 8 * j)
                          for s in range(slot_count)) % (1 << 64)
            if name in UPSTREAM_GAUGES and total_u >= 1 << 63:
                total_u = 0
            entry[name] = total_u
        upstreams.append(entry)

    (certificates_offset,) = struct.unpack_from("=Q", m, 152)
    certificate_capacity, certificate_entry_size = struct.unpack_from("=2I", m, 164)
    certificates = []
    if certificates_offset:
        if certificates_offset % 64 or certificate_entry_size < 16 or certificate_entry_size % 8 \
                or certificates_offset + certificate_capacity * certificate_entry_size > len(m):
            raise Invalid("certificate table")
        certificates = certificate_table(m, certificates_offset, certificate_capacity, certificate_entry_size)

    (limit_capacity,) = struct.unpack_from("=I", m, 172)
    (limits_offset,) = struct.unpack_from("=Q", m, 176)
    (limit_entry_size,) = struct.unpack_from("=I", m, 188)
    client_limits = []
    if limits_offset:
        if limits_offset % 64 or limit_entry_size != 64 \
                or limits_offset + limit_capacity * (64 + slot_count * limit_entry_size) > len(m):
            raise Invalid("client limit section")
        entries = limits_offset + limit_capacity * 64
        for index, name, keys, max_keys in limit_infos(m, limits_offset, limit_capacity):
            entry = {"name": name, "keys": keys, "max_keys": max_keys}
            for j, field in enumerate(LIMIT):
                entry[field] = sum(u64(entries + (s * limit_capacity + index) * limit_entry_size + 8 * j)
                                   for s in range(slot_count)) % (1 << 64)
            client_limits.append(entry)

    return {"master": master, "host": host, "listeners": listeners, "total": total, "workers": workers,
            "upstreams": upstreams, "certificates": certificates, "client_limits": client_limits}


def under_seq(m, read, empty):
    """`read(m)` under the header's sequence lock (offset 144): a copy counts
    only if the sequence was even and unchanged around it; `empty` from a
    master that stopped in the middle of a rewrite."""
    give_up = time.time() + 1
    while time.time() < give_up:
        (before,) = struct.unpack_from("=Q", m, 144)
        if before % 2:
            time.sleep(0.001)
            continue
        copy = read(m)
        (after,) = struct.unpack_from("=Q", m, 144)
        if after == before:
            return copy
    return empty


CERTIFICATE_SOURCES = {0: "file", 1: "acme", 2: "acme-temporary"}


def certificate_table(m, offset, capacity, size):
    """The certificates (notAfter, then `NAME FILE` up to byte 128, then
    source, next attempt, failures and last error when the entry is long
    enough), under the same sequence lock as the upstream names."""
    def read(m):
        (count,) = struct.unpack_from("=I", m, 160)
        table = []
        for c in range(min(count, capacity)):
            e = offset + c * size
            (not_after,) = struct.unpack_from("=q", m, e)
            text = m[e + 8:e + min(size, 128)].split(b"\0")[0].decode("utf-8", "replace")
            name, _, file = text.partition(" ")
            entry = {"name": name, "file": file, "not_after_unix": not_after,
                     "expires_in_seconds": not_after - int(time.time()),
                     "source": "file", "next_attempt_unix": 0, "acme_failures": 0, "last_error": ""}
            if size > 152:
                source, next_attempt, failures = struct.unpack_from("=QqQ", m, e + 128)
                entry["source"] = CERTIFICATE_SOURCES.get(source, "file")
                entry["next_attempt_unix"] = next_attempt
                entry["acme_failures"] = failures
                entry["last_error"] = m[e + 152:e + size].split(b"\0")[0].decode("utf-8", "replace")
            table.append(entry)
        return table
    return under_seq(m, read, [])


def limit_infos(m, offset, capacity):
    """Each client limit in use: (index, name, keys in use, keys its table
    holds), under the same sequence lock as the upstream names; an entry
    with an empty name is not in use."""
    def read(m):
        (count,) = struct.unpack_from("=I", m, 184)
        infos = []
        for i in range(min(count, capacity)):
            e = offset + i * 64
            name = m[e:e + 48].split(b"\0")[0].decode("ascii", "replace")
            keys, max_keys = struct.unpack_from("=2Q", m, e + 48)
            if name:
                infos.append((i, name, keys, max_keys))
        return infos
    return under_seq(m, read, [])


def upstream_names(m, offset, capacity, size):
    """The upstream names, under the header's sequence lock."""
    def read(m):
        (count,) = struct.unpack_from("=I", m, 128)
        return [m[offset + u * size:offset + (u + 1) * size].split(b"\0")[0].decode("ascii", "replace")
                for u in range(min(count, capacity))]
    return under_seq(m, read, [])


def live(pid, state, heartbeat_ms):
    if state == 3:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return time.time() * 1000 - heartbeat_ms <= 5000


if __name__ == "__main__":
    try:
        print(json.dumps(read(sys.argv[1]), indent=2))
    except (Invalid, OSError) as e:
        print(f"stats_reader: {e}", file=sys.stderr)
        sys.exit(2)

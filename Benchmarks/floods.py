#!/usr/bin/env python3
"""Floods: the server keeps serving authenticated agents while hostile clients pile on.

  .venv/bin/python3 Benchmarks/floods.py [--seconds 20] [--pin] [--only KIND] [--json-out FILE]

A release `slimsplit server` (Curve on, an allow-list, the Prometheus endpoint) on loopback,
two healthy reference agents (Protocol/reference/agent.py, 10 Hz, allow-listed keys) and, in
the loaded phase, at the same time:
  - 1,000 connection attempts per second from unauthenticated clients: four in five a raw
    ZMTP greeting with the NULL mechanism, one in five a CurveZMQ client whose key is not on
    the allow-list (pyzmq), each closed after its attempt;
  - 500 idle TCP connections held open (reopened when the server drops them);
  - an allow-listed agent (`slimsplit agent`, synthetic maps) sending at 100x the healthy
    agents' rate: 1 kHz instead of 10 Hz;
  - slow readers on the HTTP endpoint: 200 connections that never send a request, 50 that
    send one byte a second, 50 that send a request and never read; a scraper fetching /metrics
    every 0.5 s measures what a real Prometheus would see.
The unloaded phase runs the same healthy agents alone. Prints JSON: server RSS before, peak
and after; per phase, the healthy agents' frames sent and acked and RTT p50/p99; the flood's
achieved rates; the scraper's latency; the server's counters for what it refused. Exits 1 if
a healthy agent's frame went unacked or the server died.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "Protocol/reference/agent.py")
# ZMTP 3.0 greeting, NULL mechanism, as server=0 (what a client without Curve sends).
NULL_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            r = rss_mb(self.pid)
            if r:
                self.peak = max(self.peak, r)
            time.sleep(0.05)


SERVER_CPUS = None  # --pin: the server and the healthy agents on these CPUs, the floods on the others


def on_server_cpus():
    if SERVER_CPUS:
        os.sched_setaffinity(0, SERVER_CPUS)


def healthy(endpoint, keys, agent_id, frames, out):
    p = subprocess.run(preexec_fn=on_server_cpus, args=[sys.executable, AGENT, "--endpoint", endpoint, "--agent-id", agent_id,
                        "--server-key", f"{keys}/server.pub", "--key", f"{keys}/agents/{agent_id}",
                        "--frames", str(frames), "--interval", "0.1", "--bits", "4", "--lz4", "--mask",
                        "--timeout", "10", "--json"], capture_output=True, text=True)
    try:
        out[agent_id] = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        out[agent_id] = {"error": p.stderr[-2000:]}


def run_healthy(endpoint, keys, frames):
    out, ts = {}, []
    for a in ("car-1", "car-2"):
        t = threading.Thread(target=healthy, args=(endpoint, keys, a, frames, out))
        t.start()
        ts.append(t)
    for t in ts:
        t.join()
    return out


def connect_flood(host, port, server_pub, stop, stats, per_second=1000):
    ctx = zmq.Context()
    stranger_pub, stranger_sec = zmq.curve_keypair()
    i, start = 0, time.monotonic()
    while not stop.is_set():
        due = start + i / per_second
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        i += 1
        try:
            if i % 5:
                s = socket.create_connection((host, port), timeout=1)
                s.sendall(NULL_GREETING)
                s.close()
            else:
                z = ctx.socket(zmq.DEALER)
                z.curve_serverkey, z.curve_publickey, z.curve_secretkey = server_pub, stranger_pub, stranger_sec
                z.linger = 0
                z.connect(f"tcp://{host}:{port}")
                z.send(b"x", zmq.NOBLOCK)
                z.close()
            stats["attempts"] += 1
        except (OSError, zmq.ZMQError):
            stats["errors"] += 1
    stats["seconds"] = time.monotonic() - start
    ctx.term()


def idle_holder(host, port, n, stop, stats):
    socks = []
    while not stop.is_set():
        while len(socks) < n:
            try:
                socks.append(socket.create_connection((host, port), timeout=1))
                stats["opened"] += 1
            except OSError:
                stats["errors"] += 1
                break
        stats["held_now"] = len(socks)
        time.sleep(0.5)
        alive = []
        for s in socks:  # the server may close idle handshakes (after sending its greeting); reopen them
            s.setblocking(False)
            closed = False
            try:
                while True:
                    if s.recv(4096) == b"":
                        closed = True
                        break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            if closed:
                s.close()
                stats["dropped_by_server"] += 1
            else:
                alive.append(s)
        socks = alive
    for s in socks:
        s.close()


def slow_http(port, stop, stats):
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    drip = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    deaf = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        deaf.append(s)
    stats["opened"] = len(idle) + len(drip) + len(deaf)
    while not stop.is_set():
        for s in drip:
            try:
                s.send(b"G")
            except OSError:
                pass
        time.sleep(1)
    for s in idle + drip + deaf:
        s.close()


def scraper(port, stop, stats):
    while not stop.is_set():
        t = time.monotonic()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            stats["ms"].append((time.monotonic() - t) * 1000)
        except OSError:
            stats["failed"] += 1
        time.sleep(0.5)


def pct(xs, q):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20, help="length of each phase (default %(default)s)")
    ap.add_argument("--json-out", help="also write the JSON here")
    ap.add_argument("--pin", action="store_true",
                    help="run the server and the healthy agents on CPU 0 and every flood on the other CPUs, so that "
                         "the flood generators do not take the server's CPU (needs 2 or more)")
    ap.add_argument("--only", choices=["connect", "idle", "fast", "http"], action="append",
                    help="run only these floods in the loaded phase (repeatable; default all)")
    a = ap.parse_args()
    global SERVER_CPUS
    if a.pin and os.cpu_count() >= 2:
        SERVER_CPUS = {0}
        os.sched_setaffinity(0, set(range(1, os.cpu_count())))  # this process generates the floods
    subprocess.run(["swift", "build", "-c", "release", "--product", "slimsplit"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    binary = os.path.join(ROOT, ".build/release/slimsplit")
    work = tempfile.mkdtemp(prefix="slimsplit-floods-")
    keys = os.path.join(work, "keys")
    subprocess.run([binary, "keygen", "--name", "server", "--out", keys], check=True, stdout=subprocess.DEVNULL)
    for agent in ("car-1", "car-2", "flooder"):
        subprocess.run([binary, "keygen", "--name", agent, "--out", f"{keys}/agents"], check=True, stdout=subprocess.DEVNULL)
    port = 20000 + os.getpid() % 20000
    metrics_port = port + 1
    with open(f"{work}/server.yaml", "w") as f:
        f.write(f"endpoint: tcp://127.0.0.1:{port}\ncurve:\n  secret_key: {keys}/server.key\n"
                f"  allowed_keys: {keys}/agents\nmetrics:\n  port: {metrics_port}\n  host: 127.0.0.1\n")
    log = open(f"{work}/server.log", "w")
    server = subprocess.Popen(preexec_fn=on_server_cpus, args=[binary, "server", "--config", f"{work}/server.yaml", "--status-interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=log)
    endpoint = f"tcp://127.0.0.1:{port}"
    server_pub = open(f"{keys}/server.pub", "rb").read().strip()
    try:
        time.sleep(2)
        frames = int(a.seconds * 10)
        sampler = Sampler(server.pid)
        sampler.start()
        rss_before = rss_mb(server.pid)
        unloaded = run_healthy(endpoint, keys, frames)

        stop = threading.Event()
        flood = {"attempts": 0, "errors": 0}
        idle = {"opened": 0, "errors": 0, "dropped_by_server": 0}
        http = {}
        scrape = {"ms": [], "failed": 0}
        only = set(a.only or ["connect", "idle", "fast", "http"])
        threads = [threading.Thread(target=scraper, args=(metrics_port, stop, scrape))]
        if "connect" in only:
            threads.append(threading.Thread(target=connect_flood, args=("127.0.0.1", port, server_pub, stop, flood)))
        if "idle" in only:
            threads.append(threading.Thread(target=idle_holder, args=("127.0.0.1", port, 500, stop, idle)))
        if "http" in only:
            threads.append(threading.Thread(target=slow_http, args=(metrics_port, stop, http)))
        for t in threads:
            t.start()
        with open(f"{work}/flooder.yaml", "w") as f:
            f.write(f"agent_id: flooder\nserver: {endpoint}\ncurve:\n  server_key: {keys}/server.pub\n"
                    f"  secret_key: {keys}/agents/flooder.key\n"
                    f"synthetic:\n  rate_hz: 1000\n  channels: 16\n  bits: 4\n  mask: true\n")
        fast = subprocess.Popen([binary, "agent", "--config", f"{work}/flooder.yaml", "--log-level", "error"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) if "fast" in only else None
        time.sleep(1)
        loaded = run_healthy(endpoint, keys, frames)
        stop.set()
        for t in threads:
            t.join()
        flooder = {"table": None}
        if fast:
            fast.terminate()
            flooder["table"] = fast.communicate(timeout=30)[0].strip()
        time.sleep(3)
        rss_after = rss_mb(server.pid)
        after = run_healthy(endpoint, keys, 30)
        sampler.stop.set()
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        counters = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                    if re.match(r"slimsplit_(handshake_failures|rejected|metrics_clients_dropped|send_dropped|frames|sessions_lost)_total", line)}
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=10)

    def phase(d):
        return {k: {f: v.get(f) for f in ("frames_sent", "acks", "rtt_ms_p50", "rtt_ms_p99", "rtt_ms_max", "error")} for k, v in d.items()}
    all_acked = all(v.get("acks") == v.get("frames_sent") == n for d, n in ((unloaded, frames), (loaded, frames), (after, 30))
                    for v in d.values())
    p99 = lambda d: max((v.get("rtt_ms_p99") or 0) for v in d.values())
    result = {
        "benchmark": "floods", "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].split(":", 1)[1].strip(),
        "cores": os.cpu_count(), "seconds_per_phase": a.seconds, "floods": sorted(only),
        "pinned": f"server and healthy agents on CPU {sorted(SERVER_CPUS)}, floods on the others" if SERVER_CPUS else None,
        "server_rss_mb": {"before": round(rss_before, 1), "peak": round(sampler.peak, 1), "after": round(rss_after or 0, 1)},
        "healthy_unloaded": phase(unloaded), "healthy_loaded": phase(loaded), "healthy_after": phase(after),
        "healthy_rtt_p99_ms": {"unloaded": p99(unloaded), "loaded": p99(loaded),
                               "ratio": round(p99(loaded) / p99(unloaded), 2) if p99(unloaded) else None},
        "flood": {"unauthenticated_attempts_per_s": round(flood["attempts"] / flood.get("seconds", 1)) if flood["attempts"] else 0, "errors": flood["errors"],
                  "idle_connections": {"target": 500, **idle},
                  "fast_agent": {"rate_hz": 1000, "frames_accepted_by_server": counters.get('slimsplit_frames_total{agent="flooder"}'),
                                 "its_closing_table": flooder["table"]},
                  "http_slow_clients": http.get("opened"),
                  "scrape_ms": {"n": len(scrape["ms"]), "p50": pct(scrape["ms"], 0.5), "p99": pct(scrape["ms"], 0.99),
                                "failed": scrape["failed"]}},
        "server_counters": counters, "server_alive": alive, "all_healthy_frames_acked": all_acked,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.json_out:
        open(a.json_out, "w").write(text + "\n")
    return 0 if all_acked and alive else 1


if __name__ == "__main__":
    sys.exit(main())

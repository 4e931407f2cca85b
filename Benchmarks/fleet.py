#!/usr/bin/env python3
"""Fleet benchmark: region servers, etcd and agents whose routes cross region boundaries, one
server killed mid-run (issue 14). Prints JSON.

Everything is real and on loopback: an etcd (Debian's etcd-server) started here, N
`slimsplit server` processes with a region each (the map: N bands across a straight road),
M `slimsplit agent` processes replaying the agents of a simulator recording
(Configs/scenes/fleet.yaml) through the shipped model, and SIGKILL to one server part way.

Measured:
  frames sent / acked / lost  distinct sequence numbers each agent handed to a socket, those
                              some server acknowledged, and those none did (agents' --summary)
  fused twice                 Results a server produced for an (agent, sequence) it had fused
                              before (slimsplit_fusion_fused_twice_total, every server)
  handovers, failovers        the agents' moves, from their --summary
  result gap                  per handover, ms from the last Result the agent took from the
                              old home to the first it took from the new one; compared with
                              the same interval between consecutive Results outside moves
  failover time               ms from the kill to each re-homed agent's first Ack from its
                              new home
  RTT p99 during handover     the agents' RTTs of frames sent within 1 s of a handover

  python3 Benchmarks/fleet.py --binary .build/release/slimsplit --out fleet.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))]


def scrape(port: int) -> dict[str, float]:
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
    return out


def first_poses(recording: Path) -> dict[str, tuple[float, float]]:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    poses = {}
    with open(recording, "rb") as f:
        r = make_reader(f, decoder_factories=[DecoderFactory()])
        for _, ch, _, dec in r.iter_decoded_messages():
            name = ch.topic.split("/")[2] if ch.topic.startswith("/agents/") else None
            if ch.topic.endswith("/pose") and name not in poses:
                poses[name] = (dec.pose.position.x, dec.pose.position.y)
    return poses


def usage(pid: int) -> tuple[float, float] | None:
    """CPU seconds (user + system) and peak RSS (MB) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        rss = next(int(l.split()[1]) for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if l.startswith("VmHWM")) / 1024
        return cpu, rss
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(ROOT / ".build/release/slimsplit"))
    ap.add_argument("--servers", type=int, default=3, help="region servers (bands across the road)")
    ap.add_argument("--agents", type=int, default=12, help="agents (at most the scene's, 12)")
    ap.add_argument("--scene", default=str(ROOT / "Configs/scenes/fleet.yaml"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--band", type=float, default=80, help="width of each inner region, m")
    ap.add_argument("--margin", type=float, default=15, help="overlap margin, m")
    ap.add_argument("--kill", type=int, default=None, help="index of the server to kill (default: the middle one; -1: none)")
    ap.add_argument("--kill-at", type=float, default=10, help="seconds after the agents start replaying")
    ap.add_argument("--signal", choices=["kill", "term"], default="kill",
                    help="kill: SIGKILL (a crash: agents fail over); term: SIGTERM (a graceful stop: the server "
                         "revokes its lease and hands its agents to their standby)")
    ap.add_argument("--lease-ttl", type=int, default=1)
    ap.add_argument("--model", default=str(ROOT / "Models/slimsplit-bev.safetensors"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    if shutil.which("etcd") is None:
        print("error: etcd is required (Debian: apt-get install etcd-server)", file=sys.stderr)
        return 2
    work = Path(a.workdir or tempfile.mkdtemp(prefix="slimsplit-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def spawn(args, log):
        p = subprocess.Popen(args, stdout=open(work / log, "w"), stderr=subprocess.STDOUT, cwd=work)
        procs.append(p)
        return p

    try:
        rec = work / "fleet.mcap"
        if not rec.exists():
            subprocess.run([a.binary, "record", "--scene", a.scene, "--seed", str(a.seed), "--out", str(rec)],
                           check=True, stdout=subprocess.DEVNULL)
        poses = first_poses(rec)
        agents = sorted(poses, key=lambda n: int(n.split("_")[-1]))[:a.agents]

        # The region map: N bands along x, the inner ones `band` wide, the outer ones open-ended.
        n = a.servers
        edges = [-a.band * n / 2 + a.band * i for i in range(1, n)]
        names = [f"r{i}" for i in range(n)]
        bounds = [(-1e5 if i == 0 else edges[i - 1], 1e5 if i == n - 1 else edges[i]) for i in range(n)]
        lines = [f"margin_m: {a.margin}", "regions:"]
        for i, (lo, hi) in enumerate(bounds):
            standby = names[i + 1] if i + 1 < n else names[i - 1]
            lines.append(f"  {names[i]}: {{x_min: {lo}, x_max: {hi}, y_min: -1000, y_max: 1000, standby: {standby}}}")
        (work / "regions.yaml").write_text("\n".join(lines) + "\n")

        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        spawn(["etcd", "--data-dir", str(work / "etcd"), "--listen-client-urls", etcd_url,
               "--advertise-client-urls", etcd_url, "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
               "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
               "--election-timeout", "500", "--heartbeat-interval", "50"], "etcd.log")
        servers = []
        for i in range(n):
            port, mport = free_port(), free_port()
            cfg = work / f"server-{names[i]}.yaml"
            cfg.write_text(
                f"endpoint: tcp://127.0.0.1:{port}\ncurve: {{enabled: false}}\n"
                f"fusion: {{model: {a.model}}}\nmetrics: {{port: {mport}, host: 127.0.0.1}}\n"
                f"fleet:\n  etcd: {etcd_url}\n  region: {names[i]}\n  advertise: tcp://127.0.0.1:{port}\n"
                f"  regions: regions.yaml\n  lease_ttl_s: {a.lease_ttl}\n  name: server-{names[i]}\n")
            servers.append({"region": names[i], "endpoint": f"tcp://127.0.0.1:{port}", "metrics": mport,
                            "bounds": bounds[i]})
        time.sleep(1.0)  # etcd up
        for s in servers:
            s["proc"] = spawn([a.binary, "server", "--config", f"server-{s['region']}.yaml", "--status-interval", "0"],
                              f"server-{s['region']}.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if all(scrape(s["metrics"]).get("slimsplit_fleet_servers_alive", 0) == n for s in servers):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("the servers did not all register")

        agent_procs = {}
        for name in agents:
            x = poses[name][0]
            home = next(s for s in servers if s["bounds"][0] <= x <= s["bounds"][1])
            cfg = work / f"agent-{name}.yaml"
            cfg.write_text(
                f"agent_id: {name.replace('_', '-')}\nserver: {home['endpoint']}\ncurve: {{enabled: false}}\n"
                f"source:\n  recording: {rec}\n  agent: {name}\n  model: {a.model}\n  bits: 4\n  loop: false\n")
            agent_procs[name] = spawn(
                [a.binary, "agent", "--config", cfg.name, "--summary", f"summary-{name}.json",
                 "--report", f"report-{name}.jsonl"], f"agent-{name}.log")
        # The agents replay once they have read the recording; the kill counts from then.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                "replaying" in (work / f"agent-{nm}.log").read_text() for nm in agents):
            time.sleep(0.1)
        started = time.monotonic()
        kill_index = (n // 2) if a.kill is None else a.kill
        killed_at_ns = None
        metrics: dict[str, dict] = {}

        def scrape_live():  # the latest metrics of every server still running (a killed one keeps its last)
            for s in servers:
                if s["proc"].poll() is None:
                    try:
                        metrics[s["region"]] = scrape(s["metrics"])
                    except OSError:
                        pass
        while any(p.poll() is None for p in agent_procs.values()):
            for s in servers:
                if s["proc"].poll() is None and (u := usage(s["proc"].pid)):
                    s["usage"], s["usage_at"] = u, time.monotonic()
            if killed_at_ns is None and kill_index >= 0 and time.monotonic() - started >= a.kill_at:
                servers[kill_index]["proc"].send_signal(signal.SIGKILL if a.signal == "kill" else signal.SIGTERM)
                killed_at_ns = time.monotonic_ns()
            scrape_live()
            time.sleep(0.25)
        scrape_live()

        # ---- what the agents saw
        summaries = {nm: json.loads((work / f"summary-{nm}.json").read_text()) for nm in agents}
        recorded = {nm: int(re.search(r"frames=(\d+)", (work / f"agent-{nm}.log").read_text()).group(1))
                    for nm in agents}
        sent = sum(s["frames"] for s in summaries.values())
        acked = sum(s["acked"] for s in summaries.values())
        lost = sum(s["lost"] for s in summaries.values())
        events = [(nm, e) for nm, s in summaries.items() for e in s.get("roaming", {}).get("events", [])]
        handovers = [e for _, e in events if e["kind"] == "handover"]
        failovers = [(nm, e) for nm, e in events if e["kind"] == "failover"]
        gaps = [e["result_gap_ms"] for e in handovers if e.get("result_gap_ms") is not None]
        taken_gaps = [e["taken_result_gap_ms"] for e in handovers if e.get("taken_result_gap_ms") is not None]
        # Intervals between consecutive Results outside moves, from the per-frame reports.
        steady, rtt_near = [], []
        for nm in agents:
            moves = [e["at_wall_ns"] / 1e9 for who, e in events if who == nm]
            arrivals = []
            for line in (work / f"report-{nm}.jsonl").read_text().splitlines():
                r = json.loads(line)
                if any(abs(r["wall_s"] - t) <= 1.0 for t in moves):
                    rtt_near.append(r["rtt_ms"])
                if r["latency_ms"] is not None:
                    arrivals.append(r["wall_s"] + r["latency_ms"] / 1e3)
            for t0, t1 in zip(arrivals, arrivals[1:]):
                if not any(t0 - 1 <= t <= t1 + 1 for t in moves):
                    steady.append((t1 - t0) * 1e3)
        failover_ms = [(e["first_new_ack_ns"] - killed_at_ns) / 1e6 for _, e in failovers
                       if killed_at_ns and e["first_new_ack_ns"]]
        # Every frame after the re-homing acked: frames lost counts every unacknowledged one.
        fused_twice = sum(m.get("slimsplit_fusion_fused_twice_total", 0) for m in metrics.values())
        duplicates = sum(m.get("slimsplit_fusion_duplicate_frames_total", 0) for m in metrics.values())
        server_usage = {s["region"]: {"cpu_cores": round(s["usage"][0] / max(s["usage_at"] - started, 1e-9), 3),
                                      "peak_rss_mb": round(s["usage"][1], 1),
                                      "frames": int(metrics.get(s["region"], {}).get("slimsplit_fusion_results_total", 0))}
                        for s in servers if "usage" in s}
        out = {
            "benchmark": "fleet",
            "cpu": cpu_model(), "cores": os.cpu_count(),
            "kernels": next(iter(summaries.values()))["kernels"],
            "servers": n, "agents": len(agents), "margin_m": a.margin, "band_m": a.band,
            "lease_ttl_s": a.lease_ttl,
            "killed": servers[kill_index]["region"] if kill_index >= 0 else None,
            "killed_after_s": a.kill_at if kill_index >= 0 else None,
            "signal": a.signal,
            "frames_sent": sent, "frames_acked": acked, "frames_lost": lost,
            # Sweeps no server got: replaced by a newer one while the home was silent (before a
            # failover), or refused by a full send buffer.
            "frames_not_sent": sum(recorded.values()) - sent,
            "fused_twice": int(fused_twice), "duplicate_frames_refused_by_fusion": int(duplicates),
            "mirrored_frames": sum(s.get("roaming", {}).get("mirrored_frames", 0) for s in summaries.values()),
            "handovers": len(handovers), "failovers": len(failovers),
            "results": sum(s["results"] for s in summaries.values()),
            "result_gap_ms": {"p50": pct(gaps, 50), "p99": pct(gaps, 99), "max": max(gaps) if gaps else None,
                              "n": len(gaps)},
            "taken_result_gap_ms": {"p50": pct(taken_gaps, 50), "p99": pct(taken_gaps, 99),
                                    "max": max(taken_gaps) if taken_gaps else None, "n": len(taken_gaps)},
            "result_interval_outside_moves_ms": {"p50": pct(steady, 50), "p99": pct(steady, 99), "n": len(steady)},
            "failover_ms": {"p50": pct(failover_ms, 50), "max": max(failover_ms) if failover_ms else None,
                            "agents": len(failover_ms)},
            "rtt_during_handover_ms": {"p50": pct(rtt_near, 50), "p99": pct(rtt_near, 99), "n": len(rtt_near)},
            "rtt_p99_ms_all": pct([s["rtt_p99_ms"] for s in summaries.values() if "rtt_p99_ms" in s], 99),
            "servers_usage": server_usage,
            "per_agent": {nm: {k: s[k] for k in ("frames", "acked", "lost", "results")}
                          | {"moves": [f"{e['kind']} {e['from'][-4:]}->{e['to'][-4:]}"
                                       for e in s.get("roaming", {}).get("events", [])]}
                          for nm, s in summaries.items()},
            "workdir": str(work),
        }
        text = json.dumps(out, indent=2)
        print(text)
        if a.out:
            Path(a.out).write_text(text + "\n")
        return 0 if lost == 0 and fused_twice == 0 else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())

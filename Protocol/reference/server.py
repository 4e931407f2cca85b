#!/usr/bin/env python3
"""Minimal SlimSplit v1 reference server, for testing agents on loopback.

Binds a ROUTER socket (optionally a Curve server with ZAP domain "slimsplit" and an allow-list
folder of NAME.pub files), answers each Hello with a welcome Control, acks every accepted
FeatureFrame and Boxes message, and counts rejected messages by sender and reason code (PROTOCOL.md §5, §7). It
stops by itself after --max-messages messages or --duration seconds and prints a summary.

Example:
  python3 server.py --bind tcp://127.0.0.1:5555 --key keys/server --allow keys/allow --duration 30
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import slimsplit_ref as ss

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"slimsplit"


class ZapHandler(threading.Thread):
    """ZAP handler (RFC 27) accepting CURVE clients whose public key is in the allow-list."""

    def __init__(self, ctx, allowed: dict[bytes, str]):
        super().__init__(daemon=True, name="zap")
        self.ctx, self.allowed = ctx, allowed  # raw 32-byte public key -> name
        self.refused: Counter[str] = Counter()  # Z85 public key -> refusals ("unauthenticated")
        self.accepted: Counter[str] = Counter()
        self.ready, self.stopping = threading.Event(), threading.Event()

    def run(self) -> None:
        import zmq
        from zmq.utils import z85
        sock = self.ctx.socket(zmq.REP)
        sock.linger = 0
        sock.bind(ZAP_ENDPOINT)
        self.ready.set()
        while not self.stopping.is_set():
            if not sock.poll(100):
                continue
            version, request_id, domain, _address, _identity, mechanism, *creds = \
                sock.recv_multipart()
            key = creds[0] if creds else b""
            name = self.allowed.get(key) if mechanism == b"CURVE" and domain == ZAP_DOMAIN else None
            if name is None:
                self.refused[z85.encode(key).decode() if len(key) == 32 else "?"] += 1
                sock.send_multipart([version, request_id, b"400", b"unauthenticated", b"", b""])
            else:
                self.accepted[name] += 1
                sock.send_multipart([version, request_id, b"200", b"OK", name.encode(), b""])
        sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(2)


def load_allow_list(folder: Path) -> dict[bytes, str]:
    """Map raw public keys to names (file name without .pub) for every .pub in `folder`."""
    from zmq.utils import z85
    return {z85.decode(ss.read_key(p)): p.stem for p in sorted(folder.glob("*.pub"))}


class Server:
    """Session state and counters; `handle` processes one message from one routing id."""

    def __init__(self, send_results: bool):
        self.send_results = send_results
        self.sessions: dict[bytes, dict] = {}
        self.epochs: Counter[str] = Counter()  # per agent_id, so epochs never go back
        self.stats = Counter()
        self.rejected: dict[str, Counter] = defaultdict(Counter)  # sender -> reason -> count

    def reject(self, rid: bytes, reason: str) -> list[bytes]:
        session = self.sessions.get(rid)
        sender = session["agent_id"] if session else rid.hex()
        self.rejected[sender][reason] += 1
        self.stats["rejected"] += 1
        return []

    def handle(self, rid: bytes, data: bytes, received_ns: int, received_mono: int,
               key_name: str | None = None) -> list[bytes]:
        """Return the messages to send back to `rid`. `key_name` is the allow-list name of the
        Curve key that authenticated the connection (ZAP User-Id), None without Curve."""
        self.stats["messages"] += 1
        try:
            msg = ss.decode(data)
        except ss.WireError as exc:
            return self.reject(rid, exc.reason)
        if isinstance(msg, ss.Hello) and key_name is not None and msg.agent_id != key_name:
            return self.reject(rid, "identity_mismatch")
        if isinstance(msg, ss.Hello):
            self.sessions[rid] = {"agent_id": msg.agent_id, "widths": msg.widths, "last": None}
            self.epochs[msg.agent_id] += 1
            self.stats["hellos"] += 1
            return [ss.encode(ss.Control(self.epochs[msg.agent_id], 255, 8, 0.0, 0))]
        if not isinstance(msg, (ss.FeatureFrame, ss.Boxes)):
            return self.reject(rid, "unexpected_kind")
        session = self.sessions.get(rid)
        if session is None:
            return self.reject(rid, "hello_required")
        if msg.agent_id != session["agent_id"]:
            return self.reject(rid, "agent_mismatch")
        if isinstance(msg, ss.FeatureFrame) and msg.width_index >= len(session["widths"]):
            return self.reject(rid, "field_out_of_range")
        if session["last"] is not None and msg.sequence <= session["last"]:
            return self.reject(rid, "stale_sequence")
        session["last"] = msg.sequence
        self.stats["accepted"] += 1
        delay = min(time.monotonic_ns() - received_mono, 2**32 - 1)
        out = [ss.encode(ss.Ack(msg.sequence, received_ns, len(data), delay))]
        if self.send_results:
            det = ss.Detection(0, 0.75, (10.0, 0.5, 0.0), (4.5, 1.875, 1.5), 0.25, 1)
            out.append(ss.encode(ss.Result(msg.sequence, msg.capture_time_ns, time.time_ns(),
                                           [det])))
        return out

    def summary(self, zap: ZapHandler | None) -> dict:
        return {
            "messages": self.stats["messages"], "hellos": self.stats["hellos"],
            "accepted": self.stats["accepted"], "rejected": self.stats["rejected"],
            "rejected_by_sender": {k: dict(v) for k, v in self.rejected.items()},
            "unauthenticated": dict(zap.refused) if zap else {},
            "authenticated": dict(zap.accepted) if zap else {},
        }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bind", default="tcp://127.0.0.1:5555",
                    help="endpoint to bind (default %(default)s; a port of * picks a free one)")
    ap.add_argument("--key", metavar="NAME_PREFIX",
                    help="server key pair NAME_PREFIX.pub / NAME_PREFIX.key; enables Curve")
    ap.add_argument("--secret-key", metavar="FILE", help="server secret key (Z85); enables Curve")
    ap.add_argument("--allow", metavar="DIR", type=Path,
                    help="allow-list folder of client NAME.pub files (required with Curve)")
    ap.add_argument("--max-messages", type=int, default=0,
                    help="stop after this many received messages (0: no limit)")
    ap.add_argument("--duration", type=float, default=0.0,
                    help="stop after this many seconds (0: no limit)")
    ap.add_argument("--results", action="store_true",
                    help="also send a one-detection Result after each Ack")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)

    import zmq
    secret_file = args.secret_key or (f"{args.key}.key" if args.key else None)
    curve = secret_file is not None
    if curve and args.allow is None:
        ap.error("Curve needs --allow DIR")
    ctx = zmq.Context()
    zap = None
    if curve:
        zap = ZapHandler(ctx, load_allow_list(args.allow))
        zap.start()
        zap.ready.wait()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 1000
    sock.heartbeat_ivl, sock.heartbeat_timeout = 1000, 3000
    if curve:
        sock.curve_server = True
        sock.curve_secretkey = ss.read_key(secret_file)
        sock.zap_domain = ZAP_DOMAIN
    sock.bind(args.bind)
    print(f"listening on {sock.getsockopt_string(zmq.LAST_ENDPOINT)}"
          f" ({'curve' if curve else 'null'})", flush=True)

    server = Server(args.results)
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    try:
        while not (args.max_messages and server.stats["messages"] >= args.max_messages):
            wait = 200
            if deadline is not None:
                wait = min(wait, int((deadline - time.monotonic()) * 1000))
                if wait <= 0:
                    break
            if not sock.poll(wait):
                continue
            frames = sock.recv_multipart(copy=False)
            received_ns, received_mono = time.time_ns(), time.monotonic_ns()
            parts = [f.bytes for f in frames]
            rid = parts[0]
            if len(parts) != 2:  # a SlimSplit message is exactly one part
                server.stats["messages"] += 1
                server.reject(rid, "length_mismatch")
                continue
            # The ZAP handler's user id (the key's allow-list name) travels with every message.
            key_name = frames[1].get("User-Id") if curve else None
            for reply in server.handle(rid, parts[1], received_ns, received_mono, key_name=key_name):
                sock.send_multipart([rid, reply])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if zap:
            zap.stop()
        ctx.term()
    summary = server.summary(zap)
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

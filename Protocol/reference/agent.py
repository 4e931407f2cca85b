#!/usr/bin/env python3
"""SlimSplit v1 reference agent: sends synthetic feature frames and measures acks.

Connects a DEALER socket (a CurveZMQ client when keys are given), sends a Hello, waits for the
server's welcome Control, sends N FeatureFrames (C=16, H=32, W=32 sparse synthetic features,
identity pose; or Boxes messages with --payload), collects the Acks (and any Result or Control) and prints a summary with the
round-trip times. Exit status 0 iff the Control arrived and every frame was acked before the
timeout.

Example:
  python3 agent.py --endpoint tcp://127.0.0.1:5555 --server-key keys/server.pub \\
      --key keys/agent-1 --frames 20 --interval 0.05 --bits 4 --lz4 --mask --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import slimsplit_ref as ss

C, H, W = 16, 32, 32
WIDTHS = [250, 500, 750, 1000]


def synthetic_frame(agent_id: str, sequence: int, bits: int, width_index: int, *, mask: bool,
                    lz4: bool) -> ss.FeatureFrame:
    """A sparse C×H×W map: mostly the zero point, a few other values; optional 25 % mask."""
    cell_mask = [1 if (i % W + 3 * (i // W) + sequence) % 4 == 0 else 0 for i in range(H * W)] \
        if mask else None
    cells = [i for i in range(H * W) if cell_mask is None or cell_mask[i]]
    zp = 1 << (bits - 1)
    values = [(c + i + sequence) % (1 << bits) if (7 * c + 3 * i + sequence) % 11 == 0 else zp
              for c in range(C) for i in cells]
    payload, raw_length = ss.build_payload(cell_mask, values, bits, 0)
    codec = 0
    if lz4:
        packed, _ = ss.build_payload(cell_mask, values, bits, 1)
        if len(packed) < raw_length:  # §4.2: use codec 0 when LZ4 does not help
            payload, codec = packed, 1
    return ss.FeatureFrame(agent_id, sequence, time.time_ns(), (0.0, 0.0, 0.0),
                           (0.0, 0.0, 0.0, 1.0), "ref-model", width_index, bits, C, H, W, 0,
                           [0.0625] * C, [zp] * C, int(mask), codec, raw_length, payload)


def synthetic_boxes(agent_id: str, sequence: int) -> ss.Boxes:
    """The agent's own detections (§4.7): three cars around it, identity pose."""
    dets = [ss.Detection(0, 0.5 + 0.1 * k, (8.0 * (k + 1), 2.0 - 2.0 * k, 0.8), (4.5, 1.875, 1.6),
                         0.25 * k, 0) for k in range(3)]
    return ss.Boxes(agent_id, sequence, time.time_ns(), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), dets)


class Agent:
    """Socket, caps from the latest Control, and the bookkeeping of sent and acked frames."""

    def __init__(self, args):
        import zmq
        self.zmq, self.args = zmq, args
        self.ctx = zmq.Context()
        s = self.sock = self.ctx.socket(zmq.DEALER)
        s.linger = 500
        s.heartbeat_ivl, s.heartbeat_timeout = 1000, 3000
        s.reconnect_ivl, s.reconnect_ivl_max = 100, 5000
        if args.server_key:
            s.curve_serverkey = ss.read_key(args.server_key)
            s.curve_publickey = ss.read_key(args.public_key)
            s.curve_secretkey = ss.read_key(args.secret_key)
        s.connect(args.endpoint)
        self.epoch = -1
        self.caps = (len(WIDTHS) - 1, 8, 0.0)  # max width index, max bits, max rate
        self.control_received = False
        self.sent: dict[int, int] = {}  # sequence -> monotonic send time (ns)
        self.rtts: dict[int, float] = {}  # sequence -> ms
        self.results = 0
        self.handovers: list[tuple[int, str, str]] = []
        self.errors: list[str] = []

    def send(self, msg) -> bool:
        try:
            self.sock.send(ss.encode(msg), self.zmq.NOBLOCK)
            return True
        except self.zmq.Again:
            self.errors.append(f"send of {type(msg).__name__} would block: dropped")
            return False

    def pump(self, until: float, stop=lambda: False) -> None:
        """Handle incoming messages until the monotonic time `until` or until `stop()`."""
        while not stop():
            left = until - time.monotonic()
            if left <= 0:
                return
            if not self.sock.poll(max(1, int(left * 1000))):
                continue
            data = self.sock.recv()
            now = time.monotonic_ns()
            try:
                msg = ss.decode(data)
            except ss.WireError as exc:
                self.errors.append(f"rejected message from server: {exc.reason}")
                continue
            if isinstance(msg, ss.Control):
                if msg.epoch > self.epoch:  # agents ignore older epochs
                    self.epoch, self.control_received = msg.epoch, True
                    self.caps = (msg.max_width_index, msg.max_bits, msg.max_rate_hz)
            elif isinstance(msg, ss.Ack):
                if msg.sequence in self.sent and msg.sequence not in self.rtts:
                    self.rtts[msg.sequence] = (now - self.sent[msg.sequence]) / 1e6
                else:
                    self.errors.append(f"ack for unknown or repeated sequence {msg.sequence}")
            elif isinstance(msg, ss.Result):
                self.results += 1
            elif isinstance(msg, ss.Handover):
                # A single-session peer: it stays with this server (allowed by §4.6), and says so.
                self.handovers.append((msg.action, msg.region, msg.endpoint))
            else:
                self.errors.append(f"unexpected_kind: {type(msg).__name__} from server")

    def run(self) -> None:
        a = self.args
        hello = ss.Hello(a.agent_id, "ref-model", bytes(32), 1, WIDTHS, 0xFF)
        self.send(hello)
        self.epoch = -1  # a fresh session: accept the server's welcome whatever its epoch
        self.pump(time.monotonic() + a.timeout, lambda: self.control_received)
        if not self.control_received:
            self.errors.append(f"no Control from the server within {a.timeout} s "
                               "(server down, wrong server key, or agent key not allow-listed?)")
            return
        next_send = time.monotonic()
        for sequence in range(1, a.frames + 1):
            self.pump(next_send)
            max_width_index, max_bits, max_rate = self.caps
            if a.payload == "boxes" or (a.payload == "mixed" and sequence % 2 == 0):
                frame = synthetic_boxes(a.agent_id, sequence)
            else:
                frame = synthetic_frame(a.agent_id, sequence, min(a.bits, max_bits),
                                        min(len(WIDTHS) - 1, max_width_index), mask=a.mask, lz4=a.lz4)
            if self.send(frame):
                self.sent[sequence] = time.monotonic_ns()
            interval = max(a.interval, 1.0 / max_rate if max_rate > 0 else 0.0)
            next_send = time.monotonic() + interval
        self.pump(time.monotonic() + a.timeout, lambda: len(self.rtts) == len(self.sent))
        missing = sorted(set(range(1, a.frames + 1)) - set(self.rtts))
        if missing:
            self.errors.append(f"{len(missing)} frame(s) not acked within {a.timeout} s: "
                               f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")

    def summary(self) -> dict:
        rtts = list(self.rtts.values())
        return {
            "agent_id": self.args.agent_id, "control_received": self.control_received,
            "frames_sent": len(self.sent), "acks": len(self.rtts), "results": self.results, "handovers": len(self.handovers),
            "rtt_ms_p50": round(statistics.median(rtts), 3) if rtts else None,
            "rtt_ms_p99": round(sorted(rtts)[min(len(rtts) - 1, int(0.99 * len(rtts)))], 3) if rtts else None,
            "rtt_ms_max": round(max(rtts), 3) if rtts else None,
            "errors": self.errors,
        }

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:5555",
                    help="server endpoint (default %(default)s)")
    ap.add_argument("--agent-id", default="ref-1", help="agent identifier (default %(default)s)")
    ap.add_argument("--server-key", metavar="FILE",
                    help="server public key (Z85 file); without it Curve is off (NULL mechanism)")
    ap.add_argument("--key", metavar="NAME_PREFIX",
                    help="own key pair NAME_PREFIX.pub / NAME_PREFIX.key")
    ap.add_argument("--public-key", metavar="FILE", help="own public key (Z85 file)")
    ap.add_argument("--secret-key", metavar="FILE", help="own secret key (Z85 file)")
    ap.add_argument("--frames", type=int, default=10, help="frames to send (default %(default)s)")
    ap.add_argument("--payload", choices=("map", "boxes", "mixed"), default="map",
                    help="send feature maps, Boxes (§4.7), or both in turn (default %(default)s)")
    ap.add_argument("--interval", type=float, default=0.1,
                    help="seconds between frames (default %(default)s)")
    ap.add_argument("--bits", type=int, default=8, choices=range(1, 9), metavar="1..8",
                    help="feature bit depth (default %(default)s)")
    ap.add_argument("--lz4", action="store_true", help="LZ4-compress payloads when it helps")
    ap.add_argument("--mask", action="store_true", help="send a bitmap mask (25%% of cells)")
    ap.add_argument("--timeout", type=float, default=5.0,
                    help="seconds to wait for the Control, and for the Acks after the last frame")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    if args.key:
        if args.public_key or args.secret_key:
            ap.error("use either --key or --public-key/--secret-key")
        args.public_key, args.secret_key = f"{args.key}.pub", f"{args.key}.key"
    if bool(args.public_key) != bool(args.secret_key):
        ap.error("--public-key and --secret-key go together")
    if bool(args.server_key) != bool(args.public_key):
        ap.error("Curve needs both --server-key and the agent's own keys (--key or "
                 "--public-key/--secret-key); give neither to run without Curve")

    agent = Agent(args)
    try:
        agent.run()
    except KeyboardInterrupt:
        agent.errors.append("interrupted")
    finally:
        agent.close()
    s = agent.summary()
    ok = s["control_received"] and s["acks"] == args.frames
    if args.json:
        print(json.dumps(s))
    else:
        print(f"agent {s['agent_id']}: control {'received' if s['control_received'] else 'MISSING'}"
              f", {s['frames_sent']} frames sent, {s['acks']} acked, {s['results']} results, "
              f"RTT p50 {s['rtt_ms_p50']} ms, max {s['rtt_ms_max']} ms")
        for e in s["errors"]:
            print(f"error: {e}")
    if not ok:
        print("FAILED: " + ("; ".join(s["errors"]) or "not every frame was acked"),
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

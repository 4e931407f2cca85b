#!/usr/bin/env python3
"""A Foxglove WebSocket client written from the protocol's public specification
(https://github.com/foxglove/ws-protocol, docs/spec.md, subprotocol foxglove.websocket.v1), on the
`websockets` package; no SlimSplit code. It connects (retrying until --seconds while the server
starts), checks serverInfo and advertise (every channel JSON-encoded, its schema valid JSON),
subscribes to every channel and decodes Message Data frames (opcode 0x01, subscription id u32 LE,
log time u64 LE, payload). Prints a JSON summary; exit 1 unless every --want topic got --min
well-formed messages within --seconds.

    foxglove_client.py ws://127.0.0.1:8765/ --want /fusion/detections --want /agents/state
"""
import argparse
import asyncio
import json
import struct
import sys
import time

import websockets


def check_message(topic, m):
    """What is wrong with a message of a topic, or None."""
    if topic == "/fusion/detections":
        ents = m.get("entities")
        if not isinstance(ents, list) or not ents:
            return "SceneUpdate without entities"
        for e in ents:
            for c in e.get("cubes", []):
                if not all(k in c.get("pose", {}).get("position", {}) for k in "xyz") or "size" not in c:
                    return f"cube without pose or size: {c}"
        return None
    if topic == "/agents/poses":
        ents = m.get("entities")
        if not isinstance(ents, list) or not all(e.get("arrows") and e.get("texts") for e in ents):
            return "agent poses without arrows and labels"
        return None
    if topic == "/agents/state":
        agents = m.get("agents")
        if not isinstance(agents, list) or not agents or not all("id" in a and "bits" in a for a in agents):
            return "agent state without agents"
        return None
    return None


async def session(args):
    deadline = time.monotonic() + args.seconds
    url = args.url + (("&" if "?" in args.url else "?") + "token=" + args.token if args.token else "")
    while True:
        try:
            ws = await websockets.connect(url, subprotocols=["foxglove.websocket.v1"], max_size=None)
            break
        except (OSError, websockets.InvalidHandshake, websockets.InvalidStatus) as e:
            if time.monotonic() > deadline:
                return {"error": f"no connection: {e!r}"}
            await asyncio.sleep(0.3)
    out = {"subprotocol": ws.subprotocol, "counts": {}, "samples": {}, "problems": []}
    async with ws:
        info = json.loads(await ws.recv())
        assert info.get("op") == "serverInfo", info
        out["server"] = info.get("name")
        adv = json.loads(await ws.recv())
        assert adv.get("op") == "advertise", adv
        channels = {c["id"]: c for c in adv["channels"]}
        for c in channels.values():
            assert c["encoding"] == "json", c
            json.loads(c["schema"])  # the advertised JSON Schema parses
        out["topics"] = sorted(c["topic"] for c in channels.values())
        subs = {i + 1: cid for i, cid in enumerate(channels)}
        await ws.send(json.dumps({"op": "subscribe", "subscriptions": [{"id": s, "channelId": c} for s, c in subs.items()]}))
        want = set(args.want)
        counts = {t: 0 for t in out["topics"]}
        while time.monotonic() < deadline and not all(counts.get(t, 0) >= args.min for t in want):
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if isinstance(msg, str):
                m = json.loads(msg)
                if m.get("op") == "status":
                    out["problems"].append(m.get("message"))
                continue
            if msg[0] != 1:
                continue
            sub, log_time = struct.unpack_from("<IQ", msg, 1)
            topic = channels[subs[sub]]["topic"]
            payload = json.loads(msg[13:])
            problem = check_message(topic, payload)
            if problem:
                out["problems"].append(f"{topic}: {problem}")
                continue
            counts[topic] += 1
            out["samples"].setdefault(topic, payload)
        out["counts"] = counts
    out["ok"] = all(counts.get(t, 0) >= args.min for t in want) and not out["problems"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--want", action="append", default=[], help="topic that must get --min messages")
    ap.add_argument("--min", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--token")
    args = ap.parse_args()
    out = asyncio.run(session(args))
    samples = out.pop("samples", {})
    if "/agents/state" in samples:
        out["agents"] = sorted(a["id"] for a in samples["/agents/state"]["agents"])
    if "/fusion/detections" in samples:
        out["boxes_in_first_update"] = sum(len(e.get("cubes", [])) for e in samples["/fusion/detections"]["entities"])
    print(json.dumps(out))
    sys.exit(0 if out.get("ok") else 1)


if __name__ == "__main__":
    main()

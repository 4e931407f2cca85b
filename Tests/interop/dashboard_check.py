#!/usr/bin/env python3
"""Loads the live dashboard in headless Chromium, waits until it shows live data (every expected
agent in its table and fused boxes on the canvas), and saves a screenshot. Drives Chromium over
its DevTools protocol (a WebSocket, with the `websockets` package). Prints a JSON summary; exit 1
if the page did not show live data within --seconds.

    dashboard_check.py http://127.0.0.1:8765/ --agents 3 --screenshot docs/dashboard.png
"""
import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def check(args, devtools_port):
    deadline = time.monotonic() + args.seconds
    while True:
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list", timeout=2))
            page = next(t for t in targets if t.get("type") == "page")
            break
        except (OSError, StopIteration, ValueError):
            if time.monotonic() > deadline:
                return {"error": "Chromium's DevTools endpoint did not come up"}
            await asyncio.sleep(0.2)
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
        ids = iter(range(1, 1 << 30))

        async def call(method, **params):
            i = next(ids)
            await ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                m = json.loads(await ws.recv())
                if m.get("id") == i:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error']}")
                    return m.get("result", {})

        await call("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height, deviceScaleFactor=1, mobile=False)
        await call("Page.navigate", url=args.url)
        probe = (
            "JSON.stringify({boxes: +document.getElementById('nboxes').textContent,"
            " agents: [...document.querySelectorAll('#agents tr td:first-child')].map(t => t.textContent),"
            " status: document.getElementById('status').textContent})"
        )
        state = {}
        while time.monotonic() < deadline:
            try:
                r = await call("Runtime.evaluate", expression=probe, returnByValue=True)
                state = json.loads(r["result"]["value"])
            except (RuntimeError, KeyError, TypeError, ValueError):
                state = {}
            if state.get("boxes", 0) > 0 and len(state.get("agents", [])) >= args.agents and state.get("status") == "live":
                break
            await asyncio.sleep(0.25)
        ok = state.get("boxes", 0) > 0 and len(state.get("agents", [])) >= args.agents
        if args.screenshot:
            await asyncio.sleep(0.5)  # a few more frames drawn
            shot = await call("Page.captureScreenshot", format="png")
            with open(args.screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        return {"ok": ok, **state, "screenshot": args.screenshot}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--agents", type=int, default=1, help="agents the table must list")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--screenshot")
    ap.add_argument("--width", type=int, default=1500)
    ap.add_argument("--height", type=int, default=820)
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        print(json.dumps({"ok": False, "error": "no chromium on PATH (apt-get install chromium)"}))
        sys.exit(1)
    port = free_port()
    profile = tempfile.mkdtemp(prefix="slimsplit-chromium-")
    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--remote-debugging-port={port}",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = asyncio.run(check(args, port))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(out))
    sys.exit(0 if out.get("ok") else 1)


if __name__ == "__main__":
    main()

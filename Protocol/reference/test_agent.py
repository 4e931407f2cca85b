"""agent.py against server.py over loopback TCP (127.0.0.1 only), with and without Curve."""

import json
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import slimsplit_ref as ss

try:
    import zmq
except ImportError:  # pragma: no cover
    zmq = None

HERE = Path(__file__).resolve().parent


def run_server(*args):
    proc = subprocess.Popen([sys.executable, str(HERE / "server.py"), "--bind",
                             "tcp://127.0.0.1:*", "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline().split()
    if len(first) < 3 or first[:2] != ["listening", "on"]:
        proc.kill()
        raise RuntimeError(f"server did not start: {first} {proc.stderr.read()}")
    return proc, first[2]


def run_agent(endpoint, *args):
    out = subprocess.run([sys.executable, str(HERE / "agent.py"), "--endpoint", endpoint,
                          "--json", *args], capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout), out.stderr


def server_summary(proc):
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


@unittest.skipIf(zmq is None, "pyzmq is not installed: skipping the agent/server loopback tests")
class TestLoopback(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="slimsplit-keys-"))
        self.addCleanup(shutil.rmtree, self.tmp)

    def keypair(self, name):
        public, secret = zmq.curve_keypair()
        ss.write_keypair(self.tmp, name, public, secret)
        return self.tmp / name

    def test_curve(self):
        server, agent, intruder = (self.keypair(n) for n in ("server", "agent-1", "intruder"))
        allow = self.tmp / "allow"
        allow.mkdir()
        shutil.copy(f"{agent}.pub", allow / "agent-1.pub")
        proc, endpoint = run_server("--key", str(server), "--allow", str(allow),
                                    "--max-messages", "6", "--duration", "30")
        try:
            rc, out, err = run_agent(endpoint, "--server-key", f"{server}.pub", "--key",
                                     str(intruder), "--frames", "2", "--timeout", "1")
            self.assertNotEqual(rc, 0)
            self.assertFalse(out["control_received"])
            self.assertIn("no Control", err)
            rc, out, err = run_agent(endpoint, "--server-key", f"{server}.pub", "--public-key",
                                     f"{agent}.pub", "--secret-key", f"{agent}.key", "--agent-id", "agent-1",
                                     "--frames", "5", "--interval", "0.01", "--bits", "4",
                                     "--lz4", "--mask", "--timeout", "10")
            self.assertEqual(rc, 0, err)
            self.assertTrue(out["control_received"])
            self.assertEqual((out["frames_sent"], out["acks"], out["errors"]), (5, 5, []))
            self.assertGreater(out["rtt_ms_max"], 0)
        finally:
            summary = server_summary(proc)
        self.assertEqual((summary["hellos"], summary["accepted"], summary["rejected"]), (1, 5, 0))
        self.assertEqual(summary["authenticated"], {"agent-1": 1})
        intruder_key = ss.read_key(f"{intruder}.pub").decode()
        self.assertGreaterEqual(summary["unauthenticated"].get(intruder_key, 0), 1)

    def test_key_is_the_identity(self):
        server, agent, other = (self.keypair(n) for n in ("server", "agent-1", "agent-2"))
        allow = self.tmp / "allow"
        allow.mkdir()
        shutil.copy(f"{agent}.pub", allow / "agent-1.pub")
        shutil.copy(f"{other}.pub", allow / "agent-2.pub")
        proc, endpoint = run_server("--key", str(server), "--allow", str(allow),
                                    "--max-messages", "1", "--duration", "30")
        try:
            # agent-2's key, claiming to be agent-1: no Control, the Hello is rejected.
            rc, out, err = run_agent(endpoint, "--server-key", f"{server}.pub", "--public-key",
                                     f"{other}.pub", "--secret-key", f"{other}.key", "--agent-id", "agent-1",
                                     "--frames", "2", "--timeout", "1")
            self.assertNotEqual(rc, 0)
            self.assertFalse(out["control_received"])
        finally:
            summary = server_summary(proc)
        self.assertEqual(summary["hellos"], 0)
        self.assertGreaterEqual(sum(r.get("identity_mismatch", 0) for r in summary["rejected_by_sender"].values()), 1)

    def test_null_mechanism_with_results(self):
        proc, endpoint = run_server("--results", "--max-messages", "4", "--duration", "30")
        try:
            rc, out, err = run_agent(endpoint, "--agent-id", "ref-null", "--frames", "3",
                                     "--interval", "0", "--bits", "1")
            self.assertEqual(rc, 0, err)
            self.assertEqual(out["acks"], 3)
        finally:
            summary = server_summary(proc)
        self.assertEqual(summary["accepted"], 3)

    def test_no_server(self):
        rc, out, err = run_agent("tcp://127.0.0.1:9", "--frames", "1", "--timeout", "0.5")
        self.assertEqual(rc, 1)
        self.assertEqual(out["frames_sent"], 0)


class TestServerSession(unittest.TestCase):
    """Session rules of §5 on the server's handler, without sockets."""

    def test_session_rules(self):
        from server import Server
        srv = Server(send_results=False)
        a, b = b"rid-a", b"rid-b"
        hello = ss.Hello("ag", "m", bytes(32), 1, [500, 1000], 0xFF)
        payload, raw = ss.build_payload(None, [1, 2, 3], 8, 0)

        def frame(seq, agent_id="ag", width_index=1):
            return ss.encode(ss.FeatureFrame(agent_id, seq, 0, (0.0,) * 3, (0.0, 0.0, 0.0, 1.0),
                                             "m", width_index, 8, 3, 1, 1, 1, None, None, 0, 0,
                                             raw, payload))

        def handle(rid, data):
            return [ss.decode(m) for m in srv.handle(rid, data, 0, 0)]

        self.assertEqual(handle(a, frame(1)), [])  # hello_required
        (control,) = handle(a, ss.encode(hello))
        self.assertEqual((control.epoch, control.reason), (1, 0))
        self.assertEqual(handle(a, frame(5))[0].sequence, 5)
        self.assertEqual(handle(a, frame(5)), [])  # stale_sequence (replay)
        self.assertEqual(handle(a, frame(6, "other")), [])  # agent_mismatch
        self.assertEqual(handle(a, frame(7, width_index=2)), [])  # no such width
        self.assertEqual(handle(a, ss.encode(ss.Ack(1, 2, 3, 4))), [])  # unexpected_kind
        self.assertEqual(handle(b, b"garbage"), [])  # truncated
        (control,) = handle(a, ss.encode(hello))  # re-Hello: sequences start over
        self.assertEqual(control.epoch, 2)
        self.assertEqual(handle(a, frame(1))[0].sequence, 1)
        self.assertEqual(srv.rejected[a.hex()], {"hello_required": 1})
        self.assertEqual(srv.rejected["ag"], {"stale_sequence": 1, "agent_mismatch": 1,
                                              "field_out_of_range": 1, "unexpected_kind": 1})
        self.assertEqual(srv.rejected[b.hex()], {"truncated": 1})


if __name__ == "__main__":
    unittest.main()

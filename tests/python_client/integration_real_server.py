"""The Python client against the real flashmorphd and flashmorph-worker (run with Debian's /usr/bin/python3).

Env: FM_FLASHMORPHD_BIN, FM_WORKER_BIN, FM_SOURCE_DIR; PYTHONPATH=<build>/client_python. Starts a server and one
worker on loopback, converts the demo model (uniform selection, CPU-sized budgets) through the client package,
then checks watch, list, get, manifest and download (sha256) plus cancel and error codes.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

import flashmorph_client
from flashmorph_client import client as fmc

SRC = os.environ["FM_SOURCE_DIR"]
DEMO = os.path.join(SRC, "models", "demo", "qwen3-demo")


def small_spec(seed, method="UNIFORM"):
    return {
        "model": {"uri": DEMO},
        "budgets": [{"fullAttentionRatio": 0.25}],
        "selectionMethod": method,
        "seed": str(seed),
        "calibration": {"trainTokens": "2048"},
        "gates": {"trainTokens": "1200", "minContextTokens": 112, "maxContextTokens": 128, "passkeysPerSample": 1},
        "postTraining": {"distillTokens": "512", "longContextTokens": "0"},
        "evaluation": {"needleContextTokens": [128], "needleSamplesPerLength": 1, "heldOutTokens": "256"},
    }


class RealServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="fm-pyit-")
        port_file = os.path.join(cls.root, "port.json")
        cls.server_log = open(os.path.join(cls.root, "server.log"), "w")
        cls.server = subprocess.Popen(
            [os.environ["FM_FLASHMORPHD_BIN"], "--listen", "127.0.0.1:0", "--data-dir", os.path.join(cls.root, "data"),
             "--port-file", port_file, "--model-root", os.path.join(SRC, "models"), "--heartbeat-seconds", "1",
             "--lease-seconds", "5"],
            stdout=cls.server_log, stderr=subprocess.STDOUT)
        for _ in range(300):
            if os.path.exists(port_file):
                break
            time.sleep(0.05)
        port = json.load(open(port_file))["port"]
        cls.target = "127.0.0.1:%d" % port
        cls.worker_log = open(os.path.join(cls.root, "worker.log"), "w")
        cls.worker = subprocess.Popen(
            [os.environ["FM_WORKER_BIN"], "--server", cls.target, "--worker-id", "py-worker", "--work-root",
             os.path.join(cls.root, "work"), "--device", "cpu", "--threads", "1"],
            stdout=cls.worker_log, stderr=subprocess.STDOUT)
        cls.client = flashmorph_client.Client(cls.target, timeout=30)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        for p in (cls.worker, cls.server):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(cls.root, ignore_errors=True)

    def logs(self):
        out = ""
        for name in ("server.log", "worker.log"):
            with open(os.path.join(self.root, name)) as f:
                out += "== %s\n%s" % (name, f.read()[-8000:])
        return out

    def test_convert_watch_download(self):
        op = self.client.submit(small_spec(3), request_id="py-it-1")
        name = fmc.job_name(op)
        again = self.client.submit(small_spec(3), request_id="py-it-1")
        self.assertEqual(fmc.job_name(again), name)  # idempotent
        events = list(self.client.watch(name))
        job = self.client.get(name)
        self.assertEqual(job.state, fmc.ConversionJob.SUCCEEDED, job.error.message + self.logs())
        kinds = [e.WhichOneof("event") for e in events]
        self.assertIn("stage_change", kinds)
        self.assertIn("layout_selected", kinds)
        self.assertEqual(kinds[-2:], ["result", "state_change"])
        seqs = [e.sequence for e in events]
        self.assertEqual(seqs, sorted(set(seqs)))
        self.assertIn(name, [j.name for j in self.client.list()])
        out = os.path.join(self.root, "download")
        self.client.download(name, out)
        manifest = self.client.manifest(name)
        self.assertGreater(len(manifest.files), 3)
        for f in manifest.files:
            with open(os.path.join(out, f.path), "rb") as fh:
                self.assertEqual(hashlib.sha256(fh.read()).hexdigest(), f.sha256, f.path)
        config = json.load(open(os.path.join(out, "config.json")))
        self.assertEqual(config["layer_types"].count("full_attention"), 2)

    def test_errors_and_cancel(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.client.get("jobs/doesnotexist")
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)
        bad = small_spec(1)
        bad["budgets"] = [{"fullAttentionRatio": 1.5}]
        with self.assertRaises(grpc.RpcError) as ctx:
            self.client.submit(bad)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        # A job queued behind the other test's (or running) is cancelled.
        spec = small_spec(9, method="FLASHMORPH")
        spec["gates"]["trainTokens"] = "100000000"
        name = fmc.job_name(self.client.submit(spec))
        self.client.cancel(name)
        for _ in self.client.watch(name):
            pass
        self.assertEqual(self.client.get(name).state, fmc.ConversionJob.CANCELLED)


if __name__ == "__main__":
    unittest.main(verbosity=2)

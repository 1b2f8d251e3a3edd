"""flashmorph_client against an in-process fake ConversionService (grpc.server on 127.0.0.1:0).

Run with the system Python after building the CMake target fm_client_python:
    PYTHONPATH=<build>/client_python /usr/bin/python3 -m unittest discover -s tests/python_client -v
"""

import hashlib
import os
import random
import shutil
import tempfile
import threading
import unittest
from concurrent import futures

import grpc

import flashmorph_client as fc
from flashmorph_client import _stubs

pb = _stubs.conversion_service_pb2
job_pb2 = _stubs.conversion_job_pb2
event_pb2 = _stubs.job_event_pb2
artifact_pb2 = _stubs.artifact_pb2
J = job_pb2.ConversionJob


class FakeService(_stubs.conversion_service_pb2_grpc.ConversionServiceServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.creates, self.create_unavailable = [], 0
        self.auth = []
        self.jobs = []
        self.page = 2
        self.events, self.watch_limits, self.watch_after = [], [], []
        self.files, self.chunk, self.read_limits, self.reads = {}, 50, [], []
        self.sha_override = {}

    def CreateConversionJob(self, request, context):
        with self.lock:
            self.auth.append(dict(context.invocation_metadata()).get("authorization"))
            self.creates.append(request)
            if len(self.creates) <= self.create_unavailable:
                context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        op = fc.operations_pb2.Operation(name="operations/abc")
        op.metadata.Pack(job_pb2.ConversionMetadata(job="jobs/abc", state=J.PENDING))
        return op

    def GetConversionJob(self, request, context):
        if request.name != "jobs/abc":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such job")
        return J(name="jobs/abc", state=J.SUCCEEDED)

    def ListConversionJobs(self, request, context):
        start = int(request.page_token or 0)
        resp = pb.ListConversionJobsResponse(jobs=self.jobs[start:start + self.page])
        if start + self.page < len(self.jobs):
            resp.next_page_token = str(start + self.page)
        return resp

    def WatchConversionJob(self, request, context):
        with self.lock:
            call = len(self.watch_after)
            self.watch_after.append(request.after_sequence)
            limit = self.watch_limits[call] if call < len(self.watch_limits) else -1
        sent = 0
        for e in self.events:
            if e.sequence <= request.after_sequence:
                continue
            if sent == limit:
                break
            yield e
            sent += 1
        if limit >= 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def GetArtifactManifest(self, request, context):
        m = artifact_pb2.ArtifactManifest(job=request.job)
        text = ""
        for path in sorted(self.files):
            sha = self.sha_override.get(path, hashlib.sha256(self.files[path]).hexdigest())
            m.files.add(path=path, size_bytes=len(self.files[path]), sha256=sha)
            text += "%s  %s\n" % (sha, path)
        m.manifest_sha256 = hashlib.sha256(text.encode()).hexdigest()
        return m

    def ReadArtifact(self, request, context):
        with self.lock:
            call = len(self.reads)
            self.reads.append((request.path, request.read_offset))
            limit = self.read_limits[call] if call < len(self.read_limits) else -1
        data = self.files[request.path]
        sent = 0
        for off in range(request.read_offset, len(data), self.chunk):
            if sent == limit:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
            yield pb.ReadArtifactResponse(data=data[off:off + self.chunk], offset=off)
            sent += 1


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeService()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        _stubs.conversion_service_pb2_grpc.add_ConversionServiceServicer_to_server(self.fake, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.client = fc.Client("127.0.0.1:%d" % port, token="tok", initial_backoff=0.001, max_backoff=0.004,
                                max_attempts=6)
        self.dir = tempfile.mkdtemp()

    def tearDown(self):
        self.client.close()
        self.server.stop(None)
        shutil.rmtree(self.dir)

    def test_submit_dict_retries_with_one_request_id(self):
        self.fake.create_unavailable = 2
        spec = {"model": {"uri": "/m"}, "budgets": [{"fullAttentionLayers": 4}, {"full_attention_ratio": 0.25}],
                "selectionMethod": "NLL", "gates": {"sparsityLambda": 0}, "seed": "7"}
        op = self.client.submit(spec, tenant="t")
        self.assertEqual(fc.job_name(op), "jobs/abc")
        self.assertEqual(len(self.fake.creates), 3)
        ids = {c.request_id for c in self.fake.creates}
        self.assertEqual(len(ids), 1)
        self.assertRegex(ids.pop(), r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        r = self.fake.creates[0]
        self.assertEqual(r.tenant, "t")
        self.assertEqual(r.spec.budgets[0].full_attention_layers, 4)
        self.assertEqual(r.spec.budgets[1].full_attention_ratio, 0.25)
        self.assertTrue(r.spec.gates.HasField("sparsity_lambda"))
        self.assertEqual(r.spec.seed, 7)
        self.assertEqual(self.fake.auth, ["Bearer tok"] * 3)

    def test_list_follows_pages_and_errors_surface(self):
        self.fake.jobs = [J(name="jobs/j%d" % i) for i in range(5)]
        self.assertEqual([j.name for j in self.client.list(states=["pending"])], ["jobs/j%d" % i for i in range(5)])
        with self.assertRaises(grpc.RpcError) as e:
            self.client.get("nope")
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_watch_resumes_without_loss_or_repeat(self):
        seqs = [1, 2, 4, 7, 8, 11, 12, 20]
        for s in seqs[:-1]:
            e = event_pb2.JobEvent(job="jobs/abc", sequence=s)
            e.progress.step = s
            self.fake.events.append(e)
        last = event_pb2.JobEvent(job="jobs/abc", sequence=seqs[-1])
        last.state_change.previous = J.RUNNING
        last.state_change.current = J.SUCCEEDED
        self.fake.events.append(last)
        self.fake.watch_limits = [3, 0, 2, 1]
        got = [e.sequence for e in self.client.watch("abc")]
        self.assertEqual(got, seqs)
        want_after, n = [0], 0
        for limit in self.fake.watch_limits:
            n += limit
            want_after.append(seqs[n - 1] if n else 0)
        self.assertEqual(self.fake.watch_after, want_after)
        # Past the end: the job is asked, the generator ends.
        self.fake.watch_after, self.fake.watch_limits = [], []
        self.assertEqual(list(self.client.watch("abc", after_sequence=20)), [])

    def test_download_resumes_and_checks_sha256(self):
        rng = random.Random(1)
        weights = bytes(rng.getrandbits(8) for _ in range(700))
        self.fake.files = {"config.json": b"{}", "model.safetensors": weights}
        out = os.path.join(self.dir, "out")
        os.makedirs(out)
        with open(os.path.join(out, "model.safetensors.part"), "wb") as f:
            f.write(weights[:120])
        self.fake.read_limits = [-1, 3]
        paths = self.client.download("abc", out)
        self.assertEqual(self.fake.reads, [("config.json", 0), ("model.safetensors", 120),
                                           ("model.safetensors", 120 + 3 * self.fake.chunk)])
        with open(paths[1], "rb") as f:
            self.assertEqual(f.read(), weights)
        self.assertFalse(os.path.exists(paths[1] + ".part"))
        # Complete files are skipped.
        self.fake.reads = []
        self.client.download("abc", out)
        self.assertEqual(self.fake.reads, [])
        # A wrong hash is detected and the .part removed.
        os.remove(paths[1])
        self.fake.sha_override["model.safetensors"] = "0" * 64
        with self.assertRaises(fc.ArtifactError):
            self.client.download("abc", out)
        self.assertFalse(os.path.exists(paths[1]))
        self.assertFalse(os.path.exists(paths[1] + ".part"))

    def test_unsafe_manifest_paths_are_refused(self):
        for bad in ["../evil", "/abs", "a/../../b", "a//b", "x.part"]:
            self.fake.files = {"config.json": b"{}", bad: b"evil"}
            self.fake.reads = []
            with self.assertRaises(fc.ArtifactError):
                self.client.download("abc", os.path.join(self.dir, "out"))
            self.assertEqual(self.fake.reads, [])


if __name__ == "__main__":
    unittest.main()

"""Client of the FlashMorph ConversionService (see docs/API.md and proto/flashmorph/v1/).

Every call sends "authorization: Bearer <token>" when a token is given. Unary calls have a deadline (``timeout``)
and are retried on UNAVAILABLE with exponential backoff; ``submit`` retries with one request_id, so a retry never
creates a second job. ``watch`` resumes broken streams with ``after_sequence``; ``download`` resumes ``.part`` files
and checks every file's SHA-256 against the manifest. RPC errors surface as ``grpc.RpcError``.
"""

import hashlib
import os
import random
import time
import uuid

import grpc
from google.protobuf import json_format

from . import _stubs

pb = _stubs.conversion_service_pb2
spec_pb2 = _stubs.conversion_spec_pb2
job_pb2 = _stubs.conversion_job_pb2
ConversionJob = job_pb2.ConversionJob

TERMINAL_STATES = frozenset([ConversionJob.SUCCEEDED, ConversionJob.FAILED, ConversionJob.CANCELLED])


class ArtifactError(Exception):
    """An artifact that cannot be trusted: an unsafe manifest path, a size or SHA-256 mismatch."""


def job_name(name_or_operation):
    """ "abc", "jobs/abc", "operations/abc" or an Operation -> "jobs/abc"."""
    if not isinstance(name_or_operation, str):
        meta = job_pb2.ConversionMetadata()
        op = name_or_operation
        if op.HasField("metadata") and op.metadata.Unpack(meta) and meta.job:
            return meta.job
        name_or_operation = op.name
    if name_or_operation.startswith("jobs/"):
        return name_or_operation
    if name_or_operation.startswith("operations/"):
        return "jobs/" + name_or_operation[len("operations/"):]
    return "jobs/" + name_or_operation


def check_artifact_path(path):
    """Raises ArtifactError unless `path` is relative, '/'-separated, without empty, '.' or '..' components."""
    if not path or path.startswith("/") or "\0" in path or "\\" in path:
        raise ArtifactError("manifest path %r refused" % path)
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ArtifactError("manifest path %r refused: empty, '.' or '..' component" % path)
    if path.endswith(".part"):
        raise ArtifactError("manifest path %r refused: ends with .part" % path)


def _sha256_file(path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


class Client:
    """A connection to flashmorphd.

    target: "host:port". token: bearer token. root_certificates / private_key / certificate_chain: PEM (bytes or
    str); giving any of them, or tls=True, makes the channel TLS. timeout: deadline of each unary call in seconds
    (None: none). max_attempts / initial_backoff / max_backoff: retries of UNAVAILABLE (for a stream: consecutive
    attempts that received nothing). channel: use this channel instead of creating one.
    """

    def __init__(self, target, token=None, root_certificates=None, private_key=None, certificate_chain=None,
                 tls=False, timeout=30.0, max_attempts=10, initial_backoff=0.25, max_backoff=10.0, channel=None,
                 options=None):
        def as_bytes(v):
            return v.encode() if isinstance(v, str) else v

        if channel is None:
            options = list(options or []) + [("grpc.max_receive_message_length", 16 << 20)]
            if tls or root_certificates or certificate_chain or private_key:
                creds = grpc.ssl_channel_credentials(root_certificates=as_bytes(root_certificates),
                                                     private_key=as_bytes(private_key),
                                                     certificate_chain=as_bytes(certificate_chain))
                channel = grpc.secure_channel(target, creds, options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
        self._channel = channel
        self._stub = _stubs.conversion_service_pb2_grpc.ConversionServiceStub(channel)
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff

    # -- plumbing --------------------------------------------------------------------------------------------------
    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _backoff(self, attempt):
        delay = min(self._max_backoff, self._initial_backoff * (2 ** min(attempt, 30)))
        time.sleep(delay * random.uniform(0.5, 1.0))

    def _unary(self, method, request):
        for attempt in range(self._max_attempts):
            try:
                return method(request, timeout=self._timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 >= self._max_attempts:
                    raise
            self._backoff(attempt)

    # -- jobs ------------------------------------------------------------------------------------------------------
    def submit(self, spec, tenant="", request_id=None):
        """Creates a job; returns its google.longrunning.Operation (job_name(op) is "jobs/<id>").

        spec: a ConversionSpec, or a dict in the proto3 JSON mapping (lowerCamelCase or field names)."""
        if isinstance(spec, dict):
            spec = json_format.ParseDict(spec, spec_pb2.ConversionSpec())
        request = pb.CreateConversionJobRequest(tenant=tenant, request_id=request_id or str(uuid.uuid4()))
        request.spec.CopyFrom(spec)
        return self._unary(self._stub.CreateConversionJob, request)

    def get(self, name):
        return self._unary(self._stub.GetConversionJob, pb.GetConversionJobRequest(name=job_name(name)))

    def list(self, tenant="", states=(), page_size=0):
        """Yields every job (newest first), following next_page_token. states: State values or names."""
        states = [ConversionJob.State.Value(s.upper()) if isinstance(s, str) else s for s in states]
        request = pb.ListConversionJobsRequest(tenant=tenant, page_size=page_size, states=states)
        while True:
            page = self._unary(self._stub.ListConversionJobs, request)
            for job in page.jobs:
                yield job
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def cancel(self, name):
        # Not retried: a retry of a cancel that took effect would be FAILED_PRECONDITION.
        return self._stub.CancelConversionJob(pb.CancelConversionJobRequest(name=job_name(name)),
                                              timeout=self._timeout, metadata=self._metadata)

    def watch(self, name, after_sequence=0):
        """Yields the job's JobEvents after `after_sequence` until the event that ends the job.

        A stream broken by UNAVAILABLE is resumed after the last event yielded (no event is lost or repeated); after
        max_attempts consecutive attempts without an event the last error is raised. If the stream ends without the
        terminal event (after_sequence was past it), the generator ends once get() shows a terminal state."""
        name = job_name(name)
        last = after_sequence
        failures = 0
        while True:
            received = False
            error = None
            try:
                stream = self._stub.WatchConversionJob(
                    pb.WatchConversionJobRequest(name=name, after_sequence=last), metadata=self._metadata)
                for event in stream:
                    if event.sequence <= last:
                        continue
                    received = True
                    last = event.sequence
                    yield event
                    if event.HasField("state_change") and event.state_change.current in TERMINAL_STATES:
                        return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                error = e
            if error is None and self.get(name).state in TERMINAL_STATES:
                return
            if received:
                failures = 0
            failures += 1
            if failures >= self._max_attempts:
                if error is not None:
                    raise error
                raise RuntimeError("watch of %s: the stream keeps ending without the job ending" % name)
            self._backoff(failures - 1)

    # -- artifacts -------------------------------------------------------------------------------------------------
    def manifest(self, name):
        return self._unary(self._stub.GetArtifactManifest, pb.GetArtifactManifestRequest(job=job_name(name)))

    def download(self, name, out_dir):
        """Downloads the artifact of a SUCCEEDED job into out_dir; returns the files' paths.

        Each file is written to <path>.part (an existing .part is continued from its size), checked against the
        manifest's size and SHA-256 (a mismatch deletes the .part and raises ArtifactError) and renamed. Files
        already present with the right hash are skipped."""
        name = job_name(name)
        manifest = self.manifest(name)
        text = ""
        for f in manifest.files:
            check_artifact_path(f.path)
            text += "%s  %s\n" % (f.sha256, f.path)
        if manifest.manifest_sha256 and hashlib.sha256(text.encode()).hexdigest() != manifest.manifest_sha256:
            raise ArtifactError("manifest_sha256 does not match the manifest's files")
        os.makedirs(out_dir, exist_ok=True)
        written = []
        for f in manifest.files:
            final = os.path.join(out_dir, *f.path.split("/"))
            written.append(final)
            if (os.path.isfile(final) and os.path.getsize(final) == f.size_bytes
                    and _sha256_file(final).hexdigest() == f.sha256):
                continue
            self._download_file(name, f, final)
        return written

    def _download_file(self, name, f, final):
        part = final + ".part"
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        h = hashlib.sha256()
        have = 0
        if os.path.exists(part):
            if os.path.getsize(part) > f.size_bytes:
                os.remove(part)
            else:
                _sha256_file(part, h)
                have = os.path.getsize(part)
        failures = 0
        with open(part, "ab") as out:
            while have < f.size_bytes:
                received = False
                error = None
                try:
                    request = pb.ReadArtifactRequest(job=name, path=f.path, read_offset=have)
                    for chunk in self._stub.ReadArtifact(request, metadata=self._metadata):
                        if chunk.offset != have or have + len(chunk.data) > f.size_bytes:
                            raise ArtifactError("%s: unexpected chunk at offset %d (have %d of %d bytes)"
                                                % (f.path, chunk.offset, have, f.size_bytes))
                        out.write(chunk.data)
                        h.update(chunk.data)
                        have += len(chunk.data)
                        received = received or bool(chunk.data)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    error = e
                if have >= f.size_bytes:
                    break
                if error is None and not received:
                    raise ArtifactError("%s: stream ended at byte %d of %d" % (f.path, have, f.size_bytes))
                if received:
                    failures = 0
                failures += 1
                if failures >= self._max_attempts:
                    raise error or ArtifactError("%s: gave up at byte %d of %d" % (f.path, have, f.size_bytes))
                self._backoff(failures - 1)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if have != f.size_bytes or digest != f.sha256:
            os.remove(part)
            raise ArtifactError("%s: sha256 mismatch: manifest %s (%d bytes), downloaded %s (%d bytes)"
                                % (f.path, f.sha256, f.size_bytes, digest, have))
        os.replace(part, final)

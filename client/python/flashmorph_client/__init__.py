"""Python client of the FlashMorph service: ``Client(target, token=...)`` with submit, get, list, cancel, watch,
manifest and download. The generated API modules are found as described in ``_stubs``."""

from .client import ArtifactError, Client, TERMINAL_STATES, check_artifact_path, job_name
from ._stubs import (artifact_pb2, conversion_job_pb2, conversion_service_pb2, conversion_spec_pb2, job_event_pb2,
                     operations_pb2)

__all__ = [
    "ArtifactError",
    "Client",
    "TERMINAL_STATES",
    "check_artifact_path",
    "job_name",
    "artifact_pb2",
    "conversion_job_pb2",
    "conversion_service_pb2",
    "conversion_spec_pb2",
    "job_event_pb2",
    "operations_pb2",
]

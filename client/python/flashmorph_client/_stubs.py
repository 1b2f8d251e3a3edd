"""Locates the generated protobuf/gRPC modules (flashmorph.v1.*, google.longrunning, google.rpc).

The build generates them for the system Python into <build>/client_python (CMake target fm_client_python), next
to a copy of this package. If they are not importable already (PYTHONPATH=<build>/client_python), the directory
named by the environment variable FLASHMORPH_CLIENT_STUBS is put at the front of sys.path.
"""

import os
import sys

STUBS_ENV = "FLASHMORPH_CLIENT_STUBS"

_stubs_dir = os.environ.get(STUBS_ENV)
if _stubs_dir and _stubs_dir not in sys.path:
    sys.path.insert(0, _stubs_dir)

try:
    from flashmorph.v1 import artifact_pb2  # noqa: F401
    from flashmorph.v1 import conversion_job_pb2
    from flashmorph.v1 import conversion_service_pb2
    from flashmorph.v1 import conversion_service_pb2_grpc
    from flashmorph.v1 import conversion_spec_pb2
    from flashmorph.v1 import job_event_pb2
    from google.longrunning import operations_pb2
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        "flashmorph_client: cannot import the generated API modules (%s). Build the CMake target "
        "fm_client_python and put <build>/client_python on PYTHONPATH, or set %s to that directory." % (e, STUBS_ENV)
    ) from e

__all__ = [
    "artifact_pb2",
    "conversion_job_pb2",
    "conversion_service_pb2",
    "conversion_service_pb2_grpc",
    "conversion_spec_pb2",
    "job_event_pb2",
    "operations_pb2",
]

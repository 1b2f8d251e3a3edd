#!/usr/bin/env bash
# Reproduces proto/google/: the Google API protos that FlashMorph's API imports, copied unchanged (licence headers
# included) from the pinned PyPI wheel googleapis-common-protos. The wheel's hash is checked before anything is copied.
# The wheel ships google/longrunning/operations.proto as operations_proto.proto (a Python module-naming choice); it is
# copied back to its canonical import path. google/protobuf/*.proto are not vendored: they come with libprotobuf-dev.
#
# Usage: proto/vendor_googleapis.sh            (PYTHON=... to choose the interpreter whose pip downloads the wheel)
set -euo pipefail

readonly VERSION="1.76.0"
readonly WHEEL="googleapis_common_protos-${VERSION}-py3-none-any.whl"
readonly SHA256="59e13344a9f3651aa201a03e2bee815a3bf43a4baf1f9ff8a9b62a840ce25fac"
# source path inside the wheel -> destination under proto/
readonly FILES=(
  "google/api/annotations.proto:google/api/annotations.proto"
  "google/api/client.proto:google/api/client.proto"
  "google/api/field_behavior.proto:google/api/field_behavior.proto"
  "google/api/http.proto:google/api/http.proto"
  "google/api/launch_stage.proto:google/api/launch_stage.proto"
  "google/api/resource.proto:google/api/resource.proto"
  "google/longrunning/operations_proto.proto:google/longrunning/operations.proto"
  "google/rpc/code.proto:google/rpc/code.proto"
  "google/rpc/error_details.proto:google/rpc/error_details.proto"
  "google/rpc/status.proto:google/rpc/status.proto"
  "googleapis_common_protos-${VERSION}.dist-info/licenses/LICENSE:google/LICENSE"
)

python="${PYTHON:-python3}"
proto_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

"${python}" -m pip download --quiet --no-deps --only-binary=:all: --dest "${tmp}" \
  "googleapis-common-protos==${VERSION}"
echo "${SHA256}  ${tmp}/${WHEEL}" | sha256sum --check --quiet -
"${python}" -m zipfile -e "${tmp}/${WHEEL}" "${tmp}/wheel"

rm -rf "${proto_dir}/google/api" "${proto_dir}/google/longrunning" "${proto_dir}/google/rpc"
for entry in "${FILES[@]}"; do
  src="${entry%%:*}"
  dst="${entry#*:}"
  install -D -m 0644 "${tmp}/wheel/${src}" "${proto_dir}/${dst}"
done
echo "vendored googleapis-common-protos ${VERSION} into ${proto_dir}/google"

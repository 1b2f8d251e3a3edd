#!/usr/bin/env bash
# Builds flashmorphd and service_bench, runs the service benchmark and prints its markdown table on stdout (build
# output and progress go to stderr). About 1-2 minutes on 2 cores.
#   bench/service_bench.sh [BUILD_DIR] [service_bench flags...]     (BUILD_DIR default: <repo>/build-bench)
#   e.g. bench/service_bench.sh build-bench --seconds 5 --clients 1,8,64
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$repo/build-bench"
if [[ $# -gt 0 && $1 != -* ]]; then
  build=$(realpath -m "$1")
  shift
fi
if [[ ! -f $build/build.ninja ]]; then
  cmake -S "$repo" -B "$build" -G Ninja -DFLASHMORPH_WITH_TORCH=OFF >&2
fi
ninja -C "$build" -j2 flashmorphd service_bench >&2
exec "$build/bench/service_bench" --flashmorphd "$build/server/flashmorphd" --repo-root "$repo" "$@"

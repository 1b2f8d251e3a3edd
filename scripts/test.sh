#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: set-up, build, every test (incl. live parity against
# transformers / tokenizers / gguf), then the torch-free targets again under AddressSanitizer + UBSan.
# Usage: bash scripts/test.sh            (FM_SKIP_ASAN=1 skips the sanitizer pass)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
start=$(date +%s)
bash scripts/setup.sh

JOBS=${JOBS:-$(nproc)}
mkdir -p build build-asan
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >build/configure.log 2>&1 || { cat build/configure.log; exit 1; }
ninja -C build -j"$JOBS"
ctest --test-dir build --output-on-failure -j"$JOBS" --timeout 900

if [ "${FM_SKIP_ASAN:-0}" != 1 ]; then
  echo "== AddressSanitizer + UBSan: torch-free targets =="
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFLASHMORPH_SANITIZE=ON -DFLASHMORPH_WITH_TORCH=OFF \
    -DFM_FIXTURES_DIR="$ROOT/build/fixtures" >build-asan/configure.log 2>&1 || { cat build-asan/configure.log; exit 1; }
  ninja -C build-asan -j"$JOBS"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j"$JOBS" --timeout 900
fi
echo "== all tests passed in $(( $(date +%s) - start )) s =="

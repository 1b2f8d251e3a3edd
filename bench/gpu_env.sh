# Sourced by the bench/gpu_*.sh scripts on the GPU machine: unpacks the carried Debian .debs (absl, nlohmann-json,
# gtest, CLI11, ...) into /tmp/fm-deps and configures build-gpu with CUDA against the image's LibTorch.
# Sets ROOT, PREFIX, OUT, PY; exports PKG_CONFIG_PATH and LD_LIBRARY_PATH.
ROOT=$PWD
PREFIX=/tmp/fm-deps
OUT=${OUT:-/tmp/fm-out}
mkdir -p "$PREFIX" "$OUT"
for f in .debs/*.deb; do dpkg -x "$f" "$PREFIX"; done
# Debian's .pc files say prefix=/usr; point them at the unpacked tree.
for pc in "$PREFIX"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc; do sed -i "s|^prefix=/usr|prefix=$PREFIX/usr|" "$pc"; done
export PKG_CONFIG_PATH=$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig
export LD_LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PY=$(command -v python3)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fm_configure_gpu() {
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHMORPH_WITH_GRPC=OFF -DFLASHMORPH_CUDA=ON \
    -DFLASHMORPH_PYTHON="$PY" -DCMAKE_PREFIX_PATH="$PREFIX/usr" \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" "$@" \
    >"$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; return 1; }
  grep -E "LibTorch|FLASHMORPH_CUDA" "$OUT/configure.log"
}
fm_build_gpu() {
  ninja -C build-gpu -j"$(nproc)" "$@" >"$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -80; return 1; }
}
# fm_phase NAME SECONDS CMD...: runs CMD under a time limit (cut to end PHASE_MARGIN seconds, default 10, before
# $DEADLINE), logs to $OUT/NAME.txt and reports its exit status; skipped when under 20 s would be left.
fm_phase() {
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  (( limit > DEADLINE - t - ${PHASE_MARGIN:-10} )) && limit=$(( DEADLINE - t - ${PHASE_MARGIN:-10} ))
  if (( limit < 20 )); then echo "== $name: skipped (time budget spent)"; return; fi
  echo "== $name (limit ${limit} s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - t )) s"
}

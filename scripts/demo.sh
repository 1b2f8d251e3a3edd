#!/usr/bin/env bash
# The README's main command, the embedded default end to end: build, start flashmorphd with one embedded
# flashmorph-worker (a SQLite job store and a local artifact directory under out/demo-service), submit the bundled
# demo model (a small Qwen3 trained by the project to retrieve passkeys, models/demo/qwen3-demo) with budgets of
# 1/2 and 1/4 of its layers, watch the stages live, print the selected layouts, download the Hugging Face artifact
# to out/demo-hybrid (sha256-checked), and stop the service. Extra arguments go to `flashmorph submit`, e.g.
# `--method nll` or `--branch gla`; with any argument the default budgets are not added (give --fa-ratio yourself).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build flashmorphd flashmorph-worker flashmorph
mkdir -p out
DATA=$ROOT/out/demo-service
PORT_FILE=$DATA.port.json
rm -f "$PORT_FILE"
./build/server/flashmorphd --listen 127.0.0.1:0 --data-dir "$DATA" --port-file "$PORT_FILE" \
  --embedded-workers 1 --model-root "$ROOT/models" --metrics-listen 127.0.0.1:0 2>>"$DATA.log" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$PORT_FILE" ] && break; sleep 0.1; done
[ -s "$PORT_FILE" ] || { cat "$DATA.log"; echo "flashmorphd did not start" >&2; exit 1; }
PORT=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['port'])" "$PORT_FILE")
export FLASHMORPH_SERVER=127.0.0.1:$PORT
echo "flashmorphd on $FLASHMORPH_SERVER (data and logs in $DATA)"

FM=./build/client/cli/flashmorph
if [ $# -eq 0 ]; then set -- --fa-ratio 0.5 --fa-ratio 0.25; fi
JOB=$($FM submit --model "$ROOT/models/demo/qwen3-demo" "$@")
echo "submitted $JOB"
$FM watch "$JOB"
$FM layout "$JOB"
rm -rf out/demo-hybrid
$FM download "$JOB" --out out/demo-hybrid
echo "artifact: out/demo-hybrid (load it with transformers: AutoModelForCausalLM.from_pretrained(" \
     "'out/demo-hybrid', trust_remote_code=True))"

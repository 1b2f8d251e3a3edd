#!/usr/bin/env bash
# The README's main command: convert the bundled demo model (a small Qwen3 trained by the project to retrieve
# passkeys, models/demo/qwen3-demo) into a hybrid with the offline engine, print the layout and the evaluation, and
# write the Hugging Face artifact to out/demo-hybrid. (Issue 4 puts flashmorphd with its embedded worker in front of
# the same engine.) Extra arguments go to `flashmorph convert`, e.g. `--fa-ratio 0.25 --method nll`.
# Rerunning resumes from the stage checkpoints in out/demo-hybrid.work; delete it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build flashmorph
mkdir -p out
if [ $# -eq 0 ]; then set -- --fa-ratio 0.5 --fa-ratio 0.25; fi
./build/client/cli/flashmorph convert --model models/demo/qwen3-demo --out out/demo-hybrid "$@"
echo "artifact: out/demo-hybrid (load it with transformers: AutoModelForCausalLM.from_pretrained(" \
     "'out/demo-hybrid', trust_remote_code=True))"

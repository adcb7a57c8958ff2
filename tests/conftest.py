# Make the repository root importable (model.py, a3po.py, verifier.py, data/) from tests/.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The tests use tiny models: one intra-op thread is faster than two (no hand-off cost per
# small op) and keeps a busy 2-core machine from thrashing.
import torch  # noqa: E402

torch.set_num_threads(1)

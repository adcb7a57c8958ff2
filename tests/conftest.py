# Make the repository root importable (model.py, a3po.py, verifier.py, data/) from tests/.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

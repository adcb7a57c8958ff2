"""The reading path keeps its shape: a3po.py reads as one-process code, imports the files that
hold the rest one way, and does not grow back.

a3po.py's budget is a ratchet: the size it has now (Config, the math, the step and the
functions it calls, evaluation, the loop and main), to be lowered, never raised, as the file is
tightened; what a reader of the algorithm can skip lives in the helper files.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A3PO_BUDGET = 1158  # lines
HELPERS = ("processes.py", "runs.py", "logprobs.py", "cli.py", "loggers.py", "model.py", "verifier.py",
           "verifier_forms.py")


def imports(path: str) -> set[str]:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_a3po_has_no_torch_distributed_and_stays_within_budget():
    with open(os.path.join(ROOT, "a3po.py"), encoding="utf-8") as f:
        text = f.read()
    assert not any(n.startswith("torch.distributed") for n in imports("a3po.py"))
    assert "torch.distributed" not in text, "collectives and FSDP calls belong in processes.py"
    assert "world()" not in text, "no rank arithmetic in a3po.py: processes.py names what a rank does"
    assert len(text.splitlines()) <= A3PO_BUDGET, f"a3po.py has {len(text.splitlines())} lines (budget {A3PO_BUDGET})"


def test_the_files_a3po_uses_never_import_it():
    for path in HELPERS:
        assert "a3po" not in imports(path), f"{path} imports a3po.py: the imports go one way"

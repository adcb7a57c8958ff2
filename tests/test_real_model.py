"""bench/real_model.py end to end on the tiny test model: it trains both presets, and every number
of its report equals a recomputation from the runs' metrics.jsonl and samples.jsonl."""
import json
import os
import subprocess
import sys

import pytest
from test_trainer import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(text, name):
    """The cells of the Markdown table row whose first cell is `name`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r} in the report")


@pytest.fixture(scope="module")
def bench_run(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("real-model")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "real_model.py"), "--model", str(tiny / "model"),
           "--steps", "2", "--eval-size", "4", "--runs-dir", str(root / "runs"), "--out", str(root / "report"),
           "--", "--max-new-tokens", "4", "--prompts-per-step", "2", "--group-size", "4",
           "--micro-batch-size", "8", "--lr", "3e-3", "--template", "plain"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout


def test_report_equals_the_runs(bench_run):
    root, stdout = bench_run
    text = (root / "report.md").read_text()
    assert text.strip() in stdout  # printed and written alike
    evals, trains = {}, {}
    for algo in ("a3po", "dapo"):
        metrics = read_jsonl(root / "runs" / algo / "metrics.jsonl")
        evals[algo] = [m for m in metrics if m["split"] == "eval"]
        trains[algo] = [m for m in metrics if m["split"] == "train"]
        assert len(trains[algo]) == 2 and [m["step"] for m in evals[algo]] == [0, 2]
    # the two presets start from the same weights with the same evaluation keys: one "before"
    assert evals["a3po"][0] == pytest.approx({**evals["dapo"][0], "time_eval": evals["a3po"][0]["time_eval"]})
    pct = lambda v: f"{100 * v:.1f}%"
    for key, name in [("pass@1", "pass@1 (the reward: boxed or marked answer)"), ("pass@8", "pass@8"), ("greedy_acc", "greedy"),
                      ("lenient_acc", "lenient (fallback)"), ("boxed", "boxes an answer"),
                      ("truncated", "hits the token limit")]:
        assert row(text, name) == [pct(evals["a3po"][0][key]), pct(evals["a3po"][-1][key]), pct(evals["dapo"][-1][key])]
    assert row(text, "mean length (tokens)")[2] == f"{evals['dapo'][-1]['length']:.1f}"
    assert row(text, "pass@1 gain (points)") == [
        f"{100 * (evals[a][-1]['pass@1'] - evals[a][0]['pass@1']):+.1f}" for a in ("a3po", "dapo")]
    assert row(text, "rollouts sampled") == [str(sum(m["rollouts_drawn"] for m in trains[a])) for a in ("a3po", "dapo")]
    step = sum(m["time_step"] for m in trains["dapo"]) / 2
    assert row(text, "dapo")[4] == f"{step:.1f}"
    assert row(text, "2")[2:] == [pct(trains["dapo"][1]["accuracy_drawn"]), f"{trains['dapo'][1]['length_drawn']:.1f}"]


def test_report_shows_the_same_problems_before_and_after(bench_run):
    root, _ = bench_run
    text = (root / "report.md").read_text()
    samples = [s for s in read_jsonl(root / "runs" / "a3po" / "samples.jsonl") if s["split"] == "eval"]
    before = [s for s in samples if s["step"] == 0]
    after = [s for s in samples if s["step"] == 2]
    assert [s["problem"] for s in before] == [s["problem"] for s in after] == [0, 1, 2, 3]
    for b, a in zip(before, after):
        assert f"**{b['prompt']}** (gold {b['gold']})" in text
        shown = a["completion"].replace("\n", "\\n").replace("`", "'")  # one line in the report
        assert f"a3po after ({'right' if a['reward'] else 'wrong'}): `{shown}`" in text


def test_answer_forms_recounted_from_the_redrawn_samples(bench_run):
    root, _ = bench_run
    text = (root / "report.md").read_text()
    real_model = import_bench("real_model")
    columns = []
    for path in (root / "runs" / "heldout_samples.json", root / "runs" / "a3po" / "heldout_samples.json",
                 root / "runs" / "dapo" / "heldout_samples.json"):
        samples = json.loads(path.read_text())
        assert len(samples) == 4 * 8  # --eval-size 4, 8 samples each
        right = [real_model.answer_form(x["completion"]) for x in samples if x["reward"]]
        columns.append({f: sum(r == f for r in right) / len(samples) for f in ("number", "equation", "expression")})
    # the redrawn samples are the logged ones: the same pass@1 as the run's last evaluation
    evals = [m for m in read_jsonl(root / "runs" / "dapo" / "metrics.jsonl") if m["split"] == "eval"]
    assert sum(x["reward"] for x in samples) / len(samples) == pytest.approx(evals[-1]["pass@1"])
    for form, name in zip(("number", "equation", "expression"), [n for _, n in real_model.FORMS]):
        assert row(text, name) == [f"{100 * c[form]:.1f}%" for c in columns]
    assert row(text, "**right and worked out** (number or equation)") == [
        f"{100 * (c['number'] + c['equation']):.1f}%" for c in columns]


@pytest.mark.parametrize("text, form", [
    ("The answer is 19.", "number"), ("\\boxed{-3}", "number"),
    ("So, the final answer is 8+11 = 19.", "equation"),
    ("Reasoning: 19 + 9 = 18.\n\nSo, the final answer is 19+9.", "expression"),
    ("\\boxed{19+9}", "expression"), ("I do not know", None),
])
def test_answer_form(text, form):
    assert import_bench("real_model").answer_form(text) == form


def import_bench(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

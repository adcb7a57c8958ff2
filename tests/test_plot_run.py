"""tools/plot_run.py: a run folder's metrics.jsonl -> one PNG, its errors, and that the metrics it
plots are the ones the trainer writes (a renamed metric fails here, not silently in a picture)."""
import ast
import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import plot_run  # noqa: E402

# matplotlib is an optional extra (requirements-plot.txt): without it only the drawing tests skip.
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def train_record(step: int, **over) -> dict:
    r = dict(step=step, split="train", reward=0.4 + 0.05 * step, accuracy=0.4 + 0.05 * step,
             reward_drawn=0.3 + 0.05 * step, accuracy_drawn=0.3 + 0.05 * step,
             entropy=0.5 - 0.05 * step, entropy_pos=0.4, entropy_neg=0.6,
             length=30.0 + step, length_pos=28.0, length_neg=33.0,
             boosted=0.2, boosted_pos=0.2, boosted_neg=0.2,
             clipfrac_low=0.01, clipfrac_high=0.002, clipfrac_dual=0.0,
             alpha_pos=2.0, alpha_neg=2.0, lr=1e-3, grad_norm=0.5, approx_kl=1e-4,
             per_epoch={"loss": [0.1, 0.2]}, time_step=1.0)
    r.update(over)
    return r


def eval_record(step: int, **extra) -> dict:
    return dict(step=step, split="eval", **{"avg@8": 0.3 + 0.1 * step, "pass@1": 0.3 + 0.1 * step,
                                           "pass@8": 0.7 + 0.05 * step}, greedy_acc=0.5, length=30.0,
                time_eval=1.0, **extra)


def write_run(folder, records: list, tail: str = "") -> str:
    """A run folder whose metrics.jsonl holds the records, one JSON line each (NaN written as
    JSON's NaN, which the trainer writes as null: both must plot), then tail verbatim."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) + tail)
    return str(folder)


def a_run(folder) -> str:
    """Old-format eval lines (no benchmark), new-format ones (two benchmarks), NaN and null values."""
    return write_run(folder, [
        eval_record(0),
        eval_record(0, benchmark="math500"), eval_record(0, benchmark="aime24"),
        train_record(1, entropy_pos=NAN, length_pos=NAN),  # no positive sample in this step
        train_record(2, entropy_neg=None),
        train_record(3),
        eval_record(3), eval_record(3, benchmark="math500"), eval_record(3, benchmark="aime24"),
    ])


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000, f"{path}: {len(data)} bytes, a near-empty picture"


@needs_matplotlib
def test_one_run_writes_curves_png_into_the_run_folder(tmp_path, capsys):
    run = a_run(tmp_path / "a3po-s0")
    assert plot_run.main([run]) == 0
    out = os.path.join(run, "curves.png")
    assert capsys.readouterr().out.strip() == out
    assert_png(out)


def test_what_is_read_old_and_new_eval_format_and_gaps(tmp_path):
    data = plot_run.read_run(a_run(tmp_path / "r"))
    assert [r["step"] for r in data["train"]] == [1, 2, 3]
    assert list(data["eval"]) == ["held-out", "math500", "aime24"]
    assert plot_run.pass_keys(data["eval"]["math500"]) == ["pass@1", "pass@8"]
    assert plot_run.points(data["train"], "entropy_pos") == ([2, 3], [0.4, 0.4])  # NaN left out
    assert plot_run.points(data["train"], "entropy_neg") == ([1, 3], [0.6, 0.6])  # null left out
    assert plot_run.points(data["train"], "boosted", 100)[1] == [20.0, 20.0, 20.0]


@needs_matplotlib
def test_several_runs_need_out_and_draw_one_picture(tmp_path, capsys):
    a = a_run(tmp_path / "a3po")
    # an older run: without the drawn, polarity and dual-clip metrics, and no evaluation
    old_keys = ("reward_drawn", "accuracy_drawn", "entropy_pos", "entropy_neg", "boosted_pos", "clipfrac_dual")
    g = write_run(tmp_path / "grpo", [{k: v for k, v in train_record(s).items() if k not in old_keys}
                                      for s in (1, 2, 3, 4)])
    with pytest.raises(SystemExit) as e:
        plot_run.main([g, a])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    out = str(tmp_path / "cmp" / "grpo-vs-a3po.png")
    assert plot_run.main([g, a, "--out", out]) == 0
    assert capsys.readouterr().out.strip() == out
    assert_png(out)


@needs_matplotlib
def test_a_run_with_nothing_to_draw_still_plots(tmp_path):
    run = write_run(tmp_path / "empty", [])  # every panel says "no data"
    assert plot_run.main([run, "--out", str(tmp_path / "empty.png")]) == 0
    with open(tmp_path / "empty.png", "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_same_folder_names_are_told_apart_by_path():
    assert plot_run.run_names(["runs/grpo", "runs/a3po/"]) == ["grpo", "a3po"]
    assert plot_run.run_names(["x/seed0", "y/seed0"]) == ["x/seed0", "y/seed0"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_a_folder_without_metrics_is_an_error_naming_the_file(tmp_path, capsys):
    assert plot_run.main([str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert err.startswith("plot_run: error: ") and os.path.join(str(tmp_path), "metrics.jsonl") in err
    assert not os.path.exists(tmp_path / "curves.png")


def test_a_bad_json_line_is_an_error_naming_file_and_line(tmp_path, capsys):
    cut = '{"step": 2, "split": "tr\n'  # a line cut short, then more lines: not a write in progress
    run = write_run(tmp_path / "r", [train_record(1)], tail=cut + json.dumps(train_record(3)) + "\n")
    assert plot_run.main([run]) == 2
    assert os.path.join(run, "metrics.jsonl") + ":2: not a JSON line" in one_error_line(capsys)
    run = write_run(tmp_path / "s", [train_record(1), [1, 2]])  # JSON, but not a record
    assert plot_run.main([run]) == 2
    assert os.path.join(run, "metrics.jsonl") + ":2: not a metrics record" in one_error_line(capsys)


def test_a_last_line_being_written_is_skipped(tmp_path):
    # The trainer appends one line at a time: plotting a live run may catch the last one half
    # written (no newline yet). That line is left out, as --resume drops a torn last line.
    run = write_run(tmp_path / "r", [train_record(1), train_record(2)], tail='{"step": 3, "split": "tra')
    assert [r["step"] for r in plot_run.read_run(run)["train"]] == [1, 2]


def test_without_matplotlib_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    run = a_run(tmp_path / "r")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    assert plot_run.main([run]) == 2
    assert one_error_line(capsys) == \
        "plot_run: error: matplotlib is not installed: pip install -r requirements-plot.txt"
    assert not os.path.exists(os.path.join(run, "curves.png"))


def keys_written(source: str, function: str) -> set[str]:
    """The keys a function of a3po.py writes: the string keys of its dict literals and the
    keywords of its dict(...) calls. Read from the text (no run): a renamed metric, or a
    renamed function, fails here instead of leaving a panel silently empty."""
    nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == function]
    assert nodes, f"a3po.py has no function {function}: update this test"
    keys = set()
    for n in ast.walk(nodes[0]):
        if isinstance(n, ast.Dict):
            keys |= {k.value for k in n.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "dict":
            keys |= {kw.arg for kw in n.keywords if kw.arg}
    return keys


def test_the_plotted_metrics_are_the_ones_the_trainer_writes():
    with open(os.path.join(ROOT, "a3po.py"), encoding="utf-8") as f:
        trainer = f.read()
    batch = keys_written(trainer, "batch_stats")  # reward, accuracy, length, ... of a list of rollouts
    step = keys_written(trainer, "step_metrics")  # entropy, boost shares, and batch_stats' keys + "_drawn"
    loss = keys_written(trainer, "policy_loss")   # the clip fractions
    for _, _, _, series in plot_run.TRAIN_PANELS:
        for key, _ in series:
            if key.endswith("_drawn"):
                assert key.removesuffix("_drawn") in batch and '+ "_drawn"' in trainer, key
            else:
                assert key in batch | step | loss, f"a3po.py no longer writes {key!r}, which tools/plot_run.py plots"
    assert 'f"pass@{k}"' in trainer  # the held-out panels' keys
    with open(os.path.join(ROOT, "runs.py"), encoding="utf-8") as f:
        writer = f.read()  # (evaluation records are written there, one per held-out set)
    assert 'split="train"' in trainer and 'split="eval", benchmark=' in writer


@needs_matplotlib
def test_out_must_be_a_writable_png(tmp_path, capsys):
    run = a_run(tmp_path / "r")
    with pytest.raises(SystemExit) as e:
        plot_run.main([run, "--out", str(tmp_path / "curves.svg")])
    assert e.value.code == 2 and "PNG" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert plot_run.main([run, "--out", str(tmp_path / "a_file" / "curves.png")]) == 2
    assert one_error_line(capsys).startswith(f"plot_run: error: {tmp_path / 'a_file'}: ")

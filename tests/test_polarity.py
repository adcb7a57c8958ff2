"""bench/polarity.py: the report's numbers equal a plain recomputation from metrics.jsonl, the
claim rule gives the verdicts it states, and the study runs end to end on a tiny model.

Most tests write synthetic runs (metrics.jsonl + done.json + config.json, as a3po.py and the
study leave them) with known effects, so they take milliseconds; one trains 4 tiny runs.
"""
import dataclasses
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_bench(name):
    # Not via sys.path: bench/verifier.py would shadow verifier.py for the tests collected next.
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


polarity = import_bench("polarity")

STEPS, EVAL_EVERY, SEEDS = 10, 5, [0, 1, 2]


# ----------------------------------------------------------------------------- synthetic runs

def fake_values(variant: str, seed: int, step: int) -> dict:
    """Metric values with a few planted effects (see the claim tests) and seed noise elsewhere."""
    wiggle = [0.0, 0.03, -0.03][seed] + 0.01 * math.sin(step + 3 * seed)  # differs by seed and step
    t = step / STEPS
    v = dict(accuracy=0.3 + wiggle, entropy=0.40 + wiggle, entropy_pos=0.35 + wiggle, entropy_neg=0.45 + wiggle,
             length=30 + 10 * wiggle, length_pos=28 + 10 * wiggle, length_neg=32 + 10 * wiggle,
             p1=0.20 + wiggle, p4=0.40 + wiggle, p16=0.60 + wiggle, eval_length=25 + 10 * wiggle)
    if variant == "psr":  # entropy falls clearly (claim 1 holds); no negative samples (raw A = R)
        v.update(entropy=0.40 - 0.3 * t + 0.005 * [0, 1, -1][seed], entropy_neg=None, length_neg=None)
    if variant == "nsr":  # pass@16 far below psr's (claim 6 does not hold); no positive samples
        v.update(entropy_pos=None, length_pos=None)
        if step > 0:  # step 0 is the starting model, the same for every variant
            v.update(p16=0.30 + wiggle)
    if variant == "a3po" and step > 0:  # pass@1 above grpo by far less than the seed noise (claim 8 unclear)
        v.update(p1=0.205 + 3 * wiggle)
    return v


def write_fake_run(runs_dir, variant: str, seed: int, drop_eval=False):
    run_dir = polarity.run_dir_of(str(runs_dir), variant, seed)
    os.makedirs(run_dir)
    lines = []
    for step in range(STEPS + 1):
        v = fake_values(variant, seed, step)
        if step >= 1:
            lines.append(dict(step=step, split="train", reward=v["accuracy"], time_step=1.0,
                              **{k: v[k] for k in polarity.TRAIN_KEYS}))
        if step % EVAL_EVERY == 0 and not (drop_eval and step == STEPS):
            lines.append({"step": step, "split": "eval", "avg@16": v["p1"], "pass@1": v["p1"], "pass@4": v["p4"],
                          "pass@16": v["p16"], "greedy_acc": 0.5, "length": v["eval_length"], "time_eval": 2.0})
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in lines)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(dict(model="fake", data="synthetic", synthetic_level=3, prompts_per_step=16, group_size=8,
                       ppo_epochs=2, lr=1e-4, max_new_tokens=64, temperature=1.0, eval_size=50, steps=STEPS,
                       eval_every=EVAL_EVERY), f)
    with open(os.path.join(run_dir, "done.json"), "w") as f:
        json.dump(dict(seconds=60.0), f)


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory):
    """All variants x 3 seeds of synthetic runs, reported (without plots, to stay fast)."""
    root = tmp_path_factory.mktemp("fake")
    for v in polarity.VARIANTS:
        for s in SEEDS:
            write_fake_run(root / "runs", v, s)
    argv = ["--report-only", "--runs-dir", str(root / "runs"), "--out", str(root / "out"),
            "--steps", str(STEPS), "--eval-every", str(EVAL_EVERY), "--seeds", *map(str, SEEDS)]
    saved = sys.modules.get("matplotlib", "absent")
    sys.modules["matplotlib"] = None  # `import matplotlib` now fails: the report must go on without plots
    try:
        polarity.main(argv)
    finally:
        if saved == "absent":
            del sys.modules["matplotlib"]
        else:
            sys.modules["matplotlib"] = saved
    return root


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    return [m for m in lines if m["split"] == "train"], [m for m in lines if m["split"] == "eval"]


def markdown_table(text: str, heading: str) -> dict:
    """The first table after `heading` -> {row name: {column header: cell text}}."""
    rest = text.split(heading, 1)[1].splitlines()
    rows = [line for line in rest[rest.index(next(l for l in rest if l.startswith("|"))):]]
    rows = rows[:next((i for i, l in enumerate(rows) if not l.startswith("|")), len(rows))]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]
    header = split(rows[0])
    return {split(r)[0]: dict(zip(header, split(r))) for r in rows[2:]}


def plain_end_value(run_dir, metric: str) -> float:
    """The END value of one run, recomputed without the study code: the last evaluation for
    held-out metrics, the mean over the last steps/5 training steps (nulls skipped) otherwise."""
    train, evals = read_metrics(run_dir)
    if metric in ("pass@1", "pass@4", "pass@16"):
        return evals[-1][metric]
    if metric == "eval_length":
        return evals[-1]["length"]
    vals = [m[metric] for m in train[-max(1, round(len(train) / 5)):] if m[metric] is not None]
    return float(np.mean(vals)) if vals else float("nan")


def parse_cell(cell: str):
    """'12.3 ± 0.4' -> (12.3, 0.4); '12.3' -> (12.3, None); '-' -> (nan, None)."""
    if cell == "-":
        return float("nan"), None
    parts = cell.split("±")
    return float(parts[0]), (float(parts[1]) if len(parts) > 1 else None)


# ----------------------------------------------------------------------------- the tables

@pytest.mark.parametrize("heading,columns,variants", [
    ("## Presets", polarity.MAIN_COLUMNS, polarity.PRESETS),
    ("## Token-level ablations", polarity.MAIN_COLUMNS, ["a3po"] + polarity.ABLATIONS),
    ("## By polarity", polarity.POLARITY_COLUMNS, list(polarity.VARIANTS)),
    ("## A3PO's constants", polarity.MAIN_COLUMNS, ["a3po", "dapo"] + polarity.SWEEP),
])
def test_table_equals_plain_recomputation(fake_study, heading, columns, variants):
    text = (fake_study / "out" / "polarity.md").read_text()
    rows = markdown_table(text, heading)
    assert set(variants) <= set(rows), f"{heading}: rows {sorted(rows)}"
    for v in variants:
        for metric, header in columns:
            values = [plain_end_value(fake_study / "runs" / f"{v}-seed{s}", metric) for s in SEEDS]
            values = [x for x in values if not math.isnan(x)]
            mean, std = parse_cell(rows[v][header])
            scale = 100 if metric.startswith("pass@") or metric == "accuracy" else 1
            tol = 0.0005 if metric.startswith("entropy") else 0.05  # half the last printed digit
            if not values:
                assert math.isnan(mean) and std is None, f"{v} {metric}: expected '-', got {rows[v][header]!r}"
                continue
            assert rows[v]["seeds"] == str(len(SEEDS))
            assert mean == pytest.approx(scale * np.mean(values), abs=tol), f"{v} {header}"
            assert std == pytest.approx(scale * np.std(values, ddof=1), abs=tol), f"{v} {header} spread"


def test_start_row_is_the_step0_evaluation(fake_study):
    rows = markdown_table((fake_study / "out" / "polarity.md").read_text(), "## Presets")
    # every variant of a seed starts from the same model: the step-0 numbers are the seed's
    p1 = [fake_values("grpo", s, 0)["p1"] for s in SEEDS]
    mean, std = parse_cell(rows["start (step 0)"]["pass@1 %"])
    assert mean == pytest.approx(100 * np.mean(p1), abs=0.05)
    assert std == pytest.approx(100 * np.std(p1, ddof=1), abs=0.05)
    assert rows["start (step 0)"]["entropy"] == "-"  # training-batch metrics have no step 0


def test_report_without_matplotlib_and_json(fake_study):
    text = (fake_study / "out" / "polarity.md").read_text()
    assert "No plots: matplotlib is not installed" in text
    assert not list((fake_study / "out").glob("*.png"))
    numbers = json.loads((fake_study / "out" / "polarity.json").read_text())
    assert set(numbers) == set(polarity.VARIANTS) and set(numbers["psr"]) == {"0", "1", "2"}
    assert numbers["psr"]["0"]["summary"]["end"]["pass@1"] == read_metrics(fake_study / "runs" / "psr-seed0")[1][-1]["pass@1"]


def main_without_matplotlib(argv):
    """polarity.main as on a machine without matplotlib: the report is written, plots skipped."""
    saved = sys.modules.get("matplotlib", "absent")
    sys.modules["matplotlib"] = None
    try:
        polarity.main(argv)
    finally:
        sys.modules.pop("matplotlib") if saved == "absent" else sys.modules.update(matplotlib=saved)


def test_report_is_deterministic(fake_study, tmp_path):
    argv = ["--report-only", "--runs-dir", str(fake_study / "runs"), "--out", str(tmp_path),
            "--steps", str(STEPS), "--eval-every", str(EVAL_EVERY)]
    main_without_matplotlib(argv)
    assert (tmp_path / "polarity.md").read_text() == (fake_study / "out" / "polarity.md").read_text()


# ----------------------------------------------------------------------------- the claims

def claim_verdicts(text: str) -> dict:
    """Claims table -> {claim number: verdict} (bold marks the claim's own row)."""
    out = {}
    for line in text.split("## The paper's claims", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            out[int(cells[0])] = cells[-1].strip("*")
    return out


def test_claim_verdicts_from_planted_effects(fake_study):
    verdicts = claim_verdicts((fake_study / "out" / "polarity.md").read_text())
    assert len(verdicts) == len(polarity.CLAIMS)
    number = {text: i for i, (text, _) in enumerate(polarity.CLAIMS, 1)}
    assert verdicts[number["PSR sharpens the policy: token entropy falls during training"]] == "holds"
    assert verdicts[number["NSR explores: its pass@16 beats PSR's"]] == "does not hold"
    assert verdicts[number["A3PO beats GRPO on pass@1"]] == "unclear"
    assert verdicts[number["PSR shortens responses"]] == "unclear"  # same length: d = 0 < floor


def test_welch_check_by_hand(fake_study):
    """A3PO pass@1 > GRPO pass@1, recomputed with the textbook Welch formulas."""
    runs = polarity.load_runs(str(fake_study / "runs"))
    r = polarity.compare(runs, ("a3po", "end", "pass@1"), ("grpo", "end", "pass@1"))
    a = np.array([fake_values("a3po", s, STEPS)["p1"] for s in SEEDS])
    b = np.array([fake_values("grpo", s, STEPS)["p1"] for s in SEEDS])
    qa, qb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    df = (qa + qb) ** 2 / (qa ** 2 / 2 + qb ** 2 / 2)
    assert r["d"] == pytest.approx(a.mean() - b.mean())
    assert r["se"] == pytest.approx(math.sqrt(qa + qb))
    assert r["df"] == pytest.approx(df)
    assert r["margin"] == pytest.approx(max(polarity.t975(df) * math.sqrt(qa + qb), 0.01))


def test_paired_check_by_hand(fake_study):
    runs = polarity.load_runs(str(fake_study / "runs"))
    r = polarity.compare(runs, ("psr", "start", "entropy"), ("psr", "end", "entropy"))
    diffs = []
    for s in SEEDS:
        train, _ = read_metrics(fake_study / "runs" / f"psr-seed{s}")
        diffs.append(train[0]["entropy"] - np.mean([m["entropy"] for m in train[-2:]]))  # steps/5 = 2
    se = np.std(diffs, ddof=1) / math.sqrt(3)
    assert r["d"] == pytest.approx(np.mean(diffs)) and r["se"] == pytest.approx(se)
    assert r["margin"] == pytest.approx(max(4.303 * se, 0.01))  # t(0.975, 2 df)
    assert r["verdict"] == "holds"


def fake_runs(by_variant: dict) -> dict:
    """{variant: [end pass@1 per seed]} -> the structure load_runs returns (summaries only)."""
    return {v: {s: dict(summary=dict(end={"pass@1": x})) for s, x in enumerate(xs)} for v, xs in by_variant.items()}


def test_claim_rule_cases():
    check = [(("a3po", "end", "pass@1"), ("grpo", "end", "pass@1"))]
    assert polarity.judge(fake_runs({"a3po": [0.5, 0.52, 0.51], "grpo": [0.3, 0.31, 0.29]}), check)[0] == "holds"
    assert polarity.judge(fake_runs({"a3po": [0.3, 0.31, 0.29], "grpo": [0.5, 0.52, 0.51]}), check)[0] == "does not hold"
    assert polarity.judge(fake_runs({"a3po": [0.1, 0.5, 0.3], "grpo": [0.2, 0.3, 0.25]}), check)[0] == "unclear"
    # the floor: identical seeds (se = 0) but a difference too small to mean anything
    assert polarity.judge(fake_runs({"a3po": [0.305] * 3, "grpo": [0.3] * 3}), check)[0] == "unclear"
    assert polarity.judge(fake_runs({"a3po": [0.9], "grpo": [0.1]}), check)[0] == "unclear"  # one seed: no spread
    assert polarity.judge(fake_runs({"a3po": [0.5, 0.5]}), check)[0] == "not run"
    two = check + [(("a3po", "end", "pass@1"), ("dapo", "end", "pass@1"))]
    runs = fake_runs({"a3po": [0.5, 0.52, 0.51], "grpo": [0.3, 0.31, 0.29], "dapo": [0.5, 0.53, 0.5]})
    assert polarity.judge(runs, two)[0] == "unclear"  # one holds, one within noise
    runs["dapo"] = fake_runs({"d": [0.7, 0.71, 0.72]})["d"]
    assert polarity.judge(runs, two)[0] == "does not hold"


def eval_runs(curves: dict) -> dict:
    """{variant: [[pass@1 per evaluation] per seed]} -> the structure load_runs returns (evals only)."""
    return {v: {s: dict(eval=[{"step": 10 * i, "pass@1": x} for i, x in enumerate(xs)]) for s, xs in enumerate(per)}
            for v, per in curves.items()}


def test_second_half_change_rule_cases():
    # evaluations at steps 0, 10, 20, 30, 40: the middle one is step 20 (index 2)
    runs = eval_runs({"up": [[0.2, 0.25, 0.3, 0.35, 0.40], [0.2, 0.25, 0.3, 0.36, 0.41], [0.2, 0.25, 0.3, 0.36, 0.42]],
                      "down": [[0.2, 0.25, 0.3, 0.25, 0.20], [0.2, 0.25, 0.3, 0.26, 0.21], [0.2, 0.25, 0.3, 0.2, 0.19]],
                      # a steady drift of 1.5 points an interval: within one interval's noise, not over half the run
                      "drift": [[0.2, 0.3, 0.30, 0.285, 0.27], [0.2, 0.3, 0.31, 0.295, 0.28], [0.2, 0.3, 0.29, 0.275, 0.26]],
                      "noisy": [[0.2, 0.3, 0.3, 0.3, 0.40], [0.2, 0.3, 0.3, 0.3, 0.20], [0.2, 0.3, 0.3, 0.3, 0.33]],
                      "still": [[0.2, 0.3, 0.3, 0.3, 0.31], [0.2, 0.3, 0.3, 0.3, 0.30], [0.2, 0.3, 0.3, 0.3, 0.295]],
                      "tiny": [[0.2, 0.3, 0.3, 0.3, 0.305]] * 3,  # the same small rise in every seed: below the floor
                      "one": [[0.2, 0.3, 0.3, 0.3, 0.9]], "short": [[0.2]] * 3, "two": [[0.2, 0.3]] * 3})
    verdict = lambda v: polarity.second_half_change(runs, v, "pass@1")["verdict"]
    assert verdict("up") == "rising" and verdict("down") == "falling" and verdict("drift") == "falling"
    # noisy: within the margin, but the margin is wider than the tolerance; still: d ± margin within 5 points
    assert verdict("noisy") == "unclear" and verdict("still") == "flat" and verdict("tiny") == "flat"
    assert verdict("one") == "unclear"
    assert polarity.second_half_change(runs, "short", "pass@1") is None
    assert polarity.second_half_change(runs, "two", "pass@1")["steps"] == (0, 10)  # never the last vs itself
    r = polarity.second_half_change(runs, "up", "pass@1")
    diffs = np.array([0.10, 0.11, 0.12])
    assert r["d"] == pytest.approx(diffs.mean()) and r["steps"] == (20, 40)
    assert r["margin"] == pytest.approx(4.303 * diffs.std(ddof=1) / math.sqrt(3))


def test_plateau_table_by_hand(fake_study):
    """The flattening table's pass@1 cell of each variant, recomputed from metrics.jsonl
    (evaluations at steps 0, 5, 10: the middle one is step 5)."""
    rows = markdown_table((fake_study / "out" / "polarity.md").read_text(), "## Have the curves flattened?")
    assert set(rows) == set(polarity.VARIANTS)
    for v in polarity.VARIANTS:
        diffs = []
        for s in SEEDS:
            _, evals = read_metrics(fake_study / "runs" / f"{v}-seed{s}")
            diffs.append(evals[-1]["pass@1"] - [e for e in evals if e["step"] == STEPS // 2][0]["pass@1"])
        margin = max(4.303 * np.std(diffs, ddof=1) / math.sqrt(3), 0.01)
        d = np.mean(diffs)
        verdict = ("rising" if d > 0 else "falling") if abs(d) > margin else ("flat" if abs(d) + margin <= 0.05
                                                                             else "unclear")
        assert rows[v]["steps"] == f"{STEPS // 2} -> {STEPS}"
        assert rows[v]["pass@1 change (margin)"] == f"{100 * np.mean(diffs):.1f} ({100 * margin:.1f}) {verdict}"


def test_report_command_per_seed_group():
    """A sweep run at fewer seeds gets its own command, so rerunning the report's commands
    makes the same runs and no more."""
    runs = {v: {s: {} for s in (0, 1, 2, 3)} for v in polarity.SEARCH_VARIANTS}
    runs |= {"a3po-rho0.5": {0: {}, 1: {}}, "a3po-alpha4": {0: {}, 1: {}}}
    assert polarity.seed_groups(runs) == [([0, 1, 2, 3], polarity.SEARCH_VARIANTS), ([0, 1], ["a3po-rho0.5", "a3po-alpha4"])]


def test_report_names_the_study_command(fake_study):
    text = (fake_study / "out" / "polarity.md").read_text()
    assert f"Generated by `python bench/polarity.py --steps {STEPS} --eval-every {EVAL_EVERY} --eval-size 50 " \
           f"--seeds 0 1 2 --variants {' '.join(polarity.VARIANTS)}` (do not edit by hand)" in text

def test_t_table():
    assert polarity.t975(2) == 4.303 and polarity.t975(2.9) == 4.303  # rounds df down: conservative
    assert polarity.t975(0.5) == 12.706 and polarity.t975(1e6) == 1.96


def test_unfinished_runs_are_left_out(tmp_path):
    write_fake_run(tmp_path, "psr", 0)
    write_fake_run(tmp_path, "psr", 1)
    os.remove(os.path.join(polarity.run_dir_of(str(tmp_path), "psr", 1), "done.json"))
    assert list(polarity.load_runs(str(tmp_path))["psr"]) == [0]
    write_fake_run(tmp_path, "nsr", 0, drop_eval=True)
    assert not polarity.finished(polarity.run_dir_of(str(tmp_path), "nsr", 0), STEPS)
    assert polarity.finished(polarity.run_dir_of(str(tmp_path), "psr", 0), STEPS)


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    settings = dict(steps=4, eval_every=2, eval_size=8, eval_k=[1, 4, 16], extra=["--lr", "1e-3"])
    run_dir = polarity.run_dir_of(str(tmp_path), "a3po-entropy", 2)
    cmd = polarity.run_command("a3po-entropy", 2, settings, run_dir)
    assert cmd[2:] == ["--algo", "a3po", "--token-criterion", "entropy",
                       "--seed", "2", "--run-dir", run_dir, "--steps", "4", "--eval-every", "2", "--save-every", "2",
                       "--eval-size", "8", "--eval-k", "1", "4", "16", "--lr", "1e-3"]
    os.makedirs(os.path.join(run_dir, "checkpoint"))
    open(os.path.join(run_dir, "checkpoint", "trainer_state.json"), "w").close()
    assert polarity.run_command("a3po-entropy", 2, settings, run_dir)[2:] == ["--resume", run_dir]


# ----------------------------------------------------------------------------- end to end

from test_trainer import N_DIGITS, make_tiny_model  # noqa: E402  (the same tiny model and task)


def test_study_end_to_end_on_a_tiny_model(tmp_path, capsys):
    make_tiny_model(str(tmp_path / "model"))
    for name, n in (("train", 40), ("eval", 8)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps({"q": f"q{i % N_DIGITS}", "a": str(i % N_DIGITS)}) + "\n" for i in range(n))
    extra = ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "train.jsonl"),
             "--eval-data", str(tmp_path / "eval.jsonl"), "--prompt-key", "q", "--answer-key", "a",
             "--template", "plain", "--prompts-per-step", "4", "--group-size", "4", "--micro-batch-size", "8",
             "--max-new-tokens", "4", "--lr", "3e-3", "--warmup-steps", "1"]
    argv = ["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--steps", "2",
            "--eval-every", "1", "--eval-size", "8", "--seeds", "0", "1", "--variants", "psr", "a3po",
            "--jobs", "2", "--", *extra]
    polarity.main(argv)
    assert "4 run(s) to train, 0 already done" in capsys.readouterr().out

    text = (tmp_path / "out" / "polarity.md").read_text()
    rows = markdown_table(text, "## Presets")
    for v in ("psr", "a3po"):
        p1 = [read_metrics(tmp_path / "runs" / f"{v}-seed{s}")[1][-1]["pass@1"] for s in (0, 1)]
        assert [m["step"] for m in read_metrics(tmp_path / "runs" / f"{v}-seed0")[1]] == [0, 1, 2]
        assert parse_cell(rows[v]["pass@1 %"])[0] == pytest.approx(100 * np.mean(p1), abs=0.05)
    if importlib.util.find_spec("matplotlib") is not None:  # optional extra (requirements-plot.txt)
        assert (tmp_path / "out" / "polarity-presets.png").stat().st_size > 1000
    else:
        assert "No plots: matplotlib is not installed" in text

    for v in ("psr", "a3po"):  # the held-out samples were drawn again: the same as a3po.py's
        for seed in (0, 1):
            run_dir = tmp_path / "runs" / f"{v}-seed{seed}"
            lengths = json.loads((run_dir / "heldout_lengths.json").read_text())
            evals = read_metrics(run_dir)[1]
            for when, ev in (("start", evals[0]), ("end", evals[-1])):
                assert len(lengths[when]["length"]) == 8 * 16
                assert np.mean(lengths[when]["length"]) == pytest.approx(ev["length"], abs=1e-9)
                assert np.mean(lengths[when]["correct"]) == pytest.approx(ev["pass@1"], abs=1e-9)
    assert "## Held-out response lengths" in text

    polarity.main(argv)  # everything is done: nothing is trained again
    assert "0 run(s) to train, 4 already done" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings"):  # another step budget would mix studies
        polarity.main([a if a != "2" else "3" for a in argv])


# ----------------------------------------------------------------------------- the search task

def test_search_task_runs_on_its_own_problems_model_and_outputs(tmp_path):
    from data import tasks

    args = polarity.parse_args(["--task", "search", "--quick", "--runs-dir", str(tmp_path)])
    assert args.name == "polarity-search-quick" and "w-reinforce" in args.variants
    assert polarity.parse_args(["--task", "search"]).name == "polarity-search"
    assert "w-reinforce" not in polarity.parse_args([]).variants  # the default task's study keeps its 9
    assert not set(polarity.SWEEP) & set(args.variants) and len(polarity.SWEEP) == 4  # the sweep: --variants
    settings = polarity.study_settings(args)
    assert settings["task"] == "search" and "task" not in polarity.study_settings(polarity.parse_args([]))
    cmd = polarity.run_command("w-reinforce", 1, settings, polarity.run_dir_of(str(tmp_path), "w-reinforce", 1))
    assert cmd[2:4] == ["--algo", "w-reinforce"] and cmd[cmd.index("--data") + 1] == "search"
    assert "--data" not in polarity.run_command("grpo", 0, polarity.study_settings(polarity.parse_args([])), "x")
    import runs
    import a3po  # --data search brings the search model and its token budget

    cfg = a3po.parse_config(cmd[2:])
    assert cfg.model == "data/search_model" and cfg.max_new_tokens == tasks.SEARCH_MAX_NEW_TOKENS
    train, held_out = runs.load_problems(dataclasses.replace(cfg, train_size=500))
    (held_out,) = held_out
    assert held_out.name == "search" and held_out.problems == tasks.search_problems(16, 0, "test")
    assert not {p.prompt for p in train} & {p.prompt for p in held_out.problems}


def test_length_table_pools_the_recorded_samples(tmp_path):
    rng = np.random.default_rng(0)
    samples = {}
    for v in ("psr", "nsr"):
        for seed in (0, 1):
            write_fake_run(tmp_path / "runs", v, seed)
            rec = {}
            for when in ("start", "end"):
                n = rng.integers(10, 97, size=48).tolist()
                truncated = [int(x == 96) for x in n]
                correct = [int(not t and rng.random() < 0.4) for t in truncated]
                rec[when] = dict(length=n, correct=correct, truncated=truncated)
            if seed == 1:
                rec["start"] = samples[v, 0]["start"]  # one start per seed in a real study; here seed 0's
            samples[v, seed] = rec
            (tmp_path / "runs" / f"{v}-seed{seed}" / "heldout_lengths.json").write_text(json.dumps(rec))
    argv = ["--report-only", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--steps", str(STEPS), "--eval-every", str(EVAL_EVERY)]
    main_without_matplotlib(argv)
    rows = markdown_table((tmp_path / "out" / "polarity.md").read_text(), "## Held-out response lengths")
    for v in ("psr", "nsr"):
        n = np.concatenate([samples[v, s]["end"]["length"] for s in (0, 1)])
        c = np.concatenate([samples[v, s]["end"]["correct"] for s in (0, 1)])
        t = np.concatenate([samples[v, s]["end"]["truncated"] for s in (0, 1)])
        row = rows[v]
        assert row["samples"] == "96" and float(row["mean"]) == pytest.approx(n.mean(), abs=0.05)
        assert int(row["median"]) == int(np.percentile(n, 50, method="inverted_cdf"))
        assert int(row["p10"]) == int(np.percentile(n, 10, method="inverted_cdf"))
        assert int(row["p90"]) == int(np.percentile(n, 90, method="inverted_cdf"))
        assert (int(row["min"]), int(row["max"])) == (n.min(), n.max())
        assert float(row["out of tokens %"]) == pytest.approx(100 * t.mean(), abs=0.05)
        assert float(row["wrong stop %"]) == pytest.approx(100 * (1 - c - t).mean(), abs=0.05)
        assert float(row["length right"]) == pytest.approx(n[c == 1].mean(), abs=0.05)
        assert float(row["length wrong"]) == pytest.approx(n[c == 0].mean(), abs=0.05)
    start = np.array(samples["psr", 0]["start"]["length"])  # both seeds' starts in this fake: seed 0's, twice
    assert float(rows["start (step 0)"]["mean"]) == pytest.approx(start.mean(), abs=0.05)
    numbers = json.loads((tmp_path / "out" / "polarity.json").read_text())
    hist = numbers["nsr"]["1"]["heldout_lengths"]["end"]
    assert sum(hist["hist"]) == 48 and sum(hist["hist_correct"]) == sum(samples["nsr", 1]["end"]["correct"])
    assert hist["hist"][samples["nsr", 1]["end"]["length"][0] // hist["hist_bin"]] >= 1

"""bench/real_model.py: which run folders are finished / resumable / restarted / new, the verdict
rule (the polarity study's), the report on a partial study (fake run folders: no training,
milliseconds), and the study end to end on the tiny test model, where every number of the
report equals a recomputation from the runs' metrics.jsonl and samples.jsonl."""
import datetime
import json
import os
import subprocess
import sys
import time

import pytest
from test_polarity import import_bench, polarity
from test_trainer import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

real_model = import_bench("real_model")
STEPS = 16


def row(text, name):
    """The cells of the Markdown table row whose first cell is `name`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r} in the report")


# ----------------------------------------------------------------------------- fake run folders

def write_lines(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def train_line(step, acc):
    return dict(step=step, split="train", accuracy_drawn=acc, entropy_pos=0.5, entropy_neg=0.9, length_drawn=60.0,
                truncated_drawn=0.2, boosted_pos=0.2, boosted_neg=0.2, alpha_pos=1.5, alpha_neg=1.5, time_step=100.0,
                time_generate=30.0, time_old_logp=20.0, time_update=50.0, rollouts_drawn=64)


def eval_line(step, pass1, length=50.0):
    return dict(step=step, split="eval", benchmark="synthetic", **{"pass@1": pass1, "pass@8": min(1, 3 * pass1)},
                greedy_acc=pass1 + 0.05, truncated=0.1, length=length, time_eval=200.0)


def fake_run(runs_dir, name, steps_done, ckpt=None, after=None, seed=0, before=0.04):
    """RUNS/name as a3po.py leaves it after `steps_done` steps: metrics.jsonl (the step-0
    evaluation, the train lines, and the final evaluation when `after` is given), config.json,
    and checkpoint/trainer_state.json at step `ckpt` (none when None)."""
    run_dir = os.path.join(runs_dir, name)
    os.makedirs(run_dir)
    lines = [eval_line(0, before)] + [train_line(s, 0.05 + 0.01 * s) for s in range(1, steps_done + 1)]
    write_lines(os.path.join(run_dir, "metrics.jsonl"), lines + ([eval_line(steps_done, after)] if after else []))
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(dict(seed=seed, eval_k=[1, 8], eval_size=48, temperature=0.7, max_new_tokens=96, model="m"), f)
    if ckpt is not None:
        os.makedirs(os.path.join(run_dir, "checkpoint"))
        with open(os.path.join(run_dir, "checkpoint", "trainer_state.json"), "w") as f:
            json.dump(dict(step=ckpt), f)
    return run_dir


def test_run_states(tmp_path):
    state = lambda name: real_model.run_state(str(tmp_path / name), STEPS)
    assert state("absent") == ("new", 0)
    (tmp_path / "empty").mkdir()
    assert state("empty") == ("new", 0)
    fake_run(tmp_path, "before-first-checkpoint", 3)  # stopped before its first checkpoint
    assert state("before-first-checkpoint") == ("restart", 0)
    fake_run(tmp_path, "stopped", 9, ckpt=8)  # logged step 9, checkpoint at 8
    assert state("stopped") == ("resumable", 8)
    fake_run(tmp_path, "final-checkpoint-no-eval", STEPS, ckpt=STEPS)  # the final evaluation is missing
    assert state("final-checkpoint-no-eval") == ("resumable", STEPS)
    run_dir = fake_run(tmp_path, "done", STEPS, ckpt=STEPS, after=0.3)
    assert state("done") == ("finished", STEPS)
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 17, "spl')  # a torn append: left out, as a3po.py's --resume drops it
    assert state("done") == ("finished", STEPS)
    os.rename(os.path.join(run_dir, "checkpoint"), os.path.join(run_dir, "checkpoint.old"))  # a save cut mid-swap
    assert state("done") == ("finished", STEPS)
    (tmp_path / "stopped" / "lock").write_text(str(os.getpid()))  # a live pid, but no a3po.py: a stale lock
    assert state("stopped") == ("resumable", 8)
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "a3po.py"])
    try:
        (tmp_path / "stopped" / "lock").write_text(str(trainer.pid))  # an a3po.py process trains there
        for _ in range(200):  # until the child has exec'd (before that its command line is pytest's)
            with open(f"/proc/{trainer.pid}/cmdline", "rb") as f:
                if b"a3po.py" in f.read():
                    break
            time.sleep(0.05)
        assert state("stopped") == ("running", 8)
    finally:
        trainer.kill()
        trainer.wait()
    assert state("stopped") == ("resumable", 8)


def test_next_job_resumes_restarts_and_skips(tmp_path):
    args = real_model.parse_args(["--runs-dir", str(tmp_path), "--seeds", "0", "1", "--variants", "a3po", "dapo",
                                  "--steps", str(STEPS), "--model", "/m", "--", "--lr", "1e-5"])
    fake_run(tmp_path, "a3po-s0", STEPS, ckpt=STEPS, after=0.3)
    (tmp_path / "start-s0").mkdir()
    (tmp_path / "start-s0" / real_model.HELD_OUT).write_text("[]")
    fake_run(tmp_path, "dapo-s0", 9, ckpt=8)
    fake_run(tmp_path, "a3po-s1", 2)
    busy = set()
    jobs = []
    while (job := real_model.next_job(args, busy)) is not None:
        busy.add(job["name"])
        jobs.append(job)
    assert [(j["name"], j["kind"]) for j in jobs] == [
        ("redraw a3po-s0", "redraw"), ("dapo-s0", "resumable"), ("a3po-s1", "restart"), ("dapo-s1", "new")]
    assert jobs[0]["cmd"][-2:] == ["--redraw", str(tmp_path / "a3po-s0")]
    assert jobs[1]["cmd"][1:] == [os.path.join(ROOT, "a3po.py"), "--resume", str(tmp_path / "dapo-s0"), "--threads", "1"]
    for job, algo, seed in ((jobs[2], "a3po", "1"), (jobs[3], "dapo", "1")):
        cmd = job["cmd"]
        assert cmd[cmd.index("--algo") + 1] == algo and cmd[cmd.index("--seed") + 1] == seed
        assert cmd[cmd.index("--run-dir") + 1] == job["folder"] and cmd[-2:] == ["--lr", "1e-5"]
    assert "--resume" not in jobs[2]["cmd"]  # a3po.py starts a folder without checkpoint again


def test_other_settings_are_refused(tmp_path):
    argv = ["--runs-dir", str(tmp_path), "--model", "/m"]
    real_model.check_study(real_model.parse_args(argv))
    real_model.check_study(real_model.parse_args(argv + ["--seeds", "3"]))  # more seeds: the same study
    assert json.loads((tmp_path / "study.json").read_text())["seeds"] == [0, 1, 2, 3]
    with pytest.raises(SystemExit, match="steps: 16 there, 8 now"):
        real_model.check_study(real_model.parse_args(argv + ["--steps", "8"]))


def test_stop_time_and_continue_command():
    args = real_model.parse_args(["--stop-at", "23:25"])
    at = datetime.datetime.fromtimestamp(real_model.stop_time(args), datetime.timezone.utc)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert (at.hour, at.minute) == (23, 25) and datetime.timedelta(0) < at - now <= datetime.timedelta(days=1)
    assert real_model.continue_command(["--jobs", "1", "--stop-at", "23:25", "--stop-after=5", "--seeds", "0"]) == \
        "python bench/real_model.py --jobs 1 --seeds 0"


# ----------------------------------------------------------------------------- the verdict rule

@pytest.mark.parametrize("a, b, expected", [
    ({0: 0.50, 1: 0.52, 2: 0.48}, {0: 0.20, 1: 0.22, 2: 0.18}, "A higher"),
    ({0: 0.20, 1: 0.22, 2: 0.18}, {0: 0.50, 1: 0.52, 2: 0.48}, "B higher"),
    ({0: 0.50, 1: 0.10, 2: 0.30}, {0: 0.20, 1: 0.40, 2: 0.25}, "unclear"),   # within the seed spread
    ({0: 0.305, 1: 0.304}, {0: 0.300, 1: 0.301}, "unclear"),                # below the 1-point floor
    ({0: 0.90}, {0: 0.10, 1: 0.12}, "unclear"),                             # one seed: no spread to judge by
])
def test_verdict_is_the_polarity_rule(a, b, expected):
    r = real_model.verdict(a, b, "pass@1")
    assert r["verdict"] == expected
    # the same d, margin and verdict as bench/polarity.py's compare on the same numbers
    runs = {v: {s: {"summary": {"end": {"pass@1": x}}} for s, x in values.items()} for v, values in (("A", a), ("B", b))}
    p = polarity.compare(runs, ("A", "end", "pass@1"), ("B", "end", "pass@1"))
    assert p["verdict"] == {"A higher": "holds", "B higher": "does not hold", "unclear": "unclear"}[expected]
    assert r["d"] == pytest.approx(p["d"]) and (r["n"] < 2 or r["margin"] == pytest.approx(p["margin"]))


def test_paired_verdict_for_after_vs_before():
    # the same gain on every seed, whatever the seeds' levels: paired, it is clear
    after, before = {0: 0.30, 1: 0.60, 2: 0.45}, {0: 0.20, 1: 0.50, 2: 0.35}
    assert real_model.verdict(after, before, "pass@1", paired=True)["verdict"] == "A higher"
    assert real_model.verdict(after, before, "pass@1")["verdict"] == "unclear"


# ----------------------------------------------------------------------------- the report on a partial study

@pytest.fixture
def partial_study(tmp_path):
    """a3po: seeds 0 and 1 finished (0 redrawn), 2 not started; dapo: seed 0 finished, seed 1
    stopped at its step-8 checkpoint; a3po-pos-only: nothing yet."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "study.json").write_text(json.dumps(dict(
        model="/m", common=real_model.COMMON, steps=STEPS, eval_size=48, save_every=4, extra=[],
        variants=["a3po", "dapo", "a3po-pos-only"], seeds=[0, 1, 2])))
    fake_run(runs, "a3po-s0", STEPS, ckpt=STEPS, after=0.30, seed=0, before=0.04)
    fake_run(runs, "a3po-s1", STEPS, ckpt=STEPS, after=0.20, seed=1, before=0.06)
    fake_run(runs, "dapo-s0", STEPS, ckpt=STEPS, after=0.50, seed=0, before=0.04)
    fake_run(runs, "dapo-s1", 9, ckpt=8, seed=1, before=0.06)
    write_lines(runs / "a3po-s0" / "wall.jsonl", [
        dict(kind="new", seconds=1800, where="this machine's CPU (X, 2 cores)", jobs=1, exit=143),
        dict(kind="resumable", seconds=1200, where="this machine's CPU (X, 2 cores)", jobs=2, exit=0),
        dict(kind="redraw", seconds=240, where="this machine's CPU (X, 2 cores)", jobs=2, exit=0)])
    samples = [dict(completion="The answer is 19.", reward=1.0), dict(completion="The answer is 8+11 = 19.", reward=1.0),
               dict(completion="The answer is 19+9.", reward=1.0), dict(completion="no", reward=0.0)]
    (runs / "a3po-s0" / "heldout_samples.json").write_text(json.dumps(samples))
    (runs / "start-s0").mkdir()
    (runs / "start-s0" / "heldout_samples.json").write_text(json.dumps(samples[2:]))
    return runs


def test_report_on_a_partial_study(partial_study, tmp_path):
    out = str(tmp_path / "report")
    real_model.write_report(str(partial_study), out)
    text = open(out + ".md").read()
    assert row(text, "a3po") == ["2 of 3 (s0, s1)", "s2: not started"]
    assert row(text, "dapo") == ["1 of 3 (s0)", f"s1: resumable at step 8 of {STEPS}; s2: not started"]
    assert row(text, "a3po-pos-only") == ["0 of 3", "s0: not started; s1: not started; s2: not started"]
    assert "| | before | a3po after (2 seeds) | dapo after (1 seed) | a3po-pos-only after (0 seeds) |" in text
    # the mean and each seed; 'before' from each seed's step-0 evaluation; '-' where nothing is finished
    assert row(text, "pass@1 (the reward)") == ["5.0% (s0 4.0, s1 6.0)", "25.0% (s0 30.0, s1 20.0)",
                                                "50.0% (s0 50.0)", "-"]
    assert row(text, "pass@8")[1] == "75.0% (s0 90.0, s1 60.0)"
    # the answer forms come from the redrawn samples, only where they were drawn
    assert row(text, "right and worked out (number or equation)")[:3] == ["0.0% (s0 0.0)", "50.0% (s0 50.0)", "-"]
    assert row(text, "right only as the sum not worked out")[:2] == ["50.0% (s0 50.0)", "25.0% (s0 25.0)"]
    # one finished dapo seed: no verdict yet
    assert row(text, "a3po vs dapo")[0] == "unclear (n = 1)"
    assert row(text, "a3po: after vs before")[0].startswith("unclear: +20.0 (")  # 2 seeds, 26 and 14 points
    assert row(text, "a3po-s0") == ["finished", str(STEPS), "2", "50.0 min",
                                    f"{(STEPS * 100 + 400) / 60:.1f} min", "4.0 min",
                                    "this machine's CPU (X, 2 cores), 1 run(s) at once; "
                                    "this machine's CPU (X, 2 cores), 2 run(s) at once"]
    assert row(text, "dapo-s1")[:3] == ["resumable", "9", "0"]
    assert "Seed 0." in text


def test_entropy_start_end_and_verdicts(tmp_path):
    """Entropy is read as the polarity study reads training numbers: start = step 1, end = the
    mean over the last fifth of training (3 of 16 steps); verdicts by the same rule."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "study.json").write_text(json.dumps(dict(
        model="/m", common=real_model.COMMON, steps=STEPS, eval_size=48, save_every=4, extra=[],
        variants=["a3po", "dapo"], seeds=[0, 1, 2])))
    ends = {"a3po": [1.0, 1.1, 0.9], "dapo": [0.3, 0.2, 0.4]}
    for variant, values in ends.items():
        for seed, end in enumerate(values):
            run_dir = fake_run(runs, f"{variant}-s{seed}", STEPS, ckpt=STEPS, after=0.3, seed=seed)
            lines = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
            for m in lines:
                if m["split"] == "train":  # 0.8 at step 1, then a ramp whose last 3 steps average `end`
                    m["entropy"] = 0.8 if m["step"] == 1 else end + 0.01 * (m["step"] - (STEPS - 1))
                    m["entropy_pos"] = m["entropy"]
            write_lines(os.path.join(run_dir, "metrics.jsonl"), lines)
    out = str(tmp_path / "report")
    real_model.write_report(str(runs), out)
    text = open(out + ".md").read()
    text = text[text.index("## Entropy"):]  # its verdict rows share their names with the held-out ones
    assert row(text, "all tokens") == ["0.80", "1.00 (s0 1.00, s1 1.10, s2 0.90)", "0.30 (s0 0.30, s1 0.20, s2 0.40)"]
    # a3po vs dapo: d = 0.70, Welch se = sqrt(0.01/3 + 0.01/3) = 0.0816 on 4 df: margin 2.776 x se = 0.23
    assert row(text, "a3po vs dapo")[0] == "**a3po higher**: +0.70 (0.23, n = 3)"
    # paired by seed: differences 0.2, 0.3, 0.1 (se 0.058, 2 df: margin 4.303 x se = 0.25) and -0.5, -0.6, -0.4
    assert row(text, "a3po: end vs start")[0] == "unclear: +0.20 (0.25, n = 3)"
    assert row(text, "dapo: end vs start")[0] == "**start higher**: -0.50 (0.25, n = 3)"
    assert row(text, "negative samples' tokens")[1:] == ["0.90 (s0 0.90, s1 0.90, s2 0.90)"] * 2  # fake_run's constant


def test_report_needs_a_study_folder(tmp_path):
    with pytest.raises(SystemExit, match="not a study's runs folder"):
        real_model.write_report(str(tmp_path), str(tmp_path / "report"))


# ----------------------------------------------------------------------------- end to end on the tiny model

@pytest.fixture(scope="module")
def bench_run(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("real-model")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "real_model.py"), "--model", str(tiny / "model"),
           "--steps", "2", "--eval-size", "4", "--seeds", "0", "1", "--variants", "a3po", "dapo",
           "--runs-dir", str(root / "runs"), "--out", str(root / "report"),
           "--", "--max-new-tokens", "4", "--prompts-per-step", "2", "--group-size", "4",
           "--micro-batch-size", "8", "--lr", "3e-3", "--template", "plain"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout


def test_report_equals_the_runs(bench_run):
    root, stdout = bench_run
    text = (root / "report.md").read_text()
    assert text.strip() in stdout  # printed and written alike
    evals = {}
    for algo in ("a3po", "dapo"):
        for seed in (0, 1):
            metrics = read_jsonl(root / "runs" / f"{algo}-s{seed}" / "metrics.jsonl")
            evals[algo, seed] = [m for m in metrics if m["split"] == "eval"]
            assert [m["step"] for m in evals[algo, seed]] == [0, 2]
            assert [m["benchmark"] for m in evals[algo, seed]] == ["synthetic"] * 2
    for seed in (0, 1):  # the variants of a seed start from the same weights with the same evaluation keys
        assert evals["a3po", seed][0] == pytest.approx({**evals["dapo", seed][0],
                                                        "time_eval": evals["a3po", seed][0]["time_eval"]})
    cell = lambda key, v: (f"{v:.1f}" if key == "length" else f"{100 * v:.1f}")
    for key, name in [("pass@1", "pass@1 (the reward)"), ("pass@8", "pass@8"), ("greedy_acc", "greedy"),
                      ("truncated", "hits the token limit"), ("length", "mean length (tokens)")]:
        unit = "" if key == "length" else "%"
        expect = [(0, 0)] + [(algo, -1) for algo in ("a3po", "dapo")]
        cells = []
        for algo, i in expect:
            values = [evals["a3po" if algo == 0 else algo, s][i][key] for s in (0, 1)]
            cells.append(f"{cell(key, sum(values) / 2)}{unit} (s0 {cell(key, values[0])}, s1 {cell(key, values[1])})")
        assert row(text, name) == cells
    for algo in ("a3po", "dapo"):
        assert row(text, f"{algo}-s0")[:3] == ["finished", "2", "1"]
        wall = read_jsonl(root / "runs" / f"{algo}-s0" / "wall.jsonl")
        assert [w["kind"] for w in wall] == ["new", "redraw"] and wall[0]["exit"] == 0
    assert os.path.exists(root / "report.png") or "matplotlib is not installed" in stdout


def test_report_shows_the_same_problems_before_and_after(bench_run):
    root, _ = bench_run
    text = (root / "report.md").read_text()
    samples = [s for s in read_jsonl(root / "runs" / "a3po-s0" / "samples.jsonl") if s["split"] == "eval"]
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
    columns = []
    for folders in (["start-s0", "start-s1"], ["a3po-s0", "a3po-s1"], ["dapo-s0", "dapo-s1"]):
        per_seed = []
        for folder in folders:
            samples = json.loads((root / "runs" / folder / "heldout_samples.json").read_text())
            assert len(samples) == 4 * 8  # --eval-size 4, 8 samples each
            right = [real_model.answer_form(x["completion"]) for x in samples if x["reward"]]
            per_seed.append({f: sum(r == f for r in right) / len(samples) for f in ("number", "equation", "expression")})
        columns.append(per_seed)
    # the redrawn samples are the logged ones: the same pass@1 as the run's last evaluation
    evals = [m for m in read_jsonl(root / "runs" / "dapo-s1" / "metrics.jsonl") if m["split"] == "eval"]
    assert sum(x["reward"] for x in samples) / len(samples) == pytest.approx(evals[-1]["pass@1"])
    for form, name in (("computed", "right and worked out (number or equation)"),
                       ("expression", "right only as the sum not worked out")):
        value = lambda c: c["number"] + c["equation"] if form == "computed" else c[form]
        assert row(text, name) == [f"{100 * (value(a) + value(b)) / 2:.1f}% (s0 {100 * value(a):.1f}, "
                                   f"s1 {100 * value(b):.1f})" for a, b in columns]


@pytest.mark.parametrize("text, form", [
    ("The answer is 19.", "number"), ("\\boxed{-3}", "number"),
    ("So, the final answer is 8+11 = 19.", "equation"),
    ("The answer is 28 cards.", "number"), ("Final answer: 6 - 4 = 2 days.", "equation"),
    ("The answer is 19 + 9 cards.", "expression"),
    ("Reasoning: 19 + 9 = 18.\n\nSo, the final answer is 19+9.", "expression"),
    ("\\boxed{19+9}", "expression"), ("I do not know", None),
])
def test_answer_form(text, form):
    assert real_model.answer_form(text) == form

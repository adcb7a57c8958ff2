"""What users and schedulers do to a run: signals, kills, torn files, two runs at once, hostile
files and flags. Each test reproduces the fault (a subprocess killed or signalled at a chosen
point, a file the test tears or corrupts) and checks the run survives it or refuses clearly."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import a3po
import runs
import model
from test_trainer import ROOT, read_jsonl, tiny_args, write_jsonl, N_DIGITS


def a3po_process(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "a3po.py"), "--threads", "1", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def wait_for(predicate, proc, seconds=60):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < seconds, "timed out"
        time.sleep(0.05)


def train_lines(run):
    path = run / "metrics.jsonl"
    return [m for m in read_jsonl(path) if m["split"] == "train"] if path.exists() else []


def user_error(argv):
    """Run a3po.py with argv: it must exit 2 with ONE line on stderr and no traceback."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "a3po.py"), *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and lines[-1].startswith("a3po: error: "), out.stderr
    return lines[-1]


# ----------------------------------------------------------------------------- signals

@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_after_the_step_saves_and_exits_non_zero(tiny, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = a3po_process(tiny_args(tiny, run, "--steps", "200"))
    wait_for(lambda: len(train_lines(run)) >= 1, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out, err)
    assert signal.Signals(sig).name in out and "--resume" in out
    with open(run / "checkpoint" / "trainer_state.json") as f:
        step = json.load(f)["step"]
    assert step >= 1 and [m["step"] for m in train_lines(run)] == list(range(1, step + 1))
    assert not (run / "lock").exists()
    # and the run continues from there
    resumed = a3po_process(["--resume", str(run), "--override", "--steps", str(step + 1)])
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert [m["step"] for m in train_lines(run)] == list(range(1, step + 2))


def test_kill_during_a_save_leaves_no_stale_folder_after_resume(tiny, tmp_path):
    """kill -9 in the middle of the second checkpoint save (inside model.save, after its
    temporary folder is written): the first checkpoint stays, and the next run removes the
    temporary folders the killed save left."""
    run = tmp_path / "run"
    script = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]); import a3po, safetensors.torch as st\n"
        "real, calls = st.save_file, []\n"
        "def save_then_die(*a, **k):  # saves: 1 weights, 2 optimizer (step 1), 3 weights (step 2)\n"
        "    real(*a, **k); calls.append(1)\n"
        "    if len(calls) == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
        "st.save_file = save_then_die\n"
        "a3po.main(sys.argv[2:])\n")
    args = tiny_args(tiny, run, "--steps", "3", "--save-every", "1")
    out = subprocess.run([sys.executable, "-c", script, ROOT, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    stale = [n for n in os.listdir(run) if n.startswith(".checkpoint") or n == "checkpoint.tmp"]
    assert stale, os.listdir(run)  # what the kill left behind
    with open(run / "checkpoint" / "trainer_state.json") as f:
        assert json.load(f)["step"] == 1
    assert (run / "lock").exists()  # a dead process's lock ...
    a3po.train(a3po.parse_config(["--resume", str(run)]))  # ... is taken over
    assert not [n for n in os.listdir(run) if n.startswith(".checkpoint") or n == "checkpoint.tmp"]
    assert [m["step"] for m in train_lines(run)] == [1, 2, 3] and not (run / "lock").exists()


# ----------------------------------------------------------------------------- two runs at once

def test_run_folders_are_unique_and_locked(tiny, tmp_path):
    cfg = a3po.parse_config(["--seed", "3"])
    name = runs.new_run_dir(cfg.algo, cfg.seed)
    assert name.startswith(os.path.join("runs", "a3po-")) and name.endswith(f"-s3-{os.getpid()}")
    assert runs.new_run_dir("a3po", 4) != name
    run = tmp_path / "run"
    first = a3po_process(tiny_args(tiny, run, "--steps", "200"))
    try:
        wait_for(lambda: (run / "lock").exists() and (run / "lock").read_text().strip() != "", first)
        line = user_error(tiny_args(tiny, run, "--steps", "2"))
        assert f"in use by process {first.pid}" in line
    finally:
        first.kill()
        first.communicate()


# ----------------------------------------------------------------------------- torn and corrupt files

def test_resume_drops_a_torn_last_metrics_line(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    a3po.train(a3po.parse_config(tiny_args(tiny, run, "--steps", "2")))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "tra')  # the disk filled during an append
    a3po.train(a3po.parse_config(["--resume", str(run), "--override", "--steps", "3"]))
    assert "dropped a torn last line" in capsys.readouterr().out
    assert [m["step"] for m in train_lines(run)] == [1, 2, 3]
    # a bad line that is not the last one is not a torn append: an error naming file:line
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        runs.prepare(a3po.parse_config(["--resume", str(run), "--override", "--steps", "4"]))


def test_corrupt_run_files_are_named(tiny, tmp_path):
    run = tmp_path / "run"
    a3po.train(a3po.parse_config(tiny_args(tiny, run, "--steps", "1")))
    config = (run / "config.json").read_text()

    (run / "config.json").write_text(config[:40])
    assert "config.json: corrupt run config" in user_error(["--resume", str(run)])
    (run / "config.json").write_text(config.replace('"seed": 0', '"seed": 0, "sed": 1'))
    assert "config.json: unknown setting(s) sed" in user_error(["--resume", str(run)])
    (run / "config.json").write_text(config)

    state = run / "checkpoint" / "trainer_state.json"
    good_state = state.read_text()
    state.write_text(good_state[:-20])
    assert "trainer_state.json: corrupt trainer state" in user_error(["--resume", str(run), "--override", "--steps", "2"])
    state.write_text(good_state)

    opt = run / "checkpoint" / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    assert "optimizer.safetensors: cannot restore the optimizer" in user_error(["--resume", str(run), "--override", "--steps", "2"])


def test_held_out_problem_too_long_is_named_by_its_file_and_line(tiny, tmp_path):
    data = tmp_path / "data.jsonl"
    records = [{"q": f"q{i % N_DIGITS}", "a": "1"} for i in range(24)]
    records[18]["q"] = " ".join(["q1"] * 80)  # line 19: longer than the context of 64
    write_jsonl(data, records)
    args = [a for a in tiny_args(tiny, tmp_path / "run") if a not in ("--eval-data", str(tiny / "eval.jsonl"))]
    args[args.index("--data") + 1] = str(data)
    with pytest.raises(ValueError, match=rf"{data}:19: prompt of \d+ tokens"):
        a3po.train(a3po.parse_config(args))


# ----------------------------------------------------------------------------- hostile flags and models

@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e39"])
def test_non_finite_or_absurd_float_flags_are_refused_at_start(value):
    with pytest.raises(ValueError, match="--lr"):
        runs.check_machine(a3po.parse_config([f"--lr={value}"]))
    with pytest.raises(ValueError, match="--temperature"):
        runs.check_machine(a3po.parse_config([f"--temperature={value}"]))


def test_user_errors_are_one_line_and_exit_2(tiny, tmp_path):
    assert "--lr inf: must be a finite number" in user_error(["--lr", "inf"])
    assert "--lr 2.0 must be in [0, 1]" in user_error(tiny_args(tiny, tmp_path / "r", "--lr", "2"))
    assert "nope.jsonl: no such file" in user_error(["--data", str(tmp_path / "nope.jsonl")])
    assert "invalid choice" in user_error(["--loss-agg", "token-max"])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"q": "q1", "a": "1"}\n\xff\xfe\x00binary\n')
    args = tiny_args(tiny, tmp_path / "r2")
    args[args.index("--data") + 1] = str(bad)
    assert f"{bad}:2:" in user_error(args)


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(tiny, tmp_path):
    net, tok = model.load(str(tiny / "model"))
    name = [n for n, _ in net.named_parameters() if n.endswith("1.mlp.up_proj.weight")][0]
    with torch.no_grad():
        dict(net.named_parameters())[name][0, 0] = float("nan")
    model.save(net, tok, str(tmp_path / "nan_model"))
    args = tiny_args(tiny, tmp_path / "run", "--model", str(tmp_path / "nan_model"))
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.up_proj\.weight.*non-finite"):
        a3po.train(a3po.parse_config(args))


def test_a_checkpoint_without_eos_needs_eos_token(tiny, tmp_path):
    folder = tmp_path / "no_eos"
    net, tok = model.load(str(tiny / "model"))
    model.save(net, tok, str(folder))
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.exists():
            cfg = json.loads(path.read_text())
            cfg.pop("eos_token_id", None), cfg.pop("eos_token", None)
            path.write_text(json.dumps(cfg))
    assert model.load(str(folder))[1].eos_ids == []  # it loads, for logits
    args = tiny_args(tiny, tmp_path / "run", "--model", str(folder), "--steps", "1")
    with pytest.raises(ValueError, match="name no EOS token.*--eos-token"):
        a3po.train(a3po.parse_config(args))
    result = a3po.train(a3po.parse_config(args + ["--eos-token", "<eos>"]))
    assert result["after"] is not None
    assert model.load(str(tmp_path / "run" / "checkpoint"))[1].eos_ids == [1]


def test_resume_refuses_changed_settings_unless_overridden(tiny, tmp_path):
    """--resume continues a run with its saved settings: a flag that would change one is refused
    (config.json untouched); with --override it is applied and recorded in changes.jsonl, and
    the schedules keep the horizons the run started with."""
    run = tmp_path / "run"
    a3po.train(a3po.parse_config(tiny_args(tiny, run, "--steps", "2", "--lr-schedule", "cosine")))
    config = (run / "config.json").read_text()
    saved = json.loads(config)
    assert (saved["alpha_decay_steps"], saved["lr_decay_steps"]) == (2, 2)  # resolved, so an extension keeps them
    msg = user_error(["--resume", str(run), "--lr", "1e-3", "--steps", "5"])
    assert "--lr 0.001 (saved: 0.003)" in msg and "--steps 5 (saved: 2)" in msg and "--override" in msg
    assert (run / "config.json").read_text() == config and not (run / "changes.jsonl").exists()
    # flags equal to the saved values, and how-to-run flags, are not changes
    a3po.parse_config(["--resume", str(run), "--steps", "2", "--lr", "3e-3", "--threads", "1"])

    a3po.train(a3po.parse_config(["--resume", str(run), "--override", "--steps", "4"]))
    assert read_jsonl(run / "changes.jsonl") == [dict(from_step=3, changed=dict(steps=[2, 4]))]
    saved = json.loads((run / "config.json").read_text())
    assert saved["steps"] == 4 and saved["alpha_decay_steps"] == 2 and "override" in saved
    extended = train_lines(run)
    # the boost decays over the run's own 2 steps and stays at 1 after them (a fresh 4-step run
    # gives 2, 1.75, 1.5, 1.25); so does the learning rate's cosine (0 from its horizon on)
    assert [m["alpha_pos"] for m in extended] == [2.0, 1.5, 1.0, 1.0]
    assert [m["lr"] for m in extended][2:] == [0.0, 0.0]
    # --override is said for one resume only
    assert "--steps 6 (saved: 4)" in user_error(["--resume", str(run), "--steps", "6"])


def test_a_bug_during_set_up_keeps_its_traceback(tiny, tmp_path, monkeypatch):
    """Only errors about the user's input are one-line errors: a ValueError from a bug in the
    set-up propagates with its traceback, while the loaders' file errors exit 2."""
    def buggy(cfg):
        raise ValueError("an internal bug")
    monkeypatch.setattr(runs, "load_problems", buggy)
    with pytest.raises(ValueError, match="an internal bug"):
        a3po.main(tiny_args(tiny, tmp_path / "r"))
    monkeypatch.undo()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "q1", "a": "1"}\nnot json\n')
    with pytest.raises(SystemExit) as e:
        a3po.main(tiny_args(tiny, tmp_path / "r2", "--eval-data", str(bad)))
    assert e.value.code == 2

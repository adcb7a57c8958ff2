"""Mistakes a newcomer makes on the command line: each is one line `a3po: error: ...` (exit 2),
no traceback and no usage block, and says what to type instead. The runs use the shipped tiny
model (data/default_model) on the synthetic task, one step each."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import a3po
import model
import runs
from cli import UserError

ONE_STEP = ["--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--micro-batch-size", "4",
            "--eval-size", "2", "--eval-k", "1", "--max-new-tokens", "8", "--threads", "1"]


def error_line(capsys, argv) -> str:
    """a3po.main(argv) must exit 2 with exactly one line on stderr; returns it without `a3po: error: `."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        a3po.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("a3po: error: "), err
    return err.strip().removeprefix("a3po: error: ")


def no_loading(monkeypatch):
    """Make loading data or a model fail the test: the error must come before it."""
    def fail(*args, **kwargs):
        pytest.fail("loaded data or a model before the error")
    for module, name in ((model, "load"), (runs, "load_policy"), (runs, "load_problems")):
        monkeypatch.setattr(module, name, fail)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run folder of a finished 1-step run (config.json, metrics.jsonl, checkpoint/)."""
    run = tmp_path_factory.mktemp("newcomer") / "run"
    a3po.main(ONE_STEP + ["--run-dir", str(run)])
    return run


def test_unknown_or_abbreviated_flags(capsys):
    # argparse would run these prefixes as --steps 1 and --eval-only
    assert error_line(capsys, ["--step", "1"]) == "unknown flag --step (did you mean --steps?)"
    assert error_line(capsys, ["--eval-on"]) == "unknown flag --eval-on (did you mean --eval-only?)"
    assert error_line(capsys, ["--stepz=3"]) == "unknown flag --stepz (did you mean --steps?)"
    assert error_line(capsys, ["--xyzzy"]) == "unknown flag --xyzzy (see --help)"
    assert error_line(capsys, ["--steps", "1", "2"]) == "unexpected argument '2': a value with no --flag before it"
    # argparse's other errors, without its usage block
    assert error_line(capsys, ["--steps", "x"]) == "--steps: invalid int value: 'x'"
    assert error_line(capsys, ["--steps"]) == "--steps: expected one argument"
    assert error_line(capsys, ["--algo", "foo"]).startswith("--algo: invalid choice: 'foo' (choose from ")
    # the full names still work
    cfg = a3po.parse_config(["--steps", "3", "--eval-only", "--no-dynamic-sampling", "--lr=0.5"])
    assert (cfg.steps, cfg.eval_only, cfg.dynamic_sampling, cfg.lr) == (3, True, False, 0.5)


def test_run_folder_as_model_and_checkpoint_as_resume(finished_run, capsys, monkeypatch):
    run, ckpt = str(finished_run), os.path.join(str(finished_run), "checkpoint")
    no_loading(monkeypatch)
    assert error_line(capsys, ["--model", run]) == (
        f"--model {run} is a training run's folder: to start from its weights pass --model {ckpt}; "
        f"to continue the run pass --resume {run}")
    assert error_line(capsys, ["--model", run, "--eval-only"]).startswith(
        f"--model {run} is a training run's folder: to evaluate its weights pass --model {ckpt};")
    assert error_line(capsys, ["--resume", ckpt]) == (
        f"--resume {ckpt} is a checkpoint folder: pass the run folder, --resume {run}")
    assert error_line(capsys, ["--resume", ckpt + os.sep]) == (
        f"--resume {ckpt + os.sep} is a checkpoint folder: pass the run folder, --resume {run}")
    model_dir = runs.resolve_model_path("data/default_model")
    assert error_line(capsys, ["--resume", model_dir]) == (
        f"--resume {model_dir} is a model folder, not a training run's: to train from it pass --model {model_dir}")
    # what the messages advise is accepted
    runs.check_machine(a3po.parse_config(["--model", ckpt]))
    assert a3po.parse_config(["--resume", run]).steps == 1


def test_data_format_errors_name_the_flags(tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(f'{{"q": "{i} + 1?", "a": "{i + 1}"}}\n' for i in range(8)))
    run = tmp_path / "run"
    base = ONE_STEP + ["--data", str(data), "--run-dir", str(run)]
    assert error_line(capsys, base) == (
        f"{data}:1: cannot tell the format from keys ['a', 'q']; pass --data-format gsm8k / math / olympiad, "
        "or --prompt-key KEY and --answer-key KEY")
    assert error_line(capsys, base + ["--data-format", "gsm8k", "--prompt-key", "q", "--answer-key", "a"]) == \
        "--prompt-key / --answer-key apply to --data-format generic, not gsm8k"
    assert error_line(capsys, base + ["--prompt-key", "q"]) == \
        "--data-format generic needs both --prompt-key and --answer-key"
    assert error_line(capsys, base + ["--data-format", "generic"]) == \
        "--data-format generic needs both --prompt-key and --answer-key"
    # each failed after taking the run folder: the lock went, and so did the folder it made
    assert not run.exists()


def test_cuda_device_this_machine_lacks(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        assert error_line(capsys, ["--device", name]) == (
            f"--device {name}: this machine has no CUDA device (torch.cuda.is_available() is False); "
            "use --device cpu")
    assert error_line(capsys, ["--device", "gpu"]) == "--device gpu: not a device (auto, cpu, cuda or cuda:N)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert error_line(capsys, ["--device", "cuda:2"]) == \
        "--device cuda:2: cuda:2 is beyond this machine's 2 CUDA device(s) (cuda:0 to cuda:1)"


def test_a_folder_in_use_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "lock").write_text(str(other.pid))
        no_loading(monkeypatch)
        cfg = a3po.resolve_defaults(a3po.parse_config(ONE_STEP + ["--run-dir", str(run)]))
        with pytest.raises(UserError, match=f"in use by process {other.pid}"):
            runs.prepare(cfg)
        assert error_line(capsys, ONE_STEP + ["--run-dir", str(run)]) == \
            f"{run} is in use by process {other.pid} (its lock: {run / 'lock'})"
        assert (run / "lock").read_text() == str(other.pid)  # the other run's lock stays
    finally:
        other.kill()
        other.wait()

    # its process gone, the lock is taken over, and released again by an error while loading
    def broken(*args, **kwargs):
        assert (run / "lock").read_text() == str(os.getpid())  # held while loading
        raise UserError("broken model")
    monkeypatch.setattr(runs, "load_problems", runs.read_problems)
    monkeypatch.setattr(runs, "load_policy", broken)
    with pytest.raises(UserError, match="broken model"):
        runs.prepare(cfg)
    assert run.is_dir() and not (run / "lock").exists()


def test_resume_before_the_first_checkpoint(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "checkpoint")  # as if it stopped during its first steps
    (run / "metrics.jsonl").write_text("")
    (run / "samples.jsonl").write_text("")
    assert error_line(capsys, ["--resume", str(run)]) == (
        f"--resume {run}: no checkpoint there (the run stopped before its first one); "
        f"start it again with --run-dir {run} and the flags it was started with")
    assert not (run / "lock").exists()
    # and that advice works
    a3po.main(ONE_STEP + ["--run-dir", str(run)])
    assert runs.find_checkpoint(str(run)) == str(run / "checkpoint")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["split"] == "train"] == [1]

"""loggers.py: the optional W&B and TensorBoard dashboards, with no network. W&B runs offline
and what it wrote is read back from its .wandb file; TensorBoard's event files are read back
with TensorBoard's own reader. A missing package is simulated with sys.modules[name] = None."""
import glob
import json
import os
import struct
import subprocess
import sys
import time
import types

import pytest

import loggers
import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the trainer appends to metrics.jsonl: an evaluation before step 1, training steps, an
# evaluation that shares its step with the training step before it.
RECORDS = [
    {"step": 0, "split": "eval", "benchmark": "math500", "pass@1": 0.25, "avg@8": 0.5, "time_eval": 3.0},
    {"step": 1, "split": "train", "reward": 0.5, "accuracy": 0.75, "entropy_pos": float("nan"),
     "nonfinite_skipped": 0, "per_epoch": {"loss": [0.1, 0.2]}, "time_step": 1.5},
    {"step": 2, "split": "train", "reward": 0.625, "accuracy": 0.5, "entropy_pos": 0.875,
     "nonfinite_skipped": 1, "per_epoch": {"loss": [0.3, 0.4]}, "time_step": 1.25},
    {"step": 2, "split": "eval", "pass@1": 0.375, "avg@8": 0.75, "time_eval": 2.5},  # no benchmark: an older run
]
# What the dashboards get from them, per record (the NaN, the lists, split and benchmark left out).
EXPECTED = [
    {"eval/math500/pass@1": 0.25, "eval/math500/avg@8": 0.5, "eval/math500/time_eval": 3.0},
    {"train/reward": 0.5, "train/accuracy": 0.75, "train/nonfinite_skipped": 0, "train/time_step": 1.5},
    {"train/reward": 0.625, "train/accuracy": 0.5, "train/entropy_pos": 0.875, "train/nonfinite_skipped": 1,
     "train/time_step": 1.25},
    {"eval/held-out/pass@1": 0.375, "eval/held-out/avg@8": 0.75, "eval/held-out/time_eval": 2.5},
]
CONFIG = {"algo": "grpo", "lr": 1e-6, "eval_k": [1, 8]}


def test_dashboard_names_and_values():
    assert [loggers.dashboard_scalars(r) for r in RECORDS] == EXPECTED
    assert loggers.dashboard_scalars({"step": 3, "split": "train", "ok": True, "inf": float("-inf")}) == {"train/ok": 1}


# ----------------------------------------------------------------------------- neither

def test_neither_writes_nothing_and_imports_neither_package(tmp_path):
    # A fresh interpreter: this one may have imported the packages for the other tests.
    code = ("import json, sys, loggers\n"
            "l = loggers.open_loggers(sys.argv[1], {}, None, False, 0)\n"
            "for r in json.loads(sys.argv[2]):\n"
            "    l.log(r)\n"
            "l.close()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'tensorboard')\n"
            "             or m.startswith('torch.utils.tensorboard')))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), json.dumps(RECORDS)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- missing packages

def test_missing_wandb_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets when it is not installed
    with pytest.raises(cli.UserError) as e:
        loggers.open_loggers(str(tmp_path), CONFIG, "a3po", True, 0)
    assert str(e.value) == "--wandb needs the wandb package: pip install wandb"
    assert os.listdir(tmp_path) == []  # stopped before anything was written, the TensorBoard folder too


def test_missing_tensorboard_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(cli.UserError) as e:
        loggers.open_loggers(str(tmp_path), CONFIG, None, True, 0)
    assert str(e.value) == "--tensorboard needs the tensorboard package: pip install tensorboard"
    assert os.listdir(tmp_path) == []


def test_a_wandb_error_is_one_line(tmp_path, monkeypatch):
    # e.g. no API key and no terminal to ask for one (the message here is made up, on two lines)
    class WandbError(Exception):
        pass

    def init(**kwargs):
        raise WandbError("No API key configured.\nUse `wandb login` to log in.")

    fake = types.SimpleNamespace(init=init, errors=types.SimpleNamespace(Error=WandbError))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.raises(cli.UserError) as e:
        loggers.open_loggers(str(tmp_path), CONFIG, "a3po", False, 0)
    assert str(e.value) == "--wandb a3po: No API key configured. Use `wandb login` to log in."


# ----------------------------------------------------------------------------- W&B

@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B with no network: offline mode, quiet, its settings and caches under tmp_path."""
    pytest.importorskip("wandb")  # requirements-dev.txt installs it; skipped only where it is not
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    for name in ("WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_DIR", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "grpo-run"
    run_dir.mkdir()
    return str(run_dir)


def wandb_runs(run_dir: str) -> list[dict]:
    """What W&B wrote, one dict per process that opened the run (oldest first): run_id, name,
    project, config {key: value}, history [{name: value} per log call, W&B's own "_" keys left out].

    run.finish() can return before W&B's service process has written everything (at the exit of
    a process it does wait), so this waits until each file ends with the run's exit record."""
    paths = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    deadline = time.time() + 20
    while True:
        records = {path: wandb_records(path) for path in paths}
        if all(r and r[-1].HasField("exit") for r in records.values()) or time.time() > deadline:
            break
        time.sleep(0.05)
    found = []
    for path in sorted(paths, key=os.path.getmtime):
        assert records[path] and records[path][-1].HasField("exit"), f"{path}: no exit record after 20 s"
        run = {"history": [], "config": {}}
        for record in records[path]:
            if record.HasField("run"):
                run.update(run_id=record.run.run_id, name=record.run.display_name, project=record.run.project)
                run["config"].update({c.key: json.loads(c.value_json) for c in record.run.config.update})
            elif record.HasField("config"):
                run["config"].update({c.key: json.loads(c.value_json) for c in record.config.update})
            elif record.HasField("history"):
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                run["history"].append({k: v for k, v in items.items() if not k.startswith("_")})
        found.append(run)
    return found


def wandb_records(path: str) -> list:
    """The records of an offline run's .wandb file, as far as it is written: a 7-byte header,
    then 32 KiB blocks of chunks, each [crc32: 4 bytes, length: 2, type: 1] + data (the LevelDB log
    format); a chunk of type 1 is a whole record, types 2, 3, 4 the first, middle and last part of
    one; a block's last < 7 bytes are padding. Each record is a protobuf wandb_internal.Record."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert len(data) < 4 or data[:4] == b":W&B", path
    records, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):
            break  # being written
        parts = (b"" if kind in (1, 2) else parts) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(parts))
    return records


def test_wandb_logs_every_record_at_its_step(wandb_offline):
    l = loggers.open_loggers(wandb_offline, CONFIG, "a3po-tests", False, 0)
    for r in RECORDS:
        l.log(r)
    l.close()
    l.close()  # a second close does nothing

    (run,) = wandb_runs(wandb_offline)
    with open(os.path.join(wandb_offline, "wandb_id"), encoding="utf-8") as f:
        assert run["run_id"] == f.read().strip()
    assert run["name"] == "grpo-run" and run["project"] == "a3po-tests"
    assert {k: run["config"][k] for k in CONFIG} == CONFIG
    # one row per record, in order, x = the trainer's step (eval 0 before step 1, eval 2 after train 2)
    assert run["history"] == [{"step": r["step"], **e} for r, e in zip(RECORDS, EXPECTED)]


def test_wandb_resume_continues_the_same_run(wandb_offline):
    l = loggers.open_loggers(wandb_offline, CONFIG, "a3po-tests", False, 0)
    for r in RECORDS[:3]:
        l.log(r)
    l.close()
    wandb_runs(wandb_offline)  # written out, as when its process ended
    # --resume from a checkpoint at step 1: step 2 is replayed
    l = loggers.open_loggers(wandb_offline, {**CONFIG, "lr": 2e-6}, "a3po-tests", False, 1)
    for r in RECORDS[2:]:
        l.log(r)
    l.close()

    first, resumed = wandb_runs(wandb_offline)
    assert resumed["run_id"] == first["run_id"] and resumed["name"] == first["name"]
    assert resumed["config"]["lr"] == 2e-6  # a setting changed by --resume --override reaches W&B
    assert [h["step"] for h in first["history"]] == [0, 1, 2]
    assert resumed["history"] == [{"step": 2, **EXPECTED[2]}, {"step": 2, **EXPECTED[3]}]

    # a new run in the same folder (one that never reached its first checkpoint) is a new W&B run
    loggers.open_loggers(wandb_offline, CONFIG, "a3po-tests", False, 0).close()
    all_runs = wandb_runs(wandb_offline)
    assert len(all_runs) == 3 and all_runs[-1]["run_id"] != first["run_id"]


# ----------------------------------------------------------------------------- TensorBoard

def tensorboard_scalars(run_dir: str) -> dict:
    """{tag: [(step, value), ...]} as TensorBoard shows it: earlier processes' purged steps are gone
    (a tag left with none is left out)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(os.path.join(run_dir, "tensorboard"),
                                             size_guidance={event_accumulator.SCALARS: 0})  # 0: keep all
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if acc.Scalars(tag)}


def test_tensorboard_logs_every_record_at_its_step(tmp_path):
    pytest.importorskip("tensorboard")  # requirements-dev.txt installs it; skipped only where it is not
    l = loggers.open_loggers(str(tmp_path), CONFIG, None, True, 0)
    for r in RECORDS:
        l.log(r)
    l.close()

    expected = {}
    for r, e in zip(RECORDS, EXPECTED):
        for tag, value in e.items():
            expected.setdefault(tag, []).append((r["step"], pytest.approx(value)))  # float32 in the event file
    assert tensorboard_scalars(str(tmp_path)) == expected
    assert os.listdir(tmp_path) == ["tensorboard"]


def test_tensorboard_resume_drops_the_replayed_steps(tmp_path):
    pytest.importorskip("tensorboard")
    l = loggers.open_loggers(str(tmp_path), CONFIG, None, True, 0)
    for r in RECORDS:
        l.log(r)
    l.close()
    # --resume from a checkpoint at step 1: what the first process logged at step 2 is replaced
    l = loggers.open_loggers(str(tmp_path), CONFIG, None, True, 1)
    l.log({"step": 2, "split": "train", "reward": 0.125, "accuracy": 1.0})
    l.log({"step": 3, "split": "train", "reward": 0.25, "accuracy": 0.0})
    l.close()

    scalars = tensorboard_scalars(str(tmp_path))
    assert scalars["train/reward"] == [(1, 0.5), (2, 0.125), (3, 0.25)]
    assert scalars["eval/math500/pass@1"] == [(0, 0.25)]  # before the checkpoint: kept
    assert "eval/held-out/pass@1" not in scalars  # step 2, after it: gone (not logged again here)
    assert [s for s, _ in scalars["train/time_step"]] == [1]


# ----------------------------------------------------------------------------- in a run

def test_a_run_with_both_dashboards(tmp_path, monkeypatch, capsys):
    """--wandb (offline) and --tensorboard on a 2-step run of the shipped model: TensorBoard
    holds the run's metrics.jsonl numbers at their steps, W&B's offline run folder is there, and a
    missing package stops the run with one line before anything loads."""
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import a3po
    for name, value in dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "wb"),
                            WANDB_CACHE_DIR=str(tmp_path / "wb"), WANDB_DATA_DIR=str(tmp_path / "wb")).items():
        monkeypatch.setenv(name, value)
    run = tmp_path / "run"
    args = ["--steps", "2", "--prompts-per-step", "2", "--group-size", "4", "--micro-batch-size", "8",
            "--eval-size", "4", "--eval-k", "1", "2", "--max-new-tokens", "16", "--threads", "1",
            "--run-dir", str(run), "--wandb", "a3po-test", "--tensorboard"]
    a3po.main(args)
    with open(run / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rewards = [(e.step, e.value) for e in events.Scalars("train/reward")]
    assert rewards == [(m["step"], pytest.approx(m["reward"])) for m in logged if m["split"] == "train"]
    assert [e.step for e in events.Scalars("eval/synthetic/pass@1")] == [0, 2]
    assert glob.glob(str(run / "wandb" / "offline-run-*")) and (run / "wandb_id").exists()

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(SystemExit) as e:
        a3po.main(args[:-3] + ["--run-dir", str(tmp_path / "other"), "--tensorboard"])
    assert e.value.code == 2 and "--tensorboard needs the tensorboard package" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()

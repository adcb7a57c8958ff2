"""a3po.py under torchrun on CPU (gloo, 2 processes): the per-row random numbers, one update
against the single-process `ppo_update`, whole runs against one process, Ctrl-C and a crash.

Run as a script (`torchrun ... tests/test_distributed.py --update-worker OUT`) this file is the
worker of test_distributed_update_equals_single_process.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import a3po  # noqa: E402
import runs  # noqa: E402
import model  # noqa: E402
import processes  # noqa: E402
from test_trainer import ROOT, N_DIGITS, deterministic, read_jsonl, shaped, tiny_args, tiny_batch  # noqa: E402

AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum-norm")
# (name, Config overrides, gradient checkpointing, reference model for the KL)
UPDATE_CASES = [(agg, dict(loss_agg=agg), False, False) for agg in AGGS] + [
    ("checkpointing", dict(loss_agg="token-mean"), True, False),
    ("kl", dict(kl_coef=0.1, clip_c=3.0), False, True),
]


def torchrun(*args, n=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# ----------------------------------------------------------------------------- per-row random numbers

def test_row_uniforms_are_uniform_independent_and_batch_free():
    keys = model.hash64(0, 1, 5, 1, torch.arange(200_000))            # one step's keys of 200k rows
    u = model.uniforms(keys, 3)[:, 0]
    assert u.dtype == torch.float64 and bool((u >= 0).all()) and bool((u < 1).all())
    assert float(model._shr(torch.tensor([-1]), 11).double() * 2.0 ** -53) < 1.0  # the largest value is not 1.0
    n = len(u)  # Kolmogorov-Smirnov against U(0, 1): D < 1.95 / sqrt(n) is p > 0.001
    s = u.sort().values
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    D = float(torch.maximum(grid - s, s - (grid - 1 / n)).max())
    assert D < 1.95 / n ** 0.5, D
    corr = lambda a, b: float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(corr(u[:-1], u[1:])) < 0.01                            # neighbouring rows
    assert abs(corr(u, model.uniforms(keys, 4)[:, 0])) < 0.01          # a row's consecutive steps
    assert abs(corr(u, model.uniforms(model.hash64(0, 1, 6, 1, torch.arange(n)), 3)[:, 0])) < 0.01  # next RL step
    # bit-identical whatever batch a row is in
    pick = torch.tensor([7, 0, 199_999, 12345])
    assert torch.equal(model.uniforms(keys[pick], 3), model.uniforms(keys, 3)[pick])


def test_a_row_samples_the_same_tokens_in_any_batch(tiny):
    """generate(row_keys=...): a row's tokens are the same alone, in a batch, in another order and
    in chunks; only a different matmul blocking (batch 1 vs many) could flip a near-tie."""
    net, tok = model.load(str(tiny / "model"))
    prompts = [tok.encode(f"q{i % N_DIGITS}") for i in range(12)]
    keys = a3po.train_keys(a3po.Config(), 1, 1, range(12))
    whole = model.generate(net, prompts, 8, eos_ids=[], row_keys=keys)[0]
    chunks = model.generate(net, prompts[:5], 8, eos_ids=[], row_keys=keys[:5])[0] + \
        model.generate(net, prompts[5:], 8, eos_ids=[], row_keys=keys[5:])[0]
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = model.generate(net, [prompts[i] for i in order], 8, eos_ids=[], row_keys=keys[order])[0]
    alone = [model.generate(net, [prompts[i]], 8, eos_ids=[], row_keys=keys[i:i + 1])[0][0] for i in range(3)]
    assert chunks == whole and [shuffled[order.index(i)] for i in range(12)] == whole
    assert alone == whole[:3]
    assert len({tuple(w) for w in whole}) > 6  # rows of the same prompt still differ
    # stopping at EOS: finished rows leave the batch mid-way, which changes no other row
    ended = model.generate(net, prompts, 8, eos_ids=[1], row_keys=keys)[0]
    assert len({len(e) for e in ended}) > 2 and ended == [w[:len(e)] for w, e in zip(whole, ended)]
    assert model.generate(net, prompts[5:], 8, eos_ids=[1], row_keys=keys[5:])[0] == ended[5:]
    with pytest.raises(ValueError, match="row_keys"):
        model.generate(net, prompts, 2, row_keys=keys[:3])


def test_the_batch_must_divide_over_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="--prompts-per-step 16 does not divide over 3 processes"):
        runs.check_machine(a3po.parse_config([]))
    monkeypatch.setenv("WORLD_SIZE", "8")  # 128 rows / 8 = 16 per process, micro-batch 32
    with pytest.raises(ValueError, match="--micro-batch-size 32 does not divide the 16 responses of each of the 8"):
        runs.check_machine(a3po.parse_config([]))
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="--fsdp shards the model over processes"):
        runs.check_machine(a3po.parse_config(["--fsdp"]))


# ----------------------------------------------------------------------------- one update

def run_update_case(model_dir, case, fsdp=False, device="cpu"):
    """One ppo_update (2 epochs, 4-row micro-batches, SGD, gradient clipping) of the tiny batch,
    on this process's share of the rows -> (weights after it on the CPU, the epochs' numbers)."""
    name, overrides, checkpointing, with_ref = case
    cfg = a3po.apply_preset("a3po", dict(micro_batch_size=4, ppo_epochs=2, loss_agg_constant=5.0, grad_clip=1.0,
                                         dtype="float32", **overrides))
    net, tok = model.load(model_dir)
    batch = tiny_batch(net, tok)  # sampled on the CPU before any training: the same batch on every process
    batch = dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device)
                                          for f in dataclasses.fields(batch) if f.name != "rollouts"})
    net = net.to(device)
    net.gradient_checkpointing = checkpointing
    ref = model.load(model_dir, device=device)[0].requires_grad_(False) if with_ref else None
    if fsdp:
        net = processes.shard_model(net)
        ref = ref if ref is None else processes.shard_model(ref)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    old, ent, ref_logp = a3po.old_logprobs(net, ref, batch, cfg)
    epochs, _, _ = a3po.ppo_update(net, opt, batch, old, shaped(batch, old, ent, cfg), batch.mask, ref_logp, cfg)
    weights = [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone() for p in net.parameters()]
    return weights, epochs


def update_worker(out_path, model_dir, device):
    torch.set_num_threads(1)
    if device == "cuda":  # as processes.init_distributed: one GPU per process, NCCL for CUDA tensors
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo")
    results = {}
    for fsdp in (False, True):
        for case in UPDATE_CASES:
            results[("fsdp" if fsdp else "dp", case[0])] = run_update_case(model_dir, case, fsdp, device)
    if torch.distributed.get_rank() == 0:
        torch.save(results, out_path)
    torch.distributed.destroy_process_group()


def test_distributed_update_equals_single_process(tiny, tmp_path):
    """2 processes, data parallel and --fsdp: the same weights after the update as one process
    (within 1e-5), for every loss aggregation, with accumulation over 2 micro-batches per process,
    with gradient checkpointing and with the KL to a reference model; the same numbers logged."""
    check_update_against_one_process(tiny, tmp_path, "cpu", tol=1e-5)


def check_update_against_one_process(tiny, tmp_path, device, tol):
    out = tmp_path / "results.pt"
    worker = torchrun(os.path.abspath(__file__), "--update-worker", str(out), str(tiny / "model"), device)
    proc = subprocess.run(worker, capture_output=True, text=True, timeout=180, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = torch.load(out)
    for case in UPDATE_CASES:
        w1, e1 = run_update_case(str(tiny / "model"), case)  # one process, on the CPU
        start = model.load(str(tiny / "model"))[0].state_dict().values()
        moved = max(float((a - b).abs().max()) for a, b in zip(w1, start))
        assert moved > 1e-3, case[0]  # the update did something
        for mode in ("dp", "fsdp"):
            w2, e2 = results[(mode, case[0])]
            diff = max(float((a - b).abs().max()) for a, b in zip(w1, w2))
            assert diff < tol, (mode, case[0], diff)
            for a, b in zip(e1, e2):
                assert a.keys() == b.keys() and a["skipped"] == b["skipped"]
                assert all(a[k] == pytest.approx(b[k], rel=100 * tol, abs=tol) for k in a if k != "skipped"), \
                    (mode, case[0])


# ----------------------------------------------------------------------------- whole runs

def run_args(tiny, run_dir, *extra):
    # --alpha-decay-steps 4 and --eval-every 2: a 2-step run is the first half of the 4-step one
    return tiny_args(tiny, run_dir, "--alpha-decay-steps", "4", "--eval-every", "2", "--threads", "1", *extra)


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
    """The single-process reference: 4 steps straight."""
    run = tmp_path_factory.mktemp("straight") / "run"
    a3po.train(a3po.parse_config(run_args(tiny, run, "--steps", "4")))
    return run


def close(a: dict, b: dict):
    """Two metric lines equal up to float summation order (timings aside)."""
    a, b = deterministic(a), deterministic(b)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            close(a[k], b[k])
        elif isinstance(a[k], list):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
        elif isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (k, a[k], b[k])
        else:
            assert a[k] == b[k], (k, a[k], b[k])


def wait_for_train_line(proc, path, seconds=90):
    t0 = time.time()
    while not (path.exists() and any('"split": "train"' in line for line in path.read_text().splitlines())):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < seconds, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["dp", "fsdp"])
def test_stopped_torchrun_run_resumes_to_what_one_process_logs(tiny, straight, tmp_path, mode):
    """torchrun --nproc-per-node 2 a3po.py, stopped after a step or two, then --resume to 4
    steps, still on 2 processes, logs what one process logs in 4 straight steps (the same
    rollouts: lengths, rewards, samples), each line once, and saves the same weights as a plain
    HF folder. dp: Ctrl-C in a terminal (SIGINT to torchrun and both workers, one process group;
    torchrun forwards it once more). fsdp: SIGTERM to torchrun alone (a scheduler), forwarded.
    Both ranks stop after the same step, rank 0 saves, the job exits non-zero."""
    run = tmp_path / "run"
    extra = ["--fsdp"] if mode == "fsdp" else []
    proc = subprocess.Popen(torchrun("a3po.py", *run_args(tiny, run, "--steps", "200", *extra)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT,
                            start_new_session=True)
    wait_for_train_line(proc, run / "metrics.jsonl")
    sig = signal.SIGINT if mode == "dp" else signal.SIGTERM
    os.killpg(proc.pid, sig) if mode == "dp" else proc.send_signal(sig)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode != 0, (out, err[-3000:])
    assert f"{sig.name}: finishing this step" in out and "--resume" in out and "aborted" not in out
    assert out.count("eval    0 eval |") == 1 and "step    1/" in out  # rank 0 alone prints
    with open(run / "checkpoint" / "trainer_state.json") as f:
        stopped = json.load(f)["step"]
    assert 1 <= stopped <= 3 and [m["step"] for m in read_jsonl(run / "metrics.jsonl") if m["split"] == "train"] \
        == list(range(1, stopped + 1))
    assert not (run / "lock").exists()

    proc = subprocess.run(torchrun("a3po.py", "--resume", str(run), "--override", "--steps", "4"), capture_output=True, text=True,
                          timeout=120, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_jsonl(straight / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert [(m["step"], m["split"]) for m in two] == [(m["step"], m["split"]) for m in one]  # each line once
    for a, b in zip(one, two):
        close(a, b)
    assert read_jsonl(straight / "samples.jsonl") == read_jsonl(run / "samples.jsonl")
    wa = model.load(str(straight / "checkpoint"))[0].state_dict()
    wb = model.load(str(run / "checkpoint"))[0].state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    with open(run / "config.json") as f:
        assert json.load(f)["fsdp"] == (mode == "fsdp")
    assert not (run / "lock").exists()


def test_fsdp_evaluation_with_fewer_problems_than_processes(tiny, tmp_path):
    """--eval-size 1 on 2 processes: one process has no held-out problem, yet it takes part in
    gathering the sharded weights for sampling (a collective), so the run finishes."""
    run = tmp_path / "run"
    proc = subprocess.run(torchrun("a3po.py", *tiny_args(tiny, run, "--steps", "1", "--fsdp", "--eval-size", "1",
                                                         "--threads", "1")),
                          capture_output=True, text=True, timeout=120, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [m for m in read_jsonl(run / "metrics.jsonl") if m["split"] == "eval"]
    assert [m["step"] for m in evals] == [0, 1] and "pass@1: " in proc.stdout


# ----------------------------------------------------------------------------- faults

def test_a_crashing_rank_fails_the_job_within_a_minute(tiny, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        "import os, sys; sys.path.insert(0, sys.argv[1]); import a3po\n"
        "real, calls = a3po.ppo_update, []\n"
        "def update(*a, **k):  # rank 1 dies in step 2; rank 0 then waits for it at the gradient all-reduce\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2 and os.environ['RANK'] == '1': raise RuntimeError('rank 1 crashed')\n"
        "    return real(*a, **k)\n"
        "a3po.ppo_update = update\n"
        "a3po.main(sys.argv[2:])\n")
    t0 = time.time()
    proc = subprocess.run(torchrun(str(script), ROOT, *run_args(tiny, tmp_path / "run", "--steps", "50")),
                          capture_output=True, text=True, timeout=120, env=env(), cwd=ROOT)
    assert proc.returncode != 0 and "rank 1 crashed" in proc.stderr
    assert time.time() - t0 < 60


# ----------------------------------------------------------------------------- CUDA
# Skipped without a GPU. bench/gpu.sh runs them; `bench/gpu.sh --dry` (A3PO_TEST_DEVICE=cpu)
# runs the same code on the CPU so that they work the first time they meet a GPU.
DEVICE = os.environ.get("A3PO_TEST_DEVICE", "cuda")
GPUS = torch.cuda.device_count() if DEVICE == "cuda" else 2
needs_device = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def no_tf32():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@needs_device
def test_device_samples_what_the_cpu_samples(tiny, no_tf32):
    """generate(row_keys=...) in fp32 on the device: the CPU's tokens, but for a rare flip of a
    near-tie by the other matmul kernels (at most 1 row in 16 here)."""
    net, tok = model.load(str(tiny / "model"))
    prompts = [tok.encode(f"q{i % N_DIGITS}") for i in range(16)]
    keys = a3po.train_keys(a3po.Config(), 1, 1, range(16))
    cpu = model.generate(net, prompts, 8, eos_ids=[], row_keys=keys)[0]
    dev = model.generate(net.to(DEVICE), prompts, 8, eos_ids=[], row_keys=keys)[0]
    assert sum(a != b for a, b in zip(cpu, dev)) <= 1


@needs_device
def test_device_update_equals_the_cpu_update(tiny, no_tf32):
    for case in UPDATE_CASES:
        w1, e1 = run_update_case(str(tiny / "model"), case)
        w2, e2 = run_update_case(str(tiny / "model"), case, device=DEVICE)
        assert max(float((a - b).abs().max()) for a, b in zip(w1, w2)) < 1e-4, case[0]
        assert e1[-1]["grad_norm"] == pytest.approx(e2[-1]["grad_norm"], rel=1e-4)


@needs_device
@pytest.mark.skipif(GPUS < 2 or DEVICE != "cuda", reason="needs 2 GPUs (on the CPU: the gloo test above)")
def test_nccl_update_equals_single_process(tiny, tmp_path):
    """The data-parallel and FSDP update on 2 GPUs (NCCL) against one process on the CPU."""
    check_update_against_one_process(tiny, tmp_path, "cuda", tol=1e-4)


@needs_device
def test_device_run_trains(tiny, tmp_path):
    """2 steps of a3po.py on the device (bf16 autocast by default) and on 2 processes there
    (NCCL with 2 GPUs; gloo on the CPU in the dry mode): finite, and the checkpoint loads."""
    runs = [("one", [sys.executable, "a3po.py"])]
    if GPUS >= 2:
        runs.append(("two", torchrun("a3po.py")))
    for name, cmd in runs:
        run = tmp_path / name
        proc = subprocess.run([*cmd, *run_args(tiny, run, "--steps", "2", "--device", DEVICE)], capture_output=True,
                              text=True, timeout=180, env=env(), cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [m for m in read_jsonl(run / "metrics.jsonl") if m["split"] == "train"]
        assert len(lines) == 2 and all(m["grad_norm"] is not None for m in lines)
        model.load(str(run / "checkpoint"))


if __name__ == "__main__" and sys.argv[1:2] == ["--update-worker"]:
    update_worker(sys.argv[2], sys.argv[3], sys.argv[4])

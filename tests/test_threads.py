"""The default thread count (--threads 0 = auto, runs.choose_threads): on the CPU, 1 for a small
model or where torch's default is 2 threads or fewer, torch's own otherwise; an explicit --threads N
wins. The rule only, no timing."""
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

import a3po
import runs


def choose(**settings) -> int:
    return runs.choose_threads(dataclasses.replace(a3po.Config(), **settings))


@pytest.fixture
def cores(monkeypatch):
    """torch's default thread count as choose_threads sees it (the tests themselves run on 1)."""
    return lambda n: monkeypatch.setattr(torch, "get_num_threads", lambda: n)


def test_the_default_run_gets_one_thread_on_any_machine_and_an_explicit_count_wins(cores):
    for n in (1, 2, 16):
        cores(n)
        assert choose() == 1  # data/default_model: 836,736 parameters, on the CPU
        assert choose(threads=3) == 3
        assert choose(threads=2, device="cuda") == 2


def test_a_large_model_keeps_torchs_default_above_two_threads(cores, monkeypatch):
    monkeypatch.setattr(runs, "SMALL_MODEL", 800_000)  # the default model is now "large"
    cores(16)
    assert choose() == 0  # e.g. SmolLM2-135M on 16 cores: all of them
    assert choose(device="cpu") == 0
    cores(2)
    assert choose() == 1  # 2 cores: one thread, whatever the size
    cores(1)
    assert choose() == 1  # torchrun's OMP_NUM_THREADS=1 per process: the same


def test_cuda_runs_and_unreadable_weights_keep_torchs_default(cores, tmp_path):
    cores(16)
    assert choose(device="cuda") == 0  # (no GPU needed: the rule only reads the flag)
    assert choose(device="cuda:1") == 0
    cores(2)
    assert choose(device="cuda") == 0
    cores(16)
    assert choose(model=str(tmp_path / "missing")) == 0  # the load then names the problem


def test_the_count_comes_from_the_weight_files_not_the_optimizer_state(cores, tmp_path, monkeypatch):
    cores(16)
    save_file({"embed": torch.zeros(100, 10), "norm": torch.zeros(10)}, str(tmp_path / "model.safetensors"))
    save_file({"moments": torch.zeros(10_000)}, str(tmp_path / "optimizer.safetensors"))  # a checkpoint's
    monkeypatch.setattr(runs, "SMALL_MODEL", 1011)
    assert choose(model=str(tmp_path)) == 1  # 1,010 parameters
    monkeypatch.setattr(runs, "SMALL_MODEL", 1010)
    assert choose(model=str(tmp_path)) == 0

"""The default thread count (--threads 0 = auto, runs.choose_threads): 1 on a CPU where torch's
default is 2 threads or fewer, torch's own otherwise and on CUDA; an explicit --threads N wins.
The rule only, no timing."""
import dataclasses

import pytest
import torch

import a3po
import runs


def choose(**settings) -> int:
    return runs.choose_threads(dataclasses.replace(a3po.Config(), **settings))


@pytest.fixture
def cores(monkeypatch):
    """torch's default thread count as choose_threads sees it (the tests themselves run on 1)."""
    return lambda n: monkeypatch.setattr(torch, "get_num_threads", lambda: n)


def test_two_cores_or_fewer_take_one_thread(cores):
    for n in (1, 2):  # 1: e.g. torchrun's OMP_NUM_THREADS=1 per process
        cores(n)
        assert choose() == 1  # README's command
        assert choose(model="smollm2-hf", device="cpu") == 1  # whatever the model


def test_more_cores_and_cuda_keep_torchs_default(cores):
    cores(16)
    assert choose() == 0
    assert choose(model="smollm2-hf") == 0  # e.g. SmolLM2-135M on 16 cores: all of them
    cores(2)
    assert choose(device="cuda") == 0  # (no GPU needed: the rule only reads the flag)
    assert choose(device="cuda:1") == 0


def test_an_explicit_count_wins(cores):
    for n in (1, 2, 16):
        cores(n)
        assert choose(threads=3) == 3
        assert choose(threads=2, device="cuda") == 2

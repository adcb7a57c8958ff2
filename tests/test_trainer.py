"""The trainer section of a3po.py, end to end on a tiny random model (CPU, a few seconds each).

The task: the prompt is one token "q<d>", the right answer is "\\boxed{<d>}" (one token of a
word-level vocabulary), scored by the real verifier. A random model gets it right by chance
(~1 in 10 tokens is a right boxed answer), so groups have mixed rewards from the start.
"""
import copy
import dataclasses
import itertools
import json
import math
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
import verifier
from data import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_DIGITS = 4
TIMING = ("time_", "tokens_per_s")  # the only metrics allowed to differ between identical runs

# Method section 6, metric by metric (names as logged in metrics.jsonl).
METHOD6_KEYS = [
    "reward", "accuracy", "frac_pos", "frac_neg", "frac_zero", "boosted_pos", "boosted_neg",
    "alpha_pos", "alpha_neg", "entropy", "entropy_pos", "entropy_neg", "length", "length_pos",
    "length_neg", "clipfrac_low", "clipfrac_high", "approx_kl", "grad_norm", "lr",
    "gen_tokens_per_s", "train_tokens_per_s", "time_generate", "time_reward", "time_old_logp",
    "time_update", "time_step",
]


def make_tiny_model(path, context=64):
    import tokenizers
    from tokenizers import models, pre_tokenizers

    words = ["<pad>", "<eos>", "[UNK]"] + [f"\\boxed{{{d}}}" for d in range(N_DIGITS)] + ["a", "b"] \
        + [f"q{d}" for d in range(N_DIGITS)]
    tk = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.add_special_tokens(["<pad>", "<eos>"])
    tok = model.Tokenizer.from_tokenizers(tk, eos_ids=[1], pad_id=0)
    torch.manual_seed(0)
    net = model.Transformer(model.ModelConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context))
    model.save(net, tok, path)


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The models here are tiny: with 2 threads on cores shared with other test processes the
    # threads mostly wait for each other (30x slower seen). Results are the same either way.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tiny_task(root):
    """root/model (the tiny model), root/train.jsonl (40 problems), root/eval.jsonl (8). The
    `tiny` fixture of conftest.py makes one per test module."""
    make_tiny_model(str(root / "model"))
    write_jsonl(root / "train.jsonl", [{"q": f"q{i % N_DIGITS}", "a": str(i % N_DIGITS)} for i in range(40)])
    write_jsonl(root / "eval.jsonl", [{"q": f"q{i % N_DIGITS}", "a": str(i % N_DIGITS)} for i in range(8)])
    return root


def tiny_args(tiny, run_dir, *extra):
    return ["--model", str(tiny / "model"), "--data", str(tiny / "train.jsonl"),
            "--eval-data", str(tiny / "eval.jsonl"), "--prompt-key", "q", "--answer-key", "a",
            "--template", "plain", "--steps", "4", "--prompts-per-step", "4", "--group-size", "4",
            "--micro-batch-size", "8", "--max-new-tokens", "4", "--eval-size", "8", "--eval-k", "1", "2", "4",
            "--lr", "3e-3", "--warmup-steps", "1", "--run-dir", str(run_dir), *extra]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def deterministic(record):
    return {k: v for k, v in record.items() if not k.startswith(TIMING) and not k.endswith(TIMING)}


# ----------------------------------------------------------------------------- end to end

def test_run_writes_every_file(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = a3po.parse_config(tiny_args(tiny, run, "--steps", "3", "--eval-every", "2"))
    result = a3po.train(cfg)
    out = capsys.readouterr().out

    metrics = read_jsonl(run / "metrics.jsonl")
    train_lines = [m for m in metrics if m["split"] == "train"]
    eval_lines = [m for m in metrics if m["split"] == "eval"]
    assert [m["step"] for m in train_lines] == [1, 2, 3]
    assert [m["step"] for m in eval_lines] == [0, 2, 3]  # before, --eval-every 2, at the end
    for m in train_lines:
        missing = [k for k in METHOD6_KEYS if k not in m]
        assert not missing, f"method 6 metrics missing from metrics.jsonl: {missing}"
        # per-polarity means are null (strict JSON) when a batch has no sample of that polarity
        assert all(isinstance(m[k], (int, float)) or (m[k] is None and k.endswith(("_pos", "_neg")))
                   for k in METHOD6_KEYS)
        assert m["frac_pos"] + m["frac_neg"] + m["frac_zero"] == pytest.approx(1.0)
    for m in eval_lines:
        assert {"avg@4", "pass@1", "pass@2", "pass@4", "greedy_acc", "length"} <= set(m)
        assert m["pass@1"] == pytest.approx(m["avg@4"]) and m["pass@1"] <= m["pass@2"] <= m["pass@4"]
        assert m["pass@1"] <= m["lenient_acc"] and 0 <= m["truncated"] <= 1 and 0 <= m["boxed"] <= 1

    samples = read_jsonl(run / "samples.jsonl")
    train_samples = [x for x in samples if x["split"] == "train"]
    assert train_samples and {"step", "prompt", "gold", "completion", "reward", "advantage"} <= set(train_samples[0])
    assert [x["step"] for x in samples if x["split"] == "eval"] == [0] * 4 + [2] * 4 + [3] * 4  # --log-samples 4
    with open(run / "config.json") as f:
        assert json.load(f)["steps"] == 3

    net, tok = model.load(str(run / "checkpoint"))  # the checkpoint is a plain HF folder
    assert net.config.vocab_size == 3 + 2 * N_DIGITS + 2 and tok.eos_ids == [1]
    with open(run / "checkpoint" / "trainer_state.json") as f:
        assert json.load(f)["step"] == 3

    # console: a progress line per step, and a summary whose LAST line scripts can read
    assert out.count("step ") >= 3 and "eta" in out
    last = out.strip().splitlines()[-1]
    assert last == (f"pass@1: {100 * result['before']['eval']['pass@1']:.1f}% -> "
                    f"{100 * result['after']['eval']['pass@1']:.1f}%")


def test_the_tiny_task_is_learned(tiny, tmp_path):
    """RL works end to end: a dozen a3po steps raise held-out pass@1 (128 samples) clearly.
    (Seen here: seeds 0, 1, 2 went 16% -> 43%, 11% -> 40%, 16% -> 27%.)"""
    result = a3po.train(a3po.parse_config(tiny_args(tiny, tmp_path / "run", "--steps", "12", "--lr", "1e-2",
                                                    "--eval-k", "1", "16")))
    assert result["after"]["eval"]["pass@1"] >= result["before"]["eval"]["pass@1"] + 0.1, result


def test_resume_is_exact_and_ctrl_c_saves(tiny, tmp_path, monkeypatch):
    """4 steps straight == 2 steps, Ctrl-C (checkpoint), --resume, 2 more: same metrics and weights."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    a3po.train(a3po.parse_config(tiny_args(tiny, straight)))

    real_update, calls = a3po.ppo_update, []

    def update_then_ctrl_c(*args, **kwargs):  # a real SIGINT in the middle of step 2
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return real_update(*args, **kwargs)

    monkeypatch.setattr(a3po, "ppo_update", update_then_ctrl_c)
    handler_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    result = a3po.train(a3po.parse_config(tiny_args(tiny, interrupted)))
    assert result["stopped"] and len(calls) == 2
    with open(interrupted / "checkpoint" / "trainer_state.json") as f:
        assert json.load(f)["step"] == 2
    monkeypatch.setattr(a3po, "ppo_update", real_update)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored

    a3po.train(a3po.parse_config(["--resume", str(interrupted)]))
    a = [deterministic(m) for m in read_jsonl(straight / "metrics.jsonl")]
    b = [deterministic(m) for m in read_jsonl(interrupted / "metrics.jsonl")]
    assert [m["step"] for m in b if m["split"] == "train"] == [1, 2, 3, 4]
    assert a == b
    sa, sb = read_jsonl(straight / "samples.jsonl"), read_jsonl(interrupted / "samples.jsonl")
    assert sa == sb
    wa = model.load(str(straight / "checkpoint"))[0].state_dict()
    wb = model.load(str(interrupted / "checkpoint"))[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nonfinite_update_is_skipped_and_never_saved(tiny, tmp_path, monkeypatch):
    real_loss, calls = a3po.policy_loss, []

    def nan_once(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), stats) if len(calls) == 1 else (loss, stats)

    monkeypatch.setattr(a3po, "policy_loss", nan_once)
    run = tmp_path / "run"
    # one step, one micro-batch, one epoch: the only update is the NaN one
    a3po.train(a3po.parse_config(tiny_args(tiny, run, "--steps", "1", "--ppo-epochs", "1",
                                           "--micro-batch-size", "16", "--weight-decay", "0.1")))
    m = [m for m in read_jsonl(run / "metrics.jsonl") if m["split"] == "train"][0]
    assert m["nonfinite_skipped"] == 1 and m["grad_norm"] is None  # no update was taken
    before = model.load(str(tiny / "model"))[0].state_dict()
    after = model.load(str(run / "checkpoint"))[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # not even weight decay moved them
    with open(run / "checkpoint" / "trainer_state.json") as f:
        assert json.load(f)["nonfinite_skipped"] == 1

    # and a model that did get NaN weights somehow is refused by save_checkpoint
    net, tok = model.load(str(tiny / "model"))
    with torch.no_grad():
        next(net.parameters())[0, 0] = float("nan")
    opt = torch.optim.AdamW(net.parameters())
    with pytest.raises(RuntimeError, match="non-finite"):
        runs.save_checkpoint(str(tmp_path), net, tok, opt, {"step": 1})
    assert not (tmp_path / "checkpoint").exists()


# ----------------------------------------------------------------------------- pieces

def tiny_batch(net, tok, n_prompts=4, G=4, new_tokens=5, seed=0):
    """A batch of real rollouts of the tiny model, rewards alternating 1 / 0 within each group."""
    gen = torch.Generator().manual_seed(seed)
    rollouts = []
    for i in range(n_prompts):
        p = tok.encode(f"q{i % N_DIGITS}")
        responses, logprobs = model.generate(net, [p] * G, new_tokens, generator=gen)
        for j, (response, lp) in enumerate(zip(responses, logprobs)):
            rollouts.append(a3po.Rollout(p, response, "", tasks.Problem("q", "0"), float(j % 2), float(j % 2), False,
                                         lp))
    return a3po.collate(rollouts, tok.pad_id, torch.device("cpu"))


def shaped(batch, old, ent, cfg, G=4):
    adv = a3po.compute_advantages(batch.reward, G, cfg)
    return a3po.shape_advantages(adv, old, batch.mask, a3po.boost_factors(0, cfg), cfg, ent, torch.Generator())[0]


def test_micro_batch_accumulation_equals_full_batch(tiny):
    """Accumulating over 4 micro-batches gives the same update as one pass over the batch, for
    every aggregation (the normaliser is the whole batch's token / sequence count)."""
    net, tok = model.load(str(tiny / "model"))
    batch = tiny_batch(net, tok)
    for agg in next(f.metadata["choices"] for f in dataclasses.fields(a3po.Config) if f.name == "loss_agg"):
        results = []
        for mb in (16, 4):
            cfg = a3po.apply_preset("a3po", dict(micro_batch_size=mb, ppo_epochs=1, loss_agg=agg,
                                                 loss_agg_constant=5.0, grad_clip=0.0))
            net, _ = model.load(str(tiny / "model"))
            opt = torch.optim.SGD(net.parameters(), lr=1.0)
            old, ent, _ = a3po.old_logprobs(net, None, batch, cfg)
            epochs, _, _ = a3po.ppo_update(net, opt, batch, old, shaped(batch, old, ent, cfg), batch.mask, None, cfg)
            results.append((epochs[0], [p.detach().clone() for p in net.parameters()]))
        (s16, w16), (s4, w4) = results
        assert s16["grad_norm"] == pytest.approx(s4["grad_norm"], rel=1e-5), agg
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(w16, w4)), agg
        assert s16["approx_kl"] == 0 and s16["ratio_mean"] == 1 and s16["ratio_max"] == 1  # pi_theta == pi_old


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_a_groups_shared_prompt_runs_once_with_the_full_forwards_numbers(model_type):
    """model.response_states, which every log-prob of the trainer comes from: a prompt shared by
    consecutive rows (groups of 3, 1 and 2, of different prompt and response lengths) runs once,
    and the states, and the gradients through them, are the plain causal forward's (float64)."""
    torch.manual_seed(0)
    net = model.Transformer(model.ModelConfig(model_type=model_type, attention_bias=model_type == "qwen2")).double()
    gen = torch.Generator().manual_seed(1)
    rows, plens = [], []
    for P, G in ((5, 3), (7, 1), (4, 2)):
        prompt = torch.randint(1, 500, (P,), generator=gen).tolist()
        for _ in range(G):
            rows.append(prompt + torch.randint(1, 500, (int(torch.randint(1, 9, (), generator=gen)),), generator=gen).tolist())
            plens.append(P)
    L = max(map(len, rows))
    ids = torch.tensor([r + [0] * (L - len(r)) for r in rows])                        # [6, L] right-padded
    prompt_len = torch.tensor(plens)
    lens = torch.tensor([len(r) - p for r, p in zip(rows, plens)])
    T = int(lens.max())
    real = torch.arange(T)[None] < lens[:, None]                                        # [6, T]

    def reference():  # the plain forward, row by row: the state at position prompt_len - 1 + t
        h = net.hidden_states(ids)
        return torch.stack([h[i, (plens[i] - 1 + torch.arange(T)).clamp(max=L - 1)] for i in range(len(rows))])

    seen = []
    hook = net.model.embed_tokens.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    shared = net.response_states(ids, prompt_len, T)
    hook.remove()
    assert seen == [(3, 7), (6, T - 1)]  # the 3 prompts once (padded to 7), then each row's response
    ref = reference()
    assert float((shared - ref).detach()[real].abs().max()) < 1e-12
    weights = torch.randn(shared.shape, dtype=torch.float64, generator=gen)
    g_shared = torch.autograd.grad((shared * weights)[real].sum(), list(net.parameters()))
    g_ref = torch.autograd.grad((reference() * weights)[real].sum(), list(net.parameters()))
    for a, b in zip(g_shared, g_ref):  # (RMSNorm runs in float32, as transformers does)
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max()) + 1e-12
    one = net.response_states(ids, prompt_len, 1)  # only the first response token: no second pass
    assert torch.allclose(one.detach(), ref.detach()[:, :1], atol=1e-12)


def test_pi_old_from_the_update_equals_a_separate_pass(tiny, tmp_path, monkeypatch):
    """One epoch, no reference model: the update whose own forward is pi_old takes the same step
    as a separate pi_old pass before it (weights, every logged number, the entropies), and the
    sampler's log-probs choose the same tokens for A3PO's boost as pi_old's."""
    cfg = a3po.apply_preset("a3po", dict(micro_batch_size=8, ppo_epochs=1, grad_clip=1.0))
    assert a3po.pi_old_from_update(cfg)
    for other in (dict(ppo_epochs=2), dict(kl_coef=0.1), dict(token_criterion="entropy")):
        assert not a3po.pi_old_from_update(dataclasses.replace(cfg, **other))
    net, tok = model.load(str(tiny / "model"))
    batch = tiny_batch(net, tok, n_prompts=8)
    old, ent, _ = a3po.old_logprobs(net, None, batch, cfg)
    m = batch.mask
    assert (batch.sample_logp[m] - old[m]).abs().max() < 1e-5  # the sampler's numbers are pi_old's
    token_adv = shaped(batch, old, ent, cfg)
    assert torch.equal(shaped(batch, batch.sample_logp, ent, cfg), token_adv)  # the same tokens boosted
    results = []
    for separate in (True, False):
        net, _ = model.load(str(tiny / "model"))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        epochs, _, entropy = a3po.ppo_update(net, opt, batch, old if separate else None, token_adv, m, None, cfg)
        results.append((epochs, [p.detach().clone() for p in net.parameters()], entropy))
    (e1, w1, none), (e2, w2, ent2) = results
    assert none is None and torch.allclose(ent2[m], ent[m], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(w1, w2))
    assert e1[0].keys() == e2[0].keys()
    assert all(e1[0][k] == pytest.approx(e2[0][k], rel=1e-5, abs=1e-7) for k in e1[0])
    assert e2[0]["ratio_max"] == 1 and e2[0]["approx_kl"] == 0

    # whole runs: the same metrics as with the separate pass, which never runs (counted, not timed:
    # a loaded machine can stall any line for milliseconds)
    runs, passes = {}, {}
    separate_pass = a3po.old_logprobs
    for separate in (True, False):
        monkeypatch.setattr(a3po, "pi_old_from_update", lambda cfg, s=separate: not s and cfg.ppo_epochs == 1)
        calls = []
        monkeypatch.setattr(a3po, "old_logprobs", lambda *a, calls=calls: calls.append(1) or separate_pass(*a))
        run = tmp_path / f"separate{separate}"
        a3po.train(a3po.parse_config(tiny_args(tiny, run, "--steps", "2", "--ppo-epochs", "1")))
        runs[separate], passes[separate] = [m for m in read_jsonl(run / "metrics.jsonl") if m["split"] == "train"], len(calls)
    assert passes == {True: 2, False: 0}  # one a step, or none
    for a, b in zip(runs[True], runs[False]):
        a, b = deterministic(a), deterministic(b)
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


def test_fused_adamw_takes_the_same_steps(tiny):
    """The trainer's AdamW is fused where torch offers it (one kernel for every parameter): the
    same weights after a few steps as the per-tensor loop, and the same state to checkpoint."""
    cfg = a3po.apply_preset("a3po", dict(lr=1e-2, weight_decay=0.1))
    nets = [model.load(str(tiny / "model"))[0] for _ in range(2)]
    fused = runs.make_optimizer(nets[0], cfg)
    loop = torch.optim.AdamW(nets[1].parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] and not runs.make_optimizer(nets[0], dataclasses.replace(cfg, fsdp=True)).defaults["fused"]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in nets[0].parameters()]
        for net, opt in zip(nets, (fused, loop)):
            for p, gr in zip(net.parameters(), grads):
                p.grad = gr.clone()
            opt.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    sa, sb = fused.state_dict()["state"], loop.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(sa[i].keys() == sb[i].keys() for i in sa)


def test_update_statistics_are_the_last_epochs_exact_numbers(tiny):
    """ratio_max is the batch's maximum ratio and the clip fractions / KL are those of the last
    epoch, checked against the ratios recomputed in float64 under the weights after epoch 1
    (one epoch of the same update, run again from the same start)."""
    net, tok = model.load(str(tiny / "model"))
    batch = tiny_batch(net, tok, n_prompts=8)
    cfg = a3po.apply_preset("a3po", dict(micro_batch_size=8, ppo_epochs=2, grad_clip=0.0, clip_c=3.0))
    old, ent, _ = a3po.old_logprobs(net, None, batch, cfg)
    token_adv = shaped(batch, old, ent, cfg)

    def update(epochs):
        net, _ = model.load(str(tiny / "model"))
        opt = torch.optim.SGD(net.parameters(), lr=30.0)  # a big step: ratios far from 1, clipping on both sides
        stats, _, _ = a3po.ppo_update(net, opt, batch, old, token_adv, batch.mask, None, dataclasses.replace(cfg, ppo_epochs=epochs))
        return net, stats

    after_one, _ = update(1)
    _, stats = update(2)
    with torch.no_grad():
        lp1, _ = a3po.response_logprobs(after_one, batch, slice(0, len(batch.rollouts)), cfg)
    m = batch.mask
    r = torch.exp(lp1.double() - old.double())[m]                    # the second epoch's ratios [N]
    a = token_adv.double()[m]
    last = a3po.update_metrics(stats)
    assert last["ratio_max"] == pytest.approx(float(r.max()), rel=1e-5) and last["ratio_max"] > 1.5
    assert last["ratio_mean"] == pytest.approx(float(r.mean()), rel=1e-5)
    assert last["clipfrac_high"] == pytest.approx(float(((a > 0) & (r > 1.28)).double().mean()), abs=1e-6)
    assert last["clipfrac_low"] == pytest.approx(float(((a < 0) & (r < 0.8)).double().mean()), abs=1e-6)
    assert last["clipfrac_dual"] == pytest.approx(float(((a < 0) & (r > 3.0)).double().mean()), abs=1e-6)
    assert last["approx_kl"] == pytest.approx(float((r - 1 - r.log()).mean()), rel=1e-4)
    assert last["clipfrac_high"] + last["clipfrac_low"] > 0.05
    assert last["per_epoch"]["ratio_max"][0] == 1 and last["per_epoch"]["clipfrac_high"][0] == 0  # epoch 1: r == 1
    assert last["nonfinite_skipped"] == 0 and len(last["per_epoch"]["loss"]) == 2


def test_metrics_of_kept_and_drawn_rollouts(tiny, tmp_path, monkeypatch):
    """accuracy / reward / length are of the kept batch, *_drawn of every rollout sampled in the
    step; ds_mixed_groups counts groups that really hold a right and a wrong answer, with or
    without dynamic sampling, and dynamic sampling keeps groups mixed by CORRECTNESS (with the
    overlong penalty on, all-wrong groups of different lengths have unequal rewards)."""
    rounds, kept = [], []
    real_rollouts, real_collate = a3po.rollout_groups, a3po.collate
    monkeypatch.setattr(a3po, "rollout_groups", lambda *a, **k: rounds.append(real_rollouts(*a, **k)) or rounds[-1])
    monkeypatch.setattr(a3po, "collate", lambda rollouts, *a: kept.append(rollouts) or real_collate(rollouts, *a))
    mean = lambda xs: sum(xs) / len(xs)
    for ds in ("--dynamic-sampling", "--no-dynamic-sampling"):
        rounds.clear(), kept.clear()
        run = tmp_path / ds
        a3po.train(a3po.parse_config(tiny_args(tiny, run, "--steps", "3", ds, "--max-sample-tries", "3",
                                               "--overlong-penalty", "--overlong-cache", "3", "--prompts-per-step", "4")))
        lines = [m for m in read_jsonl(run / "metrics.jsonl") if m["split"] == "train"]
        for m, batch in zip(lines, kept):
            drawn = [r for out in rounds[:m["ds_tries"]] for r in out[0]]
            del rounds[:m["ds_tries"]]
            groups = [batch[g:g + 4] for g in range(0, 16, 4)]
            is_mixed = [len({r.correct for r in g}) == 2 for g in groups]
            assert m["rollouts_drawn"] == len(drawn) == 16 * m["ds_tries"]
            assert m["accuracy_drawn"] == pytest.approx(mean([r.correct for r in drawn]))
            assert m["reward_drawn"] == pytest.approx(mean([r.reward for r in drawn]), abs=1e-6)
            assert m["length_drawn"] == pytest.approx(mean([len(r.response) for r in drawn]))
            assert m["accuracy"] == pytest.approx(mean([r.correct for r in batch]))
            assert m["length"] == pytest.approx(mean([len(r.response) for r in batch]))
            assert m["ds_mixed_groups"] == sum(is_mixed)
            if ds == "--dynamic-sampling":  # mixed groups first; all-equal ones only once the tries run out
                drawn_mixed = sum(len({r.correct for r in drawn[g:g + 4]}) == 2 for g in range(0, len(drawn), 4))
                assert sum(is_mixed) == min(4, drawn_mixed) and is_mixed == sorted(is_mixed, reverse=True)
            else:
                assert m["ds_tries"] == 1 and batch == drawn
        assert not rounds
        alphas = [m["alpha_pos"] for m in lines]  # s counts RL steps 0 .. S-1: 2, then down to 1 + 1/S
        assert alphas == pytest.approx([2.0, 1 + 2 / 3, 1 + 1 / 3])


def test_pass_at_k_matches_brute_force():
    """The unbiased estimator equals the share of all k-subsets of the n samples holding a correct one."""
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert a3po.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert a3po.pass_at_k(8, 2, 1) == pytest.approx(0.25)  # pass@1 = c / n


def test_learning_rate_schedule():
    cfg = a3po.apply_preset("a3po", dict(lr=1.0, warmup_steps=2, steps=10, lr_schedule="cosine"))
    assert [a3po.learning_rate(s, cfg) for s in (1, 2, 3)] == pytest.approx([0.5, 1.0, 1.0])
    assert a3po.learning_rate(10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert a3po.learning_rate(7, dataclasses.replace(cfg, lr_schedule="constant")) == 1.0


def test_data_order_is_a_function_of_seed_and_position():
    first = a3po.take_problems(0, 25, 10, seed=3)
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert a3po.take_problems(7, 5, 10, seed=3) == first[7:12]
    assert a3po.take_problems(0, 10, 10, seed=4) != first[:10]


# ----------------------------------------------------------------------------- command line

def test_presets_and_flag_overrides():
    cfg = a3po.parse_config([])  # the default run
    assert cfg.algo == "a3po" and cfg.token_shaping and cfg.dynamic_sampling
    assert cfg.data == "synthetic" and cfg.model == "data/default_model"
    for algo, overrides in a3po.PRESETS.items():
        cfg = a3po.parse_config(["--algo", algo])
        assert all(getattr(cfg, k) == v for k, v in overrides.items()), algo
    # a flag beats the preset, wherever it stands on the command line
    for argv in (["--algo", "grpo", "--eps-high", "0.3"], ["--eps-high", "0.3", "--algo", "grpo"]):
        cfg = a3po.parse_config(argv)
        assert cfg.eps_high == 0.3 and cfg.loss_agg == "seq-mean-token-mean" and cfg.eps_low == 0.2
    cfg = a3po.parse_config(["--algo", "dapo", "--no-dynamic-sampling", "--clip-c", "3", "--eval-k", "1", "16"])
    assert not cfg.dynamic_sampling and cfg.clip_c == 3.0 and cfg.eval_k == (1, 16)
    assert a3po.parse_config(["--clip-c", "3", "--clip-c", "none"]).clip_c is None
    # --data search picks the search task's model and token budget, unless they are given
    cfg = a3po.parse_config(["--data", "search"])
    assert (cfg.model, cfg.max_new_tokens) == ("data/search_model", 96)
    cfg = a3po.parse_config(["--max-new-tokens", "50", "--data", "search", "--model", "m"])
    assert (cfg.model, cfg.max_new_tokens) == ("m", 50)
    with pytest.raises(a3po.UserError, match="--loss-agg: invalid choice: 'token-max'"):
        a3po.parse_config(["--loss-agg", "token-max"])
    with pytest.raises(a3po.UserError, match="unknown flag --no-such-flag"):
        a3po.parse_config(["--no-such-flag"])


def test_help_names_a_section_for_every_flag():
    """--help: every flag tagged with its docs/method.md section (or [trainer]), defaults printed
    plainly; it also runs under `python -m cProfile` (no source parsing)."""
    for cmd in ([sys.executable, "a3po.py", "--help"], [sys.executable, "-m", "cProfile", "a3po.py", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for action in a3po.build_parser()._actions[1:]:
        assert action.help.startswith(("[method ", "[trainer]")), action.option_strings
    assert "(default: 1 8)" in text and "(default: None)" not in text and "default: default" not in text
    assert "{auto,gsm8k,math,olympiad,generic}" in text
    assert "--algo grpo: 0.2" in text  # a preset's own value is shown next to the default
    assert "docs/method.md" in text and "weighs as under token-mean" in text  # a help text is not cut short
    assert os.path.exists(os.path.join(ROOT, "docs", "method.md"))
    assert a3po.parse_config(["--micro-batch-size", "8"]).micro_batch_size == 8
    assert a3po.parse_config(["--raw-adv", "psr", "--raw-adv", "none"]).raw_adv is None


def test_bad_input_fails_before_compute(tiny, tmp_path, monkeypatch):
    def fails(match, *extra):
        with pytest.raises((ValueError, FileNotFoundError, FileExistsError), match=match):
            a3po.train(a3po.parse_config(tiny_args(tiny, tmp_path / "run", *extra)))

    # no generation may start for any of these
    monkeypatch.setattr(a3po.model, "generate", lambda *a, **k: pytest.fail("generate ran before the error"))
    fails("no Hugging Face model folder", "--model", str(tmp_path / "nope"))
    fails("nope.jsonl: no such file", "--data", str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"q": "q1", "a": "1"}, "{not json", {"q": "q2", "a": "2"}])
    fails(r"bad.jsonl:2:", "--eval-data", str(bad))
    write_jsonl(bad, [{"q": "q1", "a": "1"}, {"q": "q2"}])
    fails(r"bad.jsonl:2: missing key 'a'", "--eval-data", str(bad))
    fails("does not divide the batch", "--micro-batch-size", "5")
    fails("--overlong-cache 4: must be in", "--overlong-cache", "4")  # as long as --max-new-tokens 4
    fails("exceeds the model.s context of 64", "--max-new-tokens", "64")
    fails("at least 2 responses", "--group-size", "1")
    fails("--threads -1 must be >= 0", "--threads", "-1")
    fails("--eval-temperature -1.0: must be in", "--eval-temperature", "-1")
    fails("--eval-top-p 0.0 must be in", "--eval-top-p", "0")
    fails("--eval-max-new-tokens must be >= 1", "--eval-max-new-tokens", "0")
    fails("--eval-size must be >= 1", "--eval-size", "0")
    fails("--eval-data: a file given twice", "--eval-data", str(tiny / "eval.jsonl"), str(tiny / "eval.jsonl"))
    fails("--eval-data .*nope.jsonl: no such file", "--eval-data", str(tiny / "eval.jsonl"), str(tmp_path / "nope.jsonl"))
    fails("--resume .*: no (config.json|checkpoint) there", "--resume", str(tmp_path))
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint" / "trainer_state.json").write_text("{}")
    fails("already holds a run", "--steps", "1")


def test_eval_only(tiny, tmp_path, capsys):
    """--eval-only on two held-out files: a header per set, one line each, results.json and
    every sample in the run folder; a folder that is not empty is refused."""
    (tmp_path / "eval2.jsonl").write_text((tiny / "eval.jsonl").read_text())
    args = tiny_args(tiny, tmp_path / "ev", "--eval-only", "--eval-temperature", "0.7", "--eval-max-new-tokens", "3")
    args[args.index("--eval-data") + 1:args.index("--eval-data") + 2] = [str(tiny / "eval.jsonl"), str(tmp_path / "eval2.jsonl")]
    evs = a3po.main(args)
    assert list(evs) == ["eval", "eval2"] and set(evs["eval"]) >= {"pass@1", "pass@4", "greedy_acc", "avg@4"}
    assert evs["eval"] == evs["eval2"]  # the same problems and per-row keys: the same samples
    out = capsys.readouterr().out.strip().splitlines()
    assert "held-out eval: 8 of 8 problems, 4 samples at temperature 0.7, up to 3 tokens" in out
    assert out[-1] == f"pass@1: {100 * evs['eval']['pass@1']:.1f}% (mean of 2 held-out sets)"
    with open(tmp_path / "ev" / "results.json") as f:
        results = json.load(f)
    assert results["benchmarks"]["eval2"]["problems"] == 8 and results["benchmarks"]["eval2"]["of"] == 8
    assert results["temperature"] == 0.7 and results["max_new_tokens"] == 3
    samples = read_jsonl(tmp_path / "ev" / "samples.jsonl")
    assert len(samples) == 2 * 8 * 4 and all(len(s["completion"]) >= 0 and s["length"] <= 3 for s in samples)
    with pytest.raises(SystemExit) as e:
        a3po.main(args)
    assert e.value.code == 2 and "is not empty" in capsys.readouterr().err


def test_eval_counts_recomputed_sample_by_sample(tiny):
    """evaluate's strict / lenient / boxed / truncated shares and the samples it hands back equal
    the very samples (same per-row keys) drawn again here one problem at a time, unbatched."""
    cfg = a3po.parse_config(tiny_args(tiny, "unused", "--eval-only"))
    policy, tok, (held_out,) = runs.load_for_eval(cfg)
    problems, ids = held_out.problems, held_out.ids
    sampled = []
    ev = a3po.evaluate(policy, tok, cfg, problems, ids, sampled)
    n, strict, lenient, boxed, cut, redrawn = 4, 0, 0, 0, 0, []
    for i, p in enumerate(problems):
        keys = a3po.eval_keys(cfg, range(i, i + 1), n)
        rows = model.generate(policy, [ids[i]] * n, cfg.max_new_tokens, cfg.temperature, eos_ids=tok.eos_ids,
                              row_keys=keys)[0]
        texts = [tok.decode(r) for r in rows]
        strict += sum(verifier.score(t, p.answer) for t in texts)
        lenient += sum(verifier.score(t, p.answer, fallback=True) for t in texts)
        boxed += sum("\\boxed" in t for t in texts)
        cut += sum(len(r) == cfg.max_new_tokens and r[-1] != 1 for r in rows)
        redrawn += [dict(problem=i, sample=k, completion=texts[k], length=len(rows[k]),
                         reward=verifier.score(texts[k], p.answer),
                         truncated=len(rows[k]) == cfg.max_new_tokens and rows[k][-1] != 1) for k in range(n)]
    total = n * len(problems)
    assert sampled == redrawn and 0 < cut < total
    assert ev["pass@1"] == pytest.approx(strict / total) and ev["lenient_acc"] == pytest.approx(lenient / total)
    assert ev["boxed"] == pytest.approx(boxed / total) and ev["truncated"] == pytest.approx(cut / total)


@pytest.mark.parametrize("extra", [
    *[["--algo", algo] for algo in a3po.PRESETS],
    # the optional machinery, all at once: KL to a frozen reference, gradient checkpointing,
    # DAPO overlong penalty + filter, dual clip, Dr. GRPO aggregation, entropy criterion,
    # cosine schedule, chunked generation, CPU bf16 autocast
    ["--kl-coef", "0.05", "--grad-checkpointing", "--overlong-penalty", "--overlong-cache", "2",
     "--overlong-filter", "--clip-c", "3", "--loss-agg", "token-sum-norm", "--token-criterion", "entropy",
     "--lr-schedule", "cosine", "--gen-batch-size", "5", "--dtype", "bfloat16", "--ppo-epochs", "3"],
], ids=[*a3po.PRESETS, "options"])
def test_every_preset_and_option_runs(tiny, tmp_path, extra):
    result = a3po.train(a3po.parse_config(tiny_args(tiny, tmp_path / "run", "--steps", "2", *extra)))
    lines = [m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if m["split"] == "train"]
    assert len(lines) == 2 and all(math.isfinite(m["grad_norm"]) for m in lines)
    assert result["after"] is not None
    if "--kl-coef" in extra:
        assert all("kl_ref" in m for m in lines)
        with open(tmp_path / "run" / "config.json") as f:
            assert json.load(f)["loss_agg_constant"] == 4.0  # token-sum-norm defaults to --max-new-tokens


def test_a_step_with_nothing_to_learn_skips_the_passes_not_the_optimizer(tiny, tmp_path, monkeypatch):
    """Every answer wrong: no pi_old pass and no update pass run, the step line says so, and the
    weights and the AdamW state after the step equal the full path's on the same exactly-zero
    gradient (Adam's moments, built by a first real step, decay the same)."""
    run = runs.prepare(a3po.resolve_defaults(a3po.parse_config(tiny_args(tiny, tmp_path / "run", "--steps", "3"))))
    args = lambda: (run.policy, run.ref_policy, run.optimizer, run.tok, run.cfg, run.train_set, run.train_ids)
    a3po.train_step(1, *args(), run.state)  # a real step: the moments are no longer 0
    start = (copy.deepcopy(run.policy.state_dict()), copy.deepcopy(run.optimizer.state_dict()), dict(run.state),
             run.policy.optimizer_steps)
    monkeypatch.setattr(a3po, "reward", lambda text, problem, fallback=False: 0.0)

    def after_step(force_full_path: bool):
        run.policy.load_state_dict(start[0])
        run.optimizer.load_state_dict(copy.deepcopy(start[1]))
        run.policy.optimizer_steps = start[3]
        with monkeypatch.context() as m:
            if force_full_path:
                m.setattr(a3po, "has_learning_signal", lambda *a: True)
            else:
                for name in ("old_logprobs", "ppo_update", "response_logprobs"):
                    m.setattr(a3po, name, lambda *a, **k: pytest.fail("a pass ran on a step with nothing to learn"))
            metrics, _ = a3po.train_step(2, *args(), dict(start[2]))
        opt = run.optimizer.state_dict()["state"]
        return metrics, copy.deepcopy(run.policy.state_dict()), copy.deepcopy(opt), run.policy.optimizer_steps

    skipped, full = after_step(False), after_step(True)
    assert skipped[0]["nothing_to_learn"] and not full[0]["nothing_to_learn"] and full[0]["grad_norm"] == 0
    assert "nothing to learn" in runs.progress_line(skipped[0], run.cfg, 0.0)
    assert skipped[3] == full[3] == start[3] + run.cfg.ppo_epochs
    assert all(torch.equal(skipped[1][k], full[1][k]) for k in full[1])
    assert any(not torch.equal(full[1][k], start[0][k]) for k in full[1])  # the decaying moments still move them
    assert all(torch.equal(skipped[2][i][k], full[2][i][k]) for i in full[2] for k in full[2][i])
    runs.release(run)


def test_ctrl_c_during_an_evaluation_stops_after_it(tiny, tmp_path, monkeypatch):
    """A Ctrl-C during the evaluation before training stops when it ends, before any step, with
    a checkpoint at step 0; --resume trains every step without evaluating the start again."""
    run, real_eval, calls = tmp_path / "run", a3po.evaluate_all, []

    def eval_with_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(a3po, "evaluate_all", eval_with_ctrl_c)
    result = a3po.train(a3po.parse_config(tiny_args(tiny, run, "--steps", "2")))
    assert result["stopped"] == signal.SIGINT and result["after"] is None
    assert [(m["split"], m["step"]) for m in read_jsonl(run / "metrics.jsonl")] == [("eval", 0)]
    with open(run / "checkpoint" / "trainer_state.json") as f:
        assert json.load(f)["step"] == 0
    a3po.train(a3po.parse_config(["--resume", str(run)]))
    assert [(m["split"], m["step"]) for m in read_jsonl(run / "metrics.jsonl")] == \
        [("eval", 0), ("train", 1), ("train", 2), ("eval", 2)]


def test_eta_counts_evaluations_and_long_blocks_show_progress(capsys):
    assert runs.eta(dict(step=[2.0, 4.0], eval=[10.0]), steps_left=3, evals_left=2) == 3 * 3.0 + 2 * 10.0
    assert runs.eta(dict(step=[2.0], eval=[]), steps_left=1, evals_left=1) == 2.0
    with runs.ticker("step 7/9", every=0.05):
        time.sleep(0.3)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 2 and all(line.startswith("  ... step 7/9: ") and "so far" in line for line in lines)
    with runs.ticker("quick", every=5.0):
        pass
    assert capsys.readouterr().out == ""


def test_run_folder_keeps_the_console_the_code_version_and_readable_checkpoints(tiny, tmp_path, capsys):
    """console.log holds what the run printed (appended on resume); config.json says when each
    start began, with which commit and torch; checkpoint files are 0644 under umask 022."""
    run, umask = tmp_path / "run", os.umask(0o022)
    try:
        a3po.train(a3po.parse_config(tiny_args(tiny, run, "--steps", "1")))
        a3po.train(a3po.parse_config(["--resume", str(run), "--override", "--steps", "2"]))
    finally:
        os.umask(umask)
    printed = capsys.readouterr().out
    log = (run / "console.log").read_text()
    assert "step    1/1" in log and "step    2/2" in log and log.strip().splitlines()[-1].startswith("pass@1: ")
    assert log.strip() in printed
    with open(run / "config.json") as f:
        started = json.load(f)["started"]
    assert [s["at_step"] for s in started] == [0, 1] and all(s["torch"] == torch.__version__ for s in started)
    head = subprocess.run(["git", "-C", a3po.__file__.rsplit("/", 1)[0], "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    assert started[0]["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert a3po.parse_config(["--resume", str(run)]).steps == 2  # config.json still reads back as the settings
    for path in (run / "checkpoint").rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_training_evaluates_every_held_out_file_whole_under_its_name(tiny, tmp_path, capsys):
    """Two --eval-data files during training: each evaluated whole (no --eval-size), logged under
    its name at every evaluation, and in the before/after table."""
    lines = (tiny / "eval.jsonl").read_text().splitlines()
    (tmp_path / "math500_test.jsonl").write_text("\n".join(lines[:3]) + "\n")
    args = tiny_args(tiny, tmp_path / "run", "--steps", "2")
    i = args.index("--eval-size")
    del args[i:i + 2]
    args[args.index("--eval-data") + 1:args.index("--eval-data") + 2] = [str(tiny / "eval.jsonl"),
                                                                       str(tmp_path / "math500_test.jsonl")]
    result = a3po.main(args)
    evals = [(m["step"], m["benchmark"]) for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if m["split"] == "eval"]
    assert evals == [(0, "eval"), (0, "math500"), (2, "eval"), (2, "math500")]
    assert list(result["before"]) == list(result["after"]) == ["eval", "math500"]
    out = capsys.readouterr().out
    assert "held-out eval: 8 of 8 problems" in out and "held-out math500: 3 of 3 problems" in out
    assert "  math500" in out and out.strip().splitlines()[-1].endswith("(mean of 2 held-out sets)")

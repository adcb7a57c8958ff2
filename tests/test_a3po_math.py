"""Tests of the MATH section of a3po.py (docs/method.md sections 1-4, 7).

Every formula is checked two ways: against small hand-worked examples whose numbers are
written here, and against a slow float64 re-computation written plainly (Python loops) in
this file, on random inputs.
"""
import dataclasses
import math
from fractions import Fraction

import pytest
import torch

import a3po

LOSS_AGGS = next(f.metadata["choices"] for f in dataclasses.fields(a3po.Config) if f.name == "loss_agg")


# ============================================================ slow float64 references

def ref_group_adv(rewards, G, norm, eps=1e-6):
    out = []
    for g in range(0, len(rewards), G):
        grp = [float(x) for x in rewards[g:g + G]]
        mean = sum(grp) / G
        if max(grp) == min(grp):
            out += [0.0] * G
            continue
        if norm == "none":
            out += [x - mean for x in grp]
        else:  # sample std: divide by G - 1
            std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))
            out += [(x - mean) / (std + eps) for x in grp]
    return out


def ref_alpha(alpha0, s, S, kind):
    if kind == "constant":
        return alpha0
    x = min(s / S, 1.0)
    f = 1 - x if kind == "linear" else 0.5 * (1 + math.cos(math.pi * x))
    return 1 + (alpha0 - 1) * f


def ref_select(values, cand, rho, tail, g):
    """Python lists [B][T]. Returns the set of (b, t) selected. Ties at the boundary are broken
    by a random shuffle of the candidates (in row-major order) drawn from the generator g,
    exactly as a3po.select_tail draws it: rank by (value, place in the shuffle)."""
    T = len(values[0])
    items = [(values[b][t], b, t) for b in range(len(values)) for t in range(T) if cand[b][t]]
    k = math.ceil(Fraction(str(rho)) * len(items))  # exact decimal rho, no float noise
    if k == 0:
        return set()
    place = [0] * len(items)
    for rank, i in enumerate(torch.randperm(len(items), generator=g).tolist()):
        place[i] = rank
    sign = 1 if tail == "low" else -1
    order = sorted(range(len(items)), key=lambda i: (sign * items[i][0], place[i]))
    return {items[i][1:] for i in order[:k]}


def ref_shape(adv, old_logp, mask, step, S, cfg, entropy=None, seed=0):
    B, T = len(adv), len(old_logp[0])
    w = [cfg.w_pos * a if a > 0 else (cfg.w_neg * a if a < 0 else 0.0) for a in adv]
    out = [[w[b] if mask[b][t] else 0.0 for t in range(T)] for b in range(B)]
    if not cfg.token_shaping:
        return out, set(), set()
    vals = old_logp if cfg.token_criterion == "prob" else entropy
    # uncertain tokens: low probability, or high entropy; confident ones the other end
    ends = {("prob", "uncertain"): "low", ("prob", "confident"): "high",
            ("entropy", "uncertain"): "high", ("entropy", "confident"): "low"}
    pos_end, neg_end = ends[cfg.token_criterion, cfg.pos_tail], ends[cfg.token_criterion, cfg.neg_tail]
    g = torch.Generator().manual_seed(seed)
    pos = ref_select(vals, [[mask[b][t] and adv[b] > 0 for t in range(T)] for b in range(B)], cfg.rho_pos, pos_end, g)
    neg = ref_select(vals, [[mask[b][t] and adv[b] < 0 for t in range(T)] for b in range(B)], cfg.rho_neg, neg_end, g)
    Sd = cfg.alpha_decay_steps or S
    ap, an = ref_alpha(cfg.alpha0_pos, step, Sd, cfg.alpha_schedule), ref_alpha(cfg.alpha0_neg, step, Sd, cfg.alpha_schedule)
    for b, t in pos:
        out[b][t] *= ap
    for b, t in neg:
        out[b][t] *= an
    return out, pos, neg


def ref_policy_loss(logp, old_logp, adv, mask, cfg, ref_logp=None, num_tokens=None, num_seqs=None):
    """Token-by-token loop in float64 torch scalars (so autograd gives reference gradients)."""
    B, T = logp.shape
    lens = [sum(int(mask[i, t]) for t in range(T)) for i in range(B)]
    n_tok = sum(lens) if num_tokens is None else num_tokens
    n_seq = sum(1 for L in lens if L > 0) if num_seqs is None else num_seqs

    def per_token(i, t):
        r = torch.exp(logp[i, t] - old_logp[i, t])
        a = float(adv[i, t])
        lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
        rc = torch.clamp(r, lo, hi)
        val = -torch.minimum(r * a, rc * a)
        if cfg.clip_c is not None and a < 0:
            val = torch.minimum(val, torch.tensor(-cfg.clip_c * a, dtype=val.dtype))
        if ref_logp is not None and cfg.kl_coef != 0:
            d = ref_logp[i, t] - logp[i, t]
            val = val + cfg.kl_coef * (torch.exp(d) - d - 1)
        return val

    total = torch.zeros((), dtype=torch.float64)
    for i in range(B):
        seq = torch.zeros((), dtype=torch.float64)
        for t in range(T):
            if mask[i, t]:
                seq = seq + per_token(i, t)
        if cfg.loss_agg == "token-mean":
            total = total + seq / n_tok
        elif cfg.loss_agg == "seq-mean-token-mean":
            total = total + (seq / lens[i] if lens[i] else seq) / n_seq
        elif cfg.loss_agg == "seq-mean-token-sum":
            total = total + seq / n_seq
        else:
            total = total + seq / (n_seq * cfg.loss_agg_constant)
    return total


def naive_logprobs64(h, W, t):
    logq = torch.log_softmax(h.double() @ W.double().T, dim=-1)
    return logq.gather(1, t[:, None]).squeeze(1), -(logq.exp() * logq).sum(-1)


# ============================================================ config and presets

# method section 5 table, written out again here
TABLE = {
    "grpo": ("std", 1.0, 1.0, False, 0.2, 0.2, "seq-mean-token-mean", False),
    "dapo": ("std", 1.0, 1.0, False, 0.2, 0.28, "token-mean", True),
    "psr": ("raw", 1.0, 0.0, False, 0.2, 0.28, "token-mean", False),
    "nsr": ("raw", 0.0, 1.0, False, 0.2, 0.28, "token-mean", False),
    "w-reinforce": ("raw", 1.0, 1.0, False, 0.2, 0.28, "token-mean", False),  # lambda=0.1 lives in the raw map
    "a3po": ("std", 1.0, 1.0, True, 0.2, 0.28, "token-mean", True),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_presets_match_the_method_table(name):
    c = a3po.apply_preset(name)
    got = (c.adv_norm, c.w_pos, c.w_neg, c.token_shaping, c.eps_low, c.eps_high, c.loss_agg, c.dynamic_sampling)
    assert got == TABLE[name]
    assert c.algo == name
    assert {"psr": "psr", "nsr": "nsr", "w-reinforce": "w-reinforce"}.get(name, c.raw_adv) == c.raw_adv
    assert c.wreinforce_lambda == 0.1


def test_default_config_is_a3po_with_the_method_defaults():
    c = a3po.Config()
    assert c == a3po.apply_preset("a3po")
    assert (c.rho_pos, c.rho_neg, c.alpha0_pos, c.alpha0_neg) == (0.2, 0.2, 2.0, 2.0)
    assert (c.alpha_schedule, c.alpha_decay_steps, c.pos_tail, c.neg_tail) == ("linear", None, "uncertain", "confident")
    assert (c.clip_c, c.kl_coef, c.token_criterion) == (None, 0.0, "prob")


def test_preset_override_semantics():
    c = a3po.apply_preset("dapo", {"eps_high": 0.3, "rho_pos": 0.5})
    assert (c.eps_high, c.rho_pos, c.eps_low, c.loss_agg) == (0.3, 0.5, 0.2, "token-mean")
    # a flag given explicitly wins even when it equals a value the preset would change
    assert a3po.apply_preset("grpo", {"loss_agg": "token-mean"}).loss_agg == "token-mean"
    # a Config base: its .algo picks the preset, fields the preset does not set are kept
    base = dataclasses.replace(a3po.Config(), algo="grpo", rho_neg=0.7, token_shaping=True)
    c = a3po.apply_preset(base, {})
    assert (c.rho_neg, c.token_shaping, c.eps_high) == (0.7, False, 0.2)
    # the masked-polarity variant of PSR: same preset, group-normalised advantages
    c = a3po.apply_preset("psr", {"adv_norm": "std"})
    assert (c.adv_norm, c.w_pos, c.w_neg) == ("std", 1.0, 0.0)
    assert a3po.apply_preset("a3po", {"algo": "nsr"}).algo == "nsr"


@pytest.mark.parametrize("bad", [
    ("nope", {}), ("a3po", {"rho_pos": 1.5}), ("a3po", {"no_such_flag": 1}), ("a3po", {"loss_agg": "mean"}),
    ("a3po", {"clip_c": 0.5}), ("a3po", {"alpha_schedule": "exp"}), ("a3po", {"pos_tail": "middle"}),
    ("a3po", {"eps_low": 1.0}), ("a3po", {"alpha_decay_steps": 0})])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ValueError):
        a3po.apply_preset(*bad)


# ============================================================ advantages (method 1, 2)

def cfg_adv(norm):
    return dataclasses.replace(a3po.Config(), adv_norm=norm)


def test_group_advantages_hand_worked():
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    # group 1: mean .25, sample std sqrt((.75^2 + 3 * .25^2) / 3) = 0.5
    # group 2: mean .5, sample std sqrt(4 * .25 / 3) = 0.57735
    want_std = [0.75 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001,
                0.5 / (0.5773503 + 1e-6), 0.5 / (0.5773503 + 1e-6), -0.5 / (0.5773503 + 1e-6), -0.5 / (0.5773503 + 1e-6)]
    assert torch.allclose(a3po.compute_advantages(r, 4, cfg_adv("std")), torch.tensor(want_std), atol=1e-6)
    assert torch.allclose(a3po.compute_advantages(r, 4, cfg_adv("none")), torch.tensor([.75, -.25, -.25, -.25, .5, .5, -.5, -.5]))
    # group of 2 with one right answer: +-0.5 / sqrt(0.5) = +-0.70711
    assert torch.allclose(a3po.compute_advantages(torch.tensor([1.0, 0.0]), 2, cfg_adv("std")),
                          torch.tensor([0.70711, -0.70711]), atol=1e-5)


def test_group_advantages_all_equal_and_group_of_one_are_exactly_zero():
    r = torch.tensor([0.7, 0.7, 0.7, 1, 1, 1, 0, 0, 0, 0.1, 0.1, 0.1])  # 0.7*3/3 != 0.7 in float
    for norm in ("std", "none"):
        assert torch.equal(a3po.compute_advantages(r, 3, cfg_adv(norm)), torch.zeros(12))
        assert torch.equal(a3po.compute_advantages(torch.tensor([1.0, 0, 0.5]), 1, cfg_adv(norm)), torch.zeros(3))
    assert not torch.isnan(a3po.compute_advantages(torch.tensor([1.0, 0]), 1, cfg_adv("std"))).any()


@pytest.mark.parametrize("G", [1, 2, 3, 8])
@pytest.mark.parametrize("norm", ["std", "none"])
def test_group_advantages_random_vs_loops(G, norm):
    g = torch.Generator().manual_seed(G)
    r = torch.randint(0, 2, (8 * G,), generator=g).float() * torch.rand(8 * G, generator=g).round(decimals=1)
    want = torch.tensor(ref_group_adv(r.tolist(), G, norm), dtype=torch.float32)
    assert torch.allclose(a3po.compute_advantages(r, G, cfg_adv(norm)), want, atol=1e-6)


def test_group_advantages_bad_input():
    with pytest.raises(AssertionError):
        a3po.compute_advantages(torch.zeros(6), 4, a3po.Config())
    with pytest.raises(ValueError, match="NaN"):
        a3po.compute_advantages(torch.tensor([1.0, float("nan")]), 2, a3po.Config())
    with pytest.raises(ValueError, match="adv-norm"):
        cfg_adv("mean")


def test_raw_advantages_and_group_is_mixed():
    r = torch.tensor([1.0, 0, 1, 0])
    assert a3po.reward_to_raw_advantage(r, r, "psr").tolist() == [1, 0, 1, 0]
    assert a3po.reward_to_raw_advantage(r, r, "nsr").tolist() == [0, -1, 0, -1]
    assert torch.allclose(a3po.reward_to_raw_advantage(r, r, "w-reinforce", 0.1), torch.tensor([0.1, -1, 0.1, -1]))
    for name, want in (("psr", [1, 0, 1, 0]), ("nsr", [0, -1, 0, -1])):
        assert a3po.compute_advantages(r, 2, a3po.apply_preset(name)).tolist() == want
    assert torch.allclose(a3po.compute_advantages(r, 2, a3po.apply_preset("w-reinforce")),
                          torch.tensor([0.1, -1, 0.1, -1]))
    assert torch.allclose(a3po.compute_advantages(r, 2, a3po.apply_preset("grpo")), torch.tensor([.7071, -.7071] * 2), atol=1e-4)
    assert a3po.group_is_mixed(torch.tensor([1.0, 1, 0, 1, 0, 0]), 2).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="raw-adv"):
        a3po.apply_preset("a3po", {"adv_norm": "raw"})


def test_dynamic_sampling_filters_on_correctness_not_on_the_shaped_reward():
    """An all-wrong group whose lengths differ has unequal shaped rewards (the overlong penalty),
    but nothing right to learn from: it is not mixed. A right-and-wrong group is."""
    correct = torch.tensor([0.0, 0, 0, 0, 1, 0, 0, 0])
    lengths = torch.tensor([50, 60, 64, 40, 30, 30, 30, 30])
    reward = correct + a3po.overlong_reward_penalty(lengths, 64, 16)
    assert a3po.group_is_mixed(correct, 4).tolist() == [False, True]
    # what filtering on the reward would have kept: std-normalisation makes the 0.06-size length
    # penalties of the all-wrong group full-size advantages
    assert bool(reward[:4].max() != reward[:4].min())
    assert a3po.compute_advantages(reward, 4, a3po.Config())[:4].abs().max() > 0.8
    # given the correctness, the advantage judges the group as dynamic sampling does: nothing to learn
    assert a3po.compute_advantages(reward, 4, a3po.Config(), correct)[:4].tolist() == [0, 0, 0, 0]


def ref_penalised_adv(rewards, correct, G, cfg):
    """float64 loops: the advantage of shaped rewards, with correctness deciding the polarity."""
    out = []
    for g in range(0, len(rewards), G):
        r, c = [float(x) for x in rewards[g:g + G]], [float(x) for x in correct[g:g + G]]
        if cfg.adv_norm == "raw":
            lam = cfg.wreinforce_lambda
            a = [{"psr": x, "nsr": x - 1, "w-reinforce": lam * x if ci > 0 else x - 1}[cfg.raw_adv] for x, ci in zip(r, c)]
        elif max(c) == min(c):
            a = [0.0] * G
        else:
            a = ref_group_adv(r, G, cfg.adv_norm, cfg.adv_eps)
        out += [max(x, 0.0) if ci > 0 else min(x, 0.0) for x, ci in zip(a, c)]
    return out


def test_overlong_penalty_shapes_sizes_but_correctness_decides_polarity():
    # an all-wrong group of different lengths: no advantage (the length-shaped rewards alone
    # would make the shortest wrong answer a full-size positive sample: [-0.5, -0.5, -0.5, 1.5])
    rewards, correct = torch.tensor([-1.0, -1, -1, 0]), torch.zeros(4)
    assert a3po.compute_advantages(rewards, 4, a3po.Config()).tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5], abs=1e-5)
    assert a3po.compute_advantages(rewards, 4, a3po.Config(), correct).tolist() == [0, 0, 0, 0]
    # W-REINFORCE: a right answer at the length limit (reward 1 - 1 = 0) is not punished as wrong (-1)
    wr = a3po.apply_preset("w-reinforce")
    assert a3po.compute_advantages(torch.tensor([0.0, 0.0]), 2, wr, torch.tensor([1.0, 0.0])).tolist() == [0, -1]
    # a mixed group: a long right answer is pushed up less than a short one, never down; a short
    # wrong answer beside two truncated ones is above the group mean, yet never pushed up
    rewards, correct = torch.tensor([1.0, 0.1, -1.0, -1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    assert a3po.compute_advantages(rewards, 5, a3po.Config())[4] > 0
    adv = a3po.compute_advantages(rewards, 5, a3po.Config(), correct)
    assert adv[0] > adv[1] > 0 and adv[2] == adv[3] < 0 and adv[4] == 0
    # random batches against float64 loops, every preset's advantage
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        G = [2, 4, 8][trial % 3]
        correct = (torch.rand(6 * G, generator=g) < 0.5).float()
        penalty = -(torch.rand(6 * G, generator=g) < 0.4).float() * torch.rand(6 * G, generator=g).round(decimals=1)
        cfg = a3po.apply_preset(["a3po", "grpo", "psr", "nsr", "w-reinforce", "a3po"][trial % 6],
                                dict(adv_norm="none") if trial % 6 == 5 else None)
        got = a3po.compute_advantages(correct + penalty, G, cfg, correct)
        want = ref_penalised_adv((correct + penalty).tolist(), correct.tolist(), G, cfg)
        assert torch.allclose(got, torch.tensor(want, dtype=torch.float32), atol=1e-5), (trial, got, want)
        assert ((got >= 0) | (correct == 0)).all() and ((got <= 0) | (correct == 1)).all()


def test_overlong_penalty():
    # limit 10, cache 4: free up to 6 tokens, then -1/4 per token, -1 at the limit
    got = a3po.overlong_reward_penalty(torch.tensor([3, 6, 7, 9, 10, 12]), 10, 4)
    assert torch.allclose(got, torch.tensor([0, 0, -0.25, -0.75, -1, -1]))
    assert a3po.overlong_reward_penalty(torch.tensor([5, 10, 11]), 10, 0, 0.5).tolist() == [0, 0, -0.5]
    with pytest.raises(ValueError, match="--overlong-cache 10"):  # a cache as long as the limit: a plain length penalty
        a3po.apply_preset("a3po", dict(max_new_tokens=10, overlong_cache=10))
    with pytest.raises(AssertionError):  # the math function only asserts what Config has checked
        a3po.overlong_reward_penalty(torch.tensor([5]), 10, 10)


def test_polarity_weights():
    got = a3po.polarity_weights(torch.tensor([1.5, -0.5, 0.0]), 0.5, 2.0)
    assert got.tolist() == [0.75, -1.0, 0.0]


# ============================================================ token shaping (method 3)

@pytest.mark.parametrize("kind,want", [
    ("linear", [2.0, 1.75, 1.5, 1.0, 1.0]),
    ("cosine", [2.0, 1 + 0.5 * (1 + math.cos(math.pi / 4)), 1.5, 1.0, 1.0]),  # 1.853553 at S/4
    ("constant", [2.0, 2.0, 2.0, 2.0, 2.0])])
def test_alpha_schedule_steps_0_quarter_half_end_beyond(kind, want):
    got = [a3po.alpha_schedule(2.0, s, 100, kind) for s in (0, 25, 50, 100, 250)]
    assert got == pytest.approx(want, abs=1e-12)
    assert a3po.alpha_schedule(0.5, 50, 100, kind) == pytest.approx(ref_alpha(0.5, 50, 100, kind))  # alpha0 < 1 damps


def test_boost_count_is_ceil_without_float_noise():
    assert [a3po.boost_count(0.2, n) for n in (0, 1, 4, 5, 6, 10, 15)] == [0, 1, 1, 1, 2, 2, 3]
    assert a3po.boost_count(0.0, 7) == 0 and a3po.boost_count(1.0, 7) == 7
    for rho in (0.1, 0.2, 0.3, 0.7):
        for n in range(60):
            assert a3po.boost_count(rho, n) == math.ceil(Fraction(str(rho)) * n)


def shape(adv, old_logp, mask, step, S, cfg, entropy=None, seed=0):
    """shape_advantages at RL step `step` of S, its tie-break shuffle drawn from a generator seeded `seed`."""
    alphas = a3po.boost_factors(step, dataclasses.replace(cfg, steps=S))
    return a3po.shape_advantages(adv, old_logp, mask, alphas, cfg, entropy, torch.Generator().manual_seed(seed))


def test_boost_factors_once_per_step():
    cfg = dataclasses.replace(a3po.Config(), steps=40)
    assert a3po.boost_factors(0, cfg) == (2.0, 2.0)  # the first RL step: the full boost
    assert a3po.boost_factors(39, cfg) == pytest.approx((1.025, 1.025))  # the last: 1 + (2 - 1) / 40
    assert a3po.boost_factors(5, a3po.apply_preset("dapo")) == (1.0, 1.0)  # no shaping: nothing boosted, alpha 1
    c = dataclasses.replace(cfg, alpha0_neg=3.0, alpha_decay_steps=10, alpha_schedule="cosine")
    assert a3po.boost_factors(5, c) == pytest.approx((1.5, 2.0))


def _hand_batch():
    # 3 responses, T = 4. Row 0 positive (3 real tokens + padding whose logp is the lowest
    # of all: it must never be picked), row 1 negative, row 2 zero advantage.
    adv = torch.tensor([1.0, -1.0, 0.0])
    old_logp = torch.tensor([[-0.1, -2.0, -0.5, -50.0],
                             [-0.2, -3.0, -0.05, -1.0],
                             [-9.0, -0.01, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    return adv, old_logp, mask


def test_shape_advantages_hand_worked():
    adv, old_logp, mask = _hand_batch()
    cfg = a3po.Config()  # rho 0.2: ceil(0.2*3)=1 positive token, ceil(0.2*4)=1 negative token
    tok, bp, bn = shape(adv, old_logp, mask, 0, 10, cfg)
    assert tok.tolist() == [[1, 2, 1, 0], [-1, -1, -2, -1], [0, 0, 0, 0]]  # alpha(0) = 2
    assert bp.nonzero().tolist() == [[0, 1]] and bn.nonzero().tolist() == [[1, 2]]
    tok, _, _ = shape(adv, old_logp, mask, 5, 10, cfg)
    assert tok.tolist() == [[1, 1.5, 1, 0], [-1, -1, -1.5, -1], [0, 0, 0, 0]]
    tok, bp2, _ = shape(adv, old_logp, mask, 10, 10, cfg)
    assert tok.tolist() == [[1, 1, 1, 0], [-1, -1, -1, -1], [0, 0, 0, 0]] and torch.equal(bp2, bp)
    # the opposite tails: highest-p positive token, lowest-p negative token
    c = dataclasses.replace(cfg, pos_tail="confident", neg_tail="uncertain", rho_pos=0.5, rho_neg=0.5)
    _, bp, bn = shape(adv, old_logp, mask, 0, 10, c)
    assert bp.nonzero().tolist() == [[0, 0], [0, 2]] and bn.nonzero().tolist() == [[1, 1], [1, 3]]
    # polarity weights apply before the boost; alpha_decay_steps overrides total_steps
    c = dataclasses.replace(cfg, w_pos=0.5, w_neg=2.0, alpha_decay_steps=20)
    tok, _, _ = shape(adv, old_logp, mask, 10, 10, c)
    assert tok.tolist() == [[0.5, 0.75, 0.5, 0], [-2, -2, -3, -2], [0, 0, 0, 0]]
    # token shaping off: the sample advantage on every real token
    tok, bp, bn = shape(adv, old_logp, mask, 0, 10, a3po.apply_preset("dapo"))
    assert tok.tolist() == [[1, 1, 1, 0], [-1, -1, -1, -1], [0, 0, 0, 0]] and not bp.any() and not bn.any()


def test_shape_advantages_tiny_groups_and_entropy():
    # a single one-token positive answer still gets its token boosted; an empty polarity none
    tok, bp, bn = shape(torch.tensor([1.0]), torch.tensor([[-0.3]]), torch.ones(1, 1, dtype=torch.bool), 0, 10, a3po.Config())
    assert tok.tolist() == [[2.0]] and bp.all() and not bn.any()
    # entropy criterion alone keeps A3PO's intent: the most uncertain (highest-entropy) token of
    # the positive answer, the most confident (lowest-entropy) one of the negative answer
    adv, old_logp, mask = _hand_batch()
    ent = torch.tensor([[0.1, 0.2, 9.0, 0.0], [1.0, 0.5, 2.0, 0.1], [0, 0, 0, 0]])
    c = dataclasses.replace(a3po.Config(), token_criterion="entropy")
    _, bp, bn = shape(adv, old_logp, mask, 0, 10, c, entropy=ent)
    assert bp.nonzero().tolist() == [[0, 2]] and bn.nonzero().tolist() == [[1, 3]]
    # and the opposite ends when asked for
    _, bp, bn = shape(adv, old_logp, mask, 0, 10, dataclasses.replace(c, pos_tail="confident", neg_tail="uncertain"),
                      entropy=ent)
    assert bp.nonzero().tolist() == [[0, 0]] and bn.nonzero().tolist() == [[1, 2]]
    with pytest.raises(AssertionError, match="entropy"):
        shape(adv, old_logp, mask, 0, 10, c)
    with pytest.raises(ValueError, match="NaN"):
        shape(adv, old_logp.masked_fill(~mask, 0.0).index_put_((torch.tensor(0), torch.tensor(0)), torch.tensor(float("nan"))), mask, 0, 10, a3po.Config())


def test_ties_at_the_quota_boundary_do_not_depend_on_row_order():
    """6 positive tokens tie (log p == 0.0, pi_old = 1) for the last 2 of 5 slots: each is boosted
    a third of the time whatever its row, also with the rows in another order. Under a tie-break
    by position the first row's two would win every time."""
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0])
    lp = torch.tensor([[0.0, 0.0, -2.0], [0.0, -3.0, 0.0], [0.0, 0.0, -1.0], [-0.1, -0.2, -0.3]])
    mask = torch.ones(4, 3, dtype=torch.bool)
    c = dataclasses.replace(a3po.Config(), rho_pos=5 / 9)  # ceil(5/9 * 9) = 5 lowest: 3 sure, 2 of the 6 ties
    counts = torch.zeros(4, 3)
    for seed in range(400):
        _, bp, _ = shape(adv, lp, mask, 0, 10, c, seed=seed)
        assert int(bp.sum()) == 5 and bp[0, 2] and bp[1, 1] and bp[2, 2]  # the three below the tie always
        counts += bp.float()
    tied = lp == 0.0
    assert (counts[tied] - 400 / 3).abs().max() < 40, counts  # binomial sd ~9.4
    # the same batch with its rows in another order: the same tie frequencies per token
    perm = torch.tensor([2, 0, 3, 1])
    counts_p = torch.zeros(4, 3)
    for seed in range(400):
        counts_p += shape(adv[perm], lp[perm], mask[perm], 0, 10, c, seed=seed)[1].float()
    assert (counts_p[tied[perm]] - 400 / 3).abs().max() < 40, counts_p
    # no ties: the selection is the same set of tokens under any row order
    lp2 = -torch.arange(12.0).reshape(4, 3) / 10
    for cfg in (a3po.Config(), dataclasses.replace(a3po.Config(), rho_pos=0.5, rho_neg=0.7)):
        _, bp, bn = shape(adv, lp2, mask, 0, 10, cfg, seed=1)
        _, bpp, bnp = shape(adv[perm], lp2[perm], mask[perm], 0, 10, cfg, seed=2)
        assert torch.equal(bp[perm], bpp) and torch.equal(bn[perm], bnp)


@pytest.mark.parametrize("seed", range(6))
def test_shape_advantages_random_vs_loops(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 8, 7
    adv = torch.randn(B, generator=g).round(decimals=1) * (torch.rand(B, generator=g) > 0.2)
    old_logp = -torch.rand(B, T, generator=g).mul(3).round(decimals=1)  # coarse: many ties
    lens = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lens[:, None]
    ent = torch.rand(B, T, generator=g).round(decimals=1)
    cfg = dataclasses.replace(
        a3po.Config(), rho_pos=[0.2, 0.35, 1.0, 0.0, 0.1, 0.5][seed], rho_neg=[0.2, 0.15, 0.6, 0.3, 1.0, 0.0][seed],
        alpha0_pos=1.5 + seed, alpha0_neg=3.0 - 0.4 * seed, alpha_schedule=["linear", "cosine", "constant"][seed % 3],
        token_criterion=["prob", "entropy"][seed % 2], pos_tail=["uncertain", "confident"][seed // 3],
        neg_tail=["confident", "uncertain"][seed % 2],
        w_pos=[1.0, 0.5][seed % 2], w_neg=[1.0, 2.0][seed // 3])
    step, S = [0, 3, 5, 10, 15, 7][seed], 10
    tok, bp, bn = shape(adv, old_logp, mask, step, S, cfg, entropy=ent, seed=seed)
    want, wpos, wneg = ref_shape(adv.tolist(), old_logp.tolist(), mask.tolist(), step, S, cfg, ent.tolist(), seed=seed)
    assert torch.allclose(tok, torch.tensor(want, dtype=torch.float32), atol=1e-6)
    assert {tuple(x) for x in bp.nonzero().tolist()} == wpos
    assert {tuple(x) for x in bn.nonzero().tolist()} == wneg
    assert not (bp & ~mask).any() and not (bn & ~mask).any()


# ============================================================ objective (method 4)

def _loss_case(ratios, advs, cfg):
    """One response per (ratio, advantage) pair, one token each."""
    old = torch.zeros(len(ratios), 1)
    logp = torch.log(torch.tensor(ratios, dtype=torch.float32))[:, None]
    adv = torch.tensor(advs, dtype=torch.float32)[:, None]
    return a3po.policy_loss(logp, old, adv, torch.ones_like(adv, dtype=torch.bool),
                            dataclasses.replace(cfg, loss_agg="seq-mean-token-sum"), num_seqs=1)


def test_clipping_hand_worked_both_signs_and_dual_clip():
    cfg = a3po.Config()  # eps 0.2 / 0.28
    # A=+1: r=.5 -> -min(.5,.8)=-.5 ; r=1 -> -1 ; r=1.5 -> -min(1.5,1.28)=-1.28 (high clip active)
    # A=-1: r=.5 -> -min(-.5,-.8)=.8 (low clip active) ; r=1 -> 1 ; r=1.5 -> -min(-1.5,-1.28)=1.5 ; r=4 -> 4
    want = [-0.5, -1.0, -1.28, 0.8, 1.0, 1.5, 4.0]
    ratios, advs = [0.5, 1, 1.5, 0.5, 1, 1.5, 4], [1, 1, 1, -1, -1, -1, -1]
    for r, a, w in zip(ratios, advs, want):
        loss, _ = _loss_case([r], [a], cfg)
        assert loss.item() == pytest.approx(w, abs=1e-6)
    loss, st = _loss_case(ratios, advs, cfg)
    assert st["clipfrac_high"] == pytest.approx(1 / 7) and st["clipfrac_low"] == pytest.approx(1 / 7)
    assert st["clipfrac_dual"] == 0
    # dual clip c=3: the A<0, r=4 token is bounded at -c*A = 3; nothing else changes
    dual = dataclasses.replace(cfg, clip_c=3.0)
    assert _loss_case([4], [-1], dual)[0].item() == pytest.approx(3.0)
    assert _loss_case([4], [1], dual)[0].item() == pytest.approx(-1.28)
    assert _loss_case([1.5], [-1], dual)[0].item() == pytest.approx(1.5)
    assert _loss_case(ratios, advs, dual)[1]["clipfrac_dual"] == pytest.approx(1 / 7)


def test_aggregation_modes_hand_worked():
    # per-token losses (ratio 1 so l = -A):  row 0: [1, 2, 3] ; row 1: [4, pad, pad] ; row 2: all padding
    adv = -torch.tensor([[1.0, 2, 3], [4, 0, 0], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    z = torch.zeros(3, 3)
    want = {"token-mean": 10 / 4, "seq-mean-token-mean": (6 / 3 + 4 / 1) / 2, "seq-mean-token-sum": 10 / 2,
            "token-sum-norm": 10 / (2 * 5)}
    for mode, w in want.items():
        cfg = dataclasses.replace(a3po.Config(), loss_agg=mode, loss_agg_constant=5)
        assert a3po.policy_loss(z, z, adv, mask, cfg)[0].item() == pytest.approx(w)
    with pytest.raises(AssertionError, match="loss_agg_constant"):
        a3po.policy_loss(z, z, adv, mask, dataclasses.replace(a3po.Config(), loss_agg="token-sum-norm"))


def test_kl_k3_hand_worked():
    # ref - logp = 0.5: exp(.5) - .5 - 1 = 0.1487213 ; A = 0 so only the KL term remains
    cfg = dataclasses.replace(a3po.Config(), kl_coef=0.1)
    logp = torch.tensor([[-1.0]])
    loss, st = a3po.policy_loss(logp, logp, torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), cfg, ref_logp=logp + 0.5)
    assert loss.item() == pytest.approx(0.1 * 0.1487213, abs=1e-7) and st["kl_ref"] == pytest.approx(0.1487213, abs=1e-6)
    with pytest.raises(AssertionError, match="ref_logp"):
        a3po.policy_loss(logp, logp, torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), cfg)
    # approx KL(pi_old || pi_theta) is k3 of the ratio: r - 1 - log r, here r = e^0.3
    _, st = a3po.policy_loss(logp + 0.3, logp, torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), a3po.Config())
    assert st["approx_kl"] == pytest.approx(math.exp(0.3) - 1 - 0.3, abs=1e-6)


def _random_loss_inputs(seed, B=5, T=6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    noise = torch.randn(B, T, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    # row 0 always has one token of each clip case: dual (r=4.5, A<0), high (r=1.6, A>0), low (r=0.6, A<0)
    noise[0, :3] = torch.tensor([1.5, 0.5, -0.5], dtype=torch.float64)
    adv[0, :3] = torch.tensor([-0.7, 0.9, -1.2], dtype=torch.float64)
    logp = (old + noise).requires_grad_()
    ref = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    lens = torch.tensor([6, 1, 0, 4, 3])[:B]
    mask = torch.arange(T)[None, :] < lens[:, None]
    return logp, old, adv, ref, mask


@pytest.mark.parametrize("mode", LOSS_AGGS)
@pytest.mark.parametrize("clip_c,kl", [(None, 0.0), (3.0, 0.05)])
def test_policy_loss_random_vs_loops(mode, clip_c, kl):
    logp, old, adv, ref, mask = _random_loss_inputs(LOSS_AGGS.index(mode) + (10 if clip_c else 0))
    cfg = dataclasses.replace(a3po.Config(), loss_agg=mode, loss_agg_constant=8, clip_c=clip_c, kl_coef=kl, eps_low=0.1, eps_high=0.15)
    loss, st = a3po.policy_loss(logp, old, adv, mask, cfg, ref_logp=ref)
    (grad,) = torch.autograd.grad(loss, logp)
    want = ref_policy_loss(logp, old, adv, mask, cfg, ref_logp=ref)
    (want_grad,) = torch.autograd.grad(want, logp)
    assert loss.item() == pytest.approx(want.item(), abs=1e-12)
    assert torch.allclose(grad, want_grad, atol=1e-12)
    assert (grad[~mask] == 0).all()
    assert st["clipfrac_low"] > 0 and st["clipfrac_high"] > 0 and (clip_c is None or st["clipfrac_dual"] > 0)
    assert {"pg_loss", "clipfrac_low", "clipfrac_high", "approx_kl", "kl_ref"} <= set(st)


@pytest.mark.parametrize("mode", LOSS_AGGS)
def test_minibatch_losses_sum_to_full_batch(mode):
    """Gradient accumulation: with the full batch's token/sequence counts passed in, the
    minibatch losses (and their gradients) add up to the full-batch loss (and gradient)."""
    logp, old, adv, ref, mask = _random_loss_inputs(7)
    cfg = dataclasses.replace(a3po.Config(), loss_agg=mode, loss_agg_constant=8, kl_coef=0.02, clip_c=2.5)
    full, _ = a3po.policy_loss(logp, old, adv, mask, cfg, ref_logp=ref)
    (g_full,) = torch.autograd.grad(full, logp)
    n_tok, n_seq = mask.sum(), (mask.sum(-1) > 0).sum()
    total, g_acc = 0.0, torch.zeros_like(logp)
    for lo, hi in ((0, 2), (2, 3), (3, 5)):  # uneven pieces, one of them all padding
        part, _ = a3po.policy_loss(logp[lo:hi], old[lo:hi], adv[lo:hi], mask[lo:hi], cfg, ref_logp=ref[lo:hi],
                                   num_tokens=n_tok, num_seqs=n_seq)
        (g,) = torch.autograd.grad(part, logp)
        total, g_acc = total + part.item(), g_acc + g
    assert total == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(g_acc, g_full, atol=1e-12)


# ============================================================ token_logprobs (method 7)

@pytest.mark.parametrize("chunk", [1, 4, 7, 20, 64])  # N = 20: divides, does not divide, equals, exceeds
def test_token_logprobs_fp32_vs_float64_naive(chunk):
    g = torch.Generator().manual_seed(chunk)
    N, d, V = 20, 16, 300
    h = (torch.randn(N, d, generator=g) * 2).requires_grad_()
    W = torch.randn(V, d, generator=g).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    t[0] = V - 1
    g_lp, g_en = torch.randn(N, generator=g), torch.randn(N, generator=g)
    lp, en = a3po.token_logprobs(h, W, t, chunk_size=chunk)
    assert lp.dtype == en.dtype == torch.float32 and lp.shape == en.shape == (N,)
    dh, dW = torch.autograd.grad((lp * g_lp + en * g_en).sum(), (h, W))
    h64, W64 = h.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    lp64, en64 = naive_logprobs64(h64, W64, t)
    dh64, dW64 = torch.autograd.grad((lp64 * g_lp.double() + en64 * g_en.double()).sum(), (h64, W64))
    for got, want in ((lp, lp64), (en, en64), (dh, dh64), (dW, dW64)):
        assert (got.double() - want).abs().max().item() < 1e-5 * max(1.0, want.abs().max().item())
    assert dh.dtype == dW.dtype == torch.float32


def test_token_logprobs_one_output_used():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (9,), generator=g)
    want_lp = torch.autograd.grad(naive_logprobs64(h, W, t)[0].sum(), (h, W))
    want_en = torch.autograd.grad(naive_logprobs64(h, W, t)[1].sum(), (h, W))
    lp, en = a3po.token_logprobs(h, W, t, chunk_size=4, with_entropy=False)
    assert en is None
    assert all(torch.allclose(a, b) for a, b in zip(torch.autograd.grad(lp.sum(), (h, W)), want_lp))
    _, en = a3po.token_logprobs(h, W, t, chunk_size=4)  # entropy only (the entropy-bonus case)
    assert all(torch.allclose(a, b) for a, b in zip(torch.autograd.grad(en.sum(), (h, W)), want_en))
    # only hidden needs a gradient (a frozen output layer)
    (dh,) = torch.autograd.grad(a3po.token_logprobs(h, W.detach(), t, 4)[0].sum(), (h,))
    assert torch.allclose(dh, want_lp[0])


def test_token_logprobs_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 6, 3, 3, 1])
    assert torch.autograd.gradcheck(lambda h, W: a3po.token_logprobs(h, W, t, chunk_size=2), (h, W))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_token_logprobs_low_precision_inputs_accumulate_in_fp32(dtype):
    g = torch.Generator().manual_seed(3)
    N, d, V = 33, 32, 500
    h = torch.randn(N, d, generator=g).to(dtype).requires_grad_()
    W = (torch.randn(V, d, generator=g) * 0.3).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    lp, en = a3po.token_logprobs(h, W, t, chunk_size=8)
    assert lp.dtype == en.dtype == torch.float32
    dh, dW = torch.autograd.grad((lp + 0.1 * en).sum(), (h, W))
    assert dh.dtype == dW.dtype == dtype
    # same (rounded) inputs in fp32: identical math, so the outputs agree to fp32 precision
    h32, W32 = h.detach().float().requires_grad_(), W.detach().float().requires_grad_()
    lp32, en32 = a3po.token_logprobs(h32, W32, t, chunk_size=8)
    dh32, dW32 = torch.autograd.grad((lp32 + 0.1 * en32).sum(), (h32, W32))
    assert torch.allclose(lp, lp32, atol=1e-5) and torch.allclose(en, en32, atol=1e-5)
    assert torch.allclose(dh.float(), dh32, rtol=1e-2, atol=1e-2) and torch.allclose(dW.float(), dW32, rtol=1e-2, atol=1e-2)
    # and bf16 autocast around the call does not round the logits to bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp_ac, _ = a3po.token_logprobs(h32.detach(), W32.detach(), t, chunk_size=8)
    assert lp_ac.dtype == torch.float32 and torch.allclose(lp_ac, lp32, atol=1e-5)


def test_token_logprobs_saves_no_logits():
    """Memory: what autograd keeps for backward is the inputs plus O(N), never [N, V]."""
    N, d, V = 64, 8, 1000
    h = torch.randn(N, d, requires_grad=True)
    W = torch.randn(V, d, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        a3po.token_logprobs(h, W, torch.randint(0, V, (N,)), chunk_size=16)
    assert max(saved) == V * d and sum(saved) <= V * d + N * d + 3 * N


def test_token_logprobs_bad_input_and_empty():
    h, W = torch.randn(4, 3), torch.randn(10, 3)
    with pytest.raises(ValueError, match="outside the output layer's vocabulary"):
        a3po.token_logprobs(h, W, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(AssertionError):
        a3po.token_logprobs(h, torch.randn(10, 4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(AssertionError):
        a3po.token_logprobs(h, W, torch.tensor([0, 1]))
    with pytest.raises(AssertionError):
        a3po.token_logprobs(h, W, torch.tensor([0, 1, 2, 3]), chunk_size=0)
    lp, en = a3po.token_logprobs(torch.randn(0, 3), W, torch.zeros(0, dtype=torch.long))
    assert lp.shape == en.shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_token_logprobs_cuda_bf16_matches_cpu():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(50, 64, generator=g).bfloat16()
    W = (torch.randn(1000, 64, generator=g) * 0.2).bfloat16()
    t = torch.randint(0, 1000, (50,), generator=g)
    hc, Wc = h.cuda().requires_grad_(), W.cuda().requires_grad_()
    lp, en = a3po.token_logprobs(hc, Wc, t.cuda(), chunk_size=16)
    (lp.sum() + en.sum()).backward()
    lp_cpu, en_cpu = a3po.token_logprobs(h.float(), W.float(), t, chunk_size=16)
    assert torch.allclose(lp.cpu(), lp_cpu, atol=1e-3) and torch.allclose(en.cpu(), en_cpu, atol=1e-3)
    assert hc.grad.dtype == torch.bfloat16 and torch.isfinite(Wc.grad.float()).all()

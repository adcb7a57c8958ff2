"""A3PO: Adaptive and Asymmetric token-level advantage shaping for Policy Optimization.

A from-scratch, single-file reference of "Rethinking Sample Polarity in Reinforcement
Learning with Verifiable Rewards" (arXiv 2512.21625), with its baselines GRPO, DAPO, PSR,
NSR and W-REINFORCE. docs/method.md describes the method with every default; its section
numbers are the [method N] tags of `python a3po.py --help` and of the comments below.

The file reads top to bottom in the order one training step runs:
  Config, PRESETS             which variant (A3PO or a baseline) and its constants
  MATH   (one batch, pure tensor functions, each tested against a float64 re-computation)
    reward                    response -> 1 / 0, the verifier's score          (method 1)
    overlong_reward_penalty   length -> reward penalty                        (method 4)
    group_is_mixed            which groups dynamic sampling keeps              (method 1)
    token_logprobs            hidden states -> log pi_old(token), entropy      (method 7)
    compute_advantages        rewards [B] -> one advantage per response        (method 1, 2)
    shape_advantages          advantage [B] -> one advantage per token [B, T]  (method 2, 3)
    policy_loss               clipped surrogate + optional KL, aggregated      (method 4)
  TRAINER  train_step (the same steps on real rollouts), then the functions it calls in its
           order, evaluation, the training loop and main.
Files hold what a reader of the algorithm can skip: processes.py (torchrun: each process's
share of the rows and the few gathers that make N processes decide as one; no-ops in one
process), runs.py (loading a run, its folder, lock, signals, checkpoints and log files),
logprobs.py (the chunked log-prob kernel) and cli.py (flags from Config's fields, their checks).
Shapes: B responses (= prompts * group_size), T response tokens (right-padded, `mask`
marks real tokens, the EOS that ended a response included), N = B*T flattened rows,
d hidden size, V vocabulary size.
"""
import contextlib
import functools
import math
import sys
import time
from dataclasses import dataclass, field, fields, replace

import torch

import cli
import logprobs
import model
import processes
import runs
import verifier
from data import tasks
from cli import UserError, arg, need
from processes import full_weights, my_share

# ============================================================================ config

@dataclass
class Config:
    # Defaults are the a3po preset, so Config() is A3PO. "(ours)" in a help text marks a value the
    # method leaves open and this project chose; every other method default restates DAPO, GRPO
    # or Zhu et al. 2025 (the paper's own constants were not available; see docs/method.md).
    algo: str = arg("a3po", "5", "preset: sets adv-norm, raw-adv, w-pos, w-neg, token-shaping, eps-low, "
                    "eps-high, loss-agg and dynamic-sampling (each flag's help shows the values; a flag given wins)",
                    ("grpo", "dapo", "psr", "nsr", "w-reinforce", "a3po"))
    # --- method 1: rollouts, group-relative advantage, dynamic sampling
    adv_norm: str = arg("std", "1", "std: A = (R - mean) / (std + eps); none: R - mean (Dr. GRPO); "
                        "raw: the polarity baselines' raw-reward advantages (see --raw-adv)", ("std", "none", "raw"))
    adv_eps: float = arg(1e-6, "1", "eps of the std normalisation (ours)")
    raw_adv: str | None = arg(None, "1", "with --adv-norm raw: psr A = R | nsr A = R - 1 | "
                              "w-reinforce A = lambda or -1", ("psr", "nsr", "w-reinforce"))
    wreinforce_lambda: float = arg(0.1, "2", "W-REINFORCE: the advantage of a correct answer (Zhu et al.)")
    dynamic_sampling: bool = arg(True, "1", "DAPO: drop groups whose answers are all right or all wrong "
                                 "and sample more prompts")
    max_sample_tries: int = arg(4, "1", "dynamic sampling: at most this many rounds of --prompts-per-step prompts a step (ours)")
    # --- method 2: polarity-level weights
    w_pos: float = arg(1.0, "2", "A~ = w_pos * A for A > 0")
    w_neg: float = arg(1.0, "2", "A~ = w_neg * A for A < 0")
    # --- method 3: asymmetric, adaptive token-level shaping (the A3PO part)
    token_shaping: bool = arg(True, "3", "boost chosen tokens' advantages (a3po preset only)")
    rho_pos: float = arg(0.2, "3", "fraction of the batch's positive-sample tokens boosted")
    rho_neg: float = arg(0.2, "3", "fraction of the batch's negative-sample tokens boosted")
    alpha0_pos: float = arg(2.0, "3", "boost factor at the first step, positive samples")
    alpha0_neg: float = arg(2.0, "3", "boost factor at the first step, negative samples")
    alpha_schedule: str = arg("linear", "3", "how the boost decays to 1", ("linear", "cosine", "constant"))
    alpha_decay_steps: int | None = arg(None, "3", "S_decay of the schedule; none = --steps")
    token_criterion: str = arg("prob", "3", "rank tokens by pi_old probability, or by pi_old entropy (ablation)",
                               ("prob", "entropy"))
    pos_tail: str = arg("uncertain", "3", "positive samples: boost the tokens where pi_old was UNCERTAIN (low "
                        "probability, or high entropy) or confident (ablation)", ("uncertain", "confident"))
    neg_tail: str = arg("confident", "3", "negative samples: boost the tokens where pi_old was CONFIDENT (high "
                        "probability, or low entropy) or uncertain (ablation)", ("uncertain", "confident"))
    # --- method 4: objective
    eps_low: float = arg(0.2, "4", "ratio clipped below at 1 - eps_low")
    eps_high: float = arg(0.28, "4", "clip-higher (DAPO): ratio clipped above at 1 + eps_high")
    clip_c: float | None = arg(None, "4", "dual-clip bound for A < 0 (verl's clip_ratio_c, e.g. 3); none = off")
    loss_agg: str = arg("token-mean", "4", "how token losses are averaged",
                        ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum-norm"))
    loss_agg_constant: float | None = arg(None, "4", "token-sum-norm (Dr. GRPO) divides each response's token sum "
                                          "by this constant; none = --max-new-tokens, so a full-length response "
                                          "weighs as under token-mean (ours)")
    kl_coef: float = arg(0.0, "4", "beta of the k3 KL to the starting model (0: no reference model is loaded)")
    overlong_filter: bool = arg(False, "4", "DAPO: truncated responses get zero loss weight")
    overlong_penalty: bool = arg(False, "4", "DAPO: soft length penalty added to the reward")
    overlong_cache: int | None = arg(None, "4", "the penalty ramps over the last N tokens before the limit; "
                                     "none = --max-new-tokens // 5 (DAPO: 4096 of 20480)")
    overlong_penalty_factor: float = arg(1.0, "4", "DAPO: the penalty at the limit is -factor")
    # --- trainer: model and data
    model: str = arg("data/default_model", "trainer", "Hugging Face model folder to train (relative paths "
                     "are also looked up next to a3po.py)")
    data: str = arg("synthetic", "trainer", "training problems: 'synthetic' (our arithmetic task), 'search' (our "
                    "search task; also sets --model data/search_model and --max-new-tokens 96 unless given) or a JSONL file")
    data_format: str = arg("auto", "trainer", "format of --data / --eval-data",
                           ("auto", "gsm8k", "math", "olympiad", "generic"))
    answer_check: str = arg("auto", "trainer", "what the reward accepts: number = a number written out, never an "
                            "expression left to evaluate (so restating the question earns nothing); equivalence = "
                            "any mathematically equal answer; auto = number for synthetic, search and GSM8K, "
                            "equivalence for MATH, OlympiadBench and generic JSONL", ("auto", "number", "equivalence"))
    prompt_key: str | None = arg(None, "trainer", "generic JSONL: the key holding the question")
    answer_key: str | None = arg(None, "trainer", "generic JSONL: the key holding the gold answer")
    template: str = arg("boxed", "trainer", "prompt template: boxed (step by step, answer in \\boxed{}) | plain",
                        tuple(tasks.TEMPLATES))
    synthetic_level: int = arg(3, "trainer", "difficulty of the synthetic task, 1 (easiest) to 5")
    train_size: int = arg(20000, "trainer", "synthetic training problems generated (a --data file uses all its lines)")
    eos_token: str | None = arg(None, "trainer", "the token that ends a response, for a checkpoint whose "
                                "config files name none (e.g. '<|im_end|>')")
    # --- trainer: rollouts
    steps: int = arg(40, "trainer", "training steps S; each samples one batch of rollouts")
    prompts_per_step: int = arg(16, "trainer", "prompts per step (groups in the batch)")
    group_size: int = arg(8, "trainer", "G: responses sampled per prompt")
    max_new_tokens: int = arg(64, "trainer", "response length limit (also the overlong limit of method 4)")
    temperature: float = arg(1.0, "trainer", "sampling temperature; training log-probs use the same (hidden / T)")
    top_p: float = arg(1.0, "trainer", "nucleus sampling threshold")
    gen_batch_size: int = arg(0, "trainer", "sequences per generate() call (0 = the whole batch at once)")
    # --- trainer: optimisation
    ppo_epochs: int = arg(2, "trainer", "passes over each batch; one optimizer step per pass")
    micro_batch_size: int = arg(32, "trainer", "responses per forward/backward; gradients accumulate over the "
                                "whole batch (one optimizer step per epoch, not per micro-batch)")
    lr: float = arg(1e-4, "trainer", "AdamW peak learning rate")
    warmup_steps: int = arg(2, "trainer", "linear learning-rate warm-up steps")
    lr_schedule: str = arg("constant", "trainer", "after warm-up", ("constant", "cosine"))
    lr_decay_steps: int | None = arg(None, "trainer", "the cosine schedule reaches 0 after this step; none = --steps")
    weight_decay: float = arg(0.0, "trainer", "AdamW weight decay")
    grad_clip: float = arg(1.0, "trainer", "max gradient norm (0 = no clipping)")
    grad_checkpointing: bool = arg(False, "trainer", "recompute each block in backward: less memory, more time")
    # --- trainer: evaluation, logging, checkpoints
    eval_data: tuple[str, ...] | None = arg(None, "trainer", "held-out JSONL file(s), each evaluated and reported "
                                            "under its name (the file's stem); none = the synthetic or search test "
                                            "split, or the last --eval-size problems of --data")
    eval_size: int | None = arg(None, "trainer", "evaluate the first N problems of each held-out set; none = all of a "
                                "--eval-data file, 200 of the synthetic / search test split or of --data's tail")
    eval_k: tuple[int, ...] = arg((1, 8), "trainer", "report pass@k for each k; max(k) samples per problem")
    eval_temperature: float | None = arg(None, "trainer", "evaluation's sampling temperature; none = --temperature")
    eval_top_p: float | None = arg(None, "trainer", "evaluation's nucleus threshold; none = --top-p")
    eval_max_new_tokens: int | None = arg(None, "trainer", "evaluation's response length limit; none = --max-new-tokens")
    eval_every: int = arg(0, "trainer", "also evaluate every N steps (0 = only before and after training)")
    eval_batch_size: int = arg(256, "trainer", "sequences per generate() call during evaluation")
    log_samples: int = arg(4, "trainer", "responses per step written to samples.jsonl (one per group)")
    save_every: int = arg(0, "trainer", "also checkpoint every N steps (0 = only at the end and when interrupted)")
    run_dir: str | None = arg(None, "trainer", "output folder; none = runs/<algo>-<date>-<time>-s<seed>-<pid>")
    resume: str | None = arg(None, "trainer", "continue the run in this folder from its checkpoint, exactly, with "
                             "its saved settings")
    override: bool = arg(False, "trainer", "with --resume: let the flags given change the run's saved settings "
                         "(e.g. a larger --steps; the schedules keep their saved horizons); each change is recorded "
                         "in the run's changes.jsonl")
    eval_only: bool = arg(False, "trainer", "only evaluate --model (any checkpoint folder): results.json and every "
                          "sample go to --run-dir (none = runs/eval-<date>-<time>-<pid>)")
    seed: int = arg(0, "trainer", "seeds data order and sampling (the task itself is fixed)")
    device: str = arg("auto", "trainer", "cpu | cuda | cuda:N (auto = cuda when available)")
    dtype: str = arg("auto", "trainer", "compute dtype (auto: bf16 autocast on CUDA, fp32 on CPU)",
                     ("auto", "float32", "bfloat16"))
    threads: int = arg(0, "trainer", "CPU threads for torch (0 = auto: 1 on a CPU where torch's default is 2 "
                       "or fewer, as 2 stall when another job runs; else torch's default)")
    wandb: str | None = arg(None, "trainer", "also log the metrics to this Weights & Biases project (pip install "
                            "wandb; WANDB_MODE=offline keeps them on this machine)")
    tensorboard: bool = arg(False, "trainer", "also write TensorBoard event files to <run-dir>/tensorboard (pip install "
                            "tensorboard)")
    # --- trainer: several processes (torchrun --nproc-per-node N a3po.py ...)
    fsdp: bool = arg(False, "trainer", "under torchrun: shard parameters, gradients and AdamW state over the "
                     "processes (FSDP2) instead of a full copy on each (data parallel)")
    dist_timeout: float = arg(60.0, "trainer", "under torchrun: minutes a process waits for the others at a "
                              "collective before the job fails (must exceed the slowest step)")

    def __post_init__(self):
        cli.check_settings(self)  # a bad value fails here, before any compute, naming its flag


# Method section 5, one line per preset, every column of its table. PSR / NSR / W-REINFORCE
# use RAW rewards (Zhu et al.); their zero weights are then redundant (A = R is never < 0,
# A = R - 1 never > 0) but say what they mean, and `--algo psr --adv-norm std` is the other
# variant: group-normalised advantages with one polarity masked. W-REINFORCE's lambda = 0.1
# is applied once, in the raw mapping, so its w_pos is 1 (also 0.1 there would give 0.01).
PRESET_FIELDS = ("adv_norm", "raw_adv", "w_pos", "w_neg", "token_shaping", "eps_low", "eps_high", "loss_agg",
                 "dynamic_sampling")
PRESETS = {name: dict(zip(PRESET_FIELDS, row)) for name, row in {
    #               adv_norm raw_adv        w_pos w_neg shaping eps_low eps_high loss_agg          dynamic sampling
    "grpo":        ("std",   None,          1.0,  1.0,  False,  0.2,    0.20, "seq-mean-token-mean", False),
    "dapo":        ("std",   None,          1.0,  1.0,  False,  0.2,    0.28, "token-mean",          True),
    "psr":         ("raw",   "psr",         1.0,  0.0,  False,  0.2,    0.28, "token-mean",          False),
    "nsr":         ("raw",   "nsr",         0.0,  1.0,  False,  0.2,    0.28, "token-mean",          False),
    "w-reinforce": ("raw",   "w-reinforce", 1.0,  1.0,  False,  0.2,    0.28, "token-mean",          False),
    "a3po":        ("std",   None,          1.0,  1.0,  True,   0.2,    0.28, "token-mean",          True),
}.items()}


def apply_preset(base: "str | Config", overrides: dict | None = None) -> Config:
    """Config for a preset: (Config defaults or `base`'s fields) <- PRESETS[algo] <- overrides.

    base: a preset name, or a Config whose .algo names the preset (its other fields, e.g.
    the trainer's, are kept unless the preset sets them). overrides: ONLY the flags the user
    gave explicitly; they win over the preset.
    """
    overrides = dict(overrides or {})
    cfg = Config() if isinstance(base, str) else base
    algo = overrides.pop("algo", base if isinstance(base, str) else base.algo)
    need(algo in PRESETS, f"unknown preset {algo!r}: choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(Config)})
    need(not unknown, f"unknown setting(s) {unknown}")
    return replace(cfg, **{**PRESETS[algo], **overrides, "algo": algo})  # replace re-runs the checks


# ============================================================================ MATH
# Pure functions of one batch's tensors, in the order `train_step` calls them.

# ------------------------------------------------------------- rewards (method 1, 4)

def reward(response: str, problem: tasks.Problem, fallback: bool = False) -> float:
    """The verifier's score of a response, 1.0 or 0.0; training and evaluation both use it.
    A reward a policy could earn by echoing the question is the textbook reward hack, so an
    answer copied from the question's math (\\dbinom{31}{28} for "Compute $\\dbinom{31}{28}$.")
    earns nothing, and a problem that asks to compute a number (problem.numeric: our tasks,
    GSM8K, or --answer-check number) wants it written out, not its arithmetic ("12+11+3").
    fallback=True also reads an answer without a box or a marker (evaluation's lenient_acc)."""
    return verifier.score(response, problem.answer, fallback, problem.numeric, question=problem.prompt)


def overlong_reward_penalty(lengths: torch.Tensor, max_len: int, cache: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the verifier reward. lengths [B] -> [B] (<= 0).

    0 up to max_len - cache tokens, then a linear ramp down to -factor at max_len (and
    beyond), so a response is told it is getting long before it is cut off.
    """
    assert 0 <= cache < max_len, (cache, max_len)  # (--overlong-cache is checked in Config)
    over = lengths.double() - (max_len - cache)                      # [B] tokens into the cache zone
    ramp = over / cache if cache > 0 else (over > 0).double()       # cache 0: only past max_len
    return (-factor * ramp.clamp(0, 1)).float()


# ----------------------------------------------------------- dynamic sampling (method 1)

def group_is_mixed(correct: torch.Tensor, group_size: int) -> torch.Tensor:
    """correct [B] (verifier scores) -> [B/G] bool: the group holds a right and a wrong answer.

    Dynamic sampling (DAPO) keeps only these groups. It looks at correctness, not at the shaped
    reward: with the overlong penalty on, an all-wrong group of different lengths has unequal
    rewards, and std-normalisation would blow its small length penalties up to full-size
    advantages. The advantage itself still uses the shaped reward."""
    c = correct.reshape(-1, group_size)                              # [B/G, G]
    return c.amax(dim=1) != c.amin(dim=1)


# ---------------------------------------------- log-probs without full logits (method 7)

def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   chunk_size: int = 1024, with_entropy: bool = True):
    """Per-token log-probs (and entropies) of the output layer, without [N, V] logits.

    hidden [N, d] (final-normed hidden states, any float dtype; divide by the sampling
    temperature first), weight [V, d] (lm head), targets [N] token ids.
    Returns (logp [N], entropy [N] or None), float32 (float64 for float64 inputs),
    differentiable w.r.t. hidden and weight; gradients come back in the inputs' dtypes.
    The plain meaning, what the tests check it against:
        logq = torch.log_softmax(hidden @ weight.T, -1)            # [N, V]
        logp, entropy = logq.gather(1, targets[:, None])[:, 0], -(logq.exp() * logq).sum(-1)
    That [N, V] is what runs a trainer out of memory (8192 tokens x 151,936 = 5 GB in fp32), so
    logprobs.py computes it chunk by chunk, with a hand-derived backward that recomputes each
    chunk: peak extra memory O(chunk_size x V).
    """
    assert hidden.dim() == 2 and weight.dim() == 2 and weight.shape[1] == hidden.shape[1], \
        (tuple(hidden.shape), tuple(weight.shape))
    assert targets.shape == (hidden.shape[0],) and not targets.is_floating_point() and chunk_size >= 1
    if targets.numel() > 0:  # out-of-range ids would be a device-side assert on CUDA
        lo, hi = int(targets.min()), int(targets.max())
        need(lo >= 0 and hi < weight.shape[0],
             f"token_logprobs: token ids span [{lo}, {hi}], outside the output layer's vocabulary [0, {weight.shape[0]})")
    return logprobs.ChunkedTokenLogprobs.apply(hidden, weight, targets.long(), int(chunk_size), bool(with_entropy))


# ------------------------------------------------- rewards -> advantages (method 1, 2)

def reward_to_raw_advantage(rewards: torch.Tensor, correct: torch.Tensor, kind: str,
                            wreinforce_lambda: float = 0.1) -> torch.Tensor:
    """Raw-reward advantages of the polarity baselines (method 2, Zhu et al.). rewards, correct [B] -> [B].

    psr: A = R (only correct answers move the model); nsr: A = R - 1 (only wrong ones);
    w-reinforce: A = lambda * R for a correct answer (lambda without a penalty), R - 1 for a wrong one (-1).
    No group mean, no std: each answer is judged alone.
    """
    r = rewards.float()
    if kind == "psr":
        return r.clone()
    if kind == "nsr":
        return r - 1
    assert kind == "w-reinforce", kind
    return torch.where(correct > 0, wreinforce_lambda * r, r - 1)


def compute_advantages(rewards: torch.Tensor, group_size: int, cfg: Config,
                       correct: torch.Tensor | None = None) -> torch.Tensor:
    """One advantage per response (method 1). rewards [B], groups consecutive -> adv [B].

    std : (R - mean) / (std + eps), std = SAMPLE std (divides by G-1) like torch.std and the
          usual GRPO implementations (TRL, verl). A group of 1 has A = 0.
    none: R - mean (Dr. GRPO: no division, so easy and hard prompts are not re-weighted).
    raw : the polarity baselines' advantages, per cfg.raw_adv (reward_to_raw_advantage).
    A group whose rewards are all equal gets EXACTLY 0 (std / none; a float mean can miss by an ulp).
    correct [B], the verifier scores, when the rewards are more (the overlong penalty): then
    correctness decides the polarity and the reward only the size. A group whose answers are
    all right or all wrong gets 0, and an advantage of the wrong sign is cut to 0, so a right
    answer is never pushed down nor a wrong one up, however long it is.
    """
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0, (tuple(rewards.shape), group_size)
    need(bool(torch.isfinite(rewards).all()), "compute_advantages: rewards contain NaN/inf")
    c = rewards if correct is None else correct                       # [B] what decides polarity
    assert c.shape == rewards.shape, (tuple(c.shape), tuple(rewards.shape))
    if cfg.adv_norm == "raw":
        adv = reward_to_raw_advantage(rewards, c, cfg.raw_adv, cfg.wreinforce_lambda)
    else:
        r = rewards.double().reshape(-1, group_size)                  # [B/G, G]
        adv = r - r.mean(dim=1, keepdim=True)                         # [B/G, G]
        if cfg.adv_norm == "std":
            std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
            adv = adv / (std + cfg.adv_eps)
        g = c.reshape(-1, group_size)                                 # [B/G, G]
        same = g.amax(dim=1, keepdim=True) == g.amin(dim=1, keepdim=True)  # [B/G, 1] nothing to learn
        adv = adv.masked_fill(same, 0.0).view(-1).float()
    if correct is None:
        return adv
    return torch.where(correct > 0, adv.clamp(min=0), adv.clamp(max=0))


def polarity_weights(adv: torch.Tensor, w_pos: float, w_neg: float) -> torch.Tensor:
    """Sample-level polarity shaping (method 2). adv [B] -> A~ [B]: w_pos*A if A>0, w_neg*A if A<0."""
    return torch.where(adv > 0, w_pos * adv, torch.where(adv < 0, w_neg * adv, torch.zeros_like(adv)))


# ---------------------------------------------- token-level shaping, the A3PO part (method 3)

def alpha_schedule(alpha0: float, s: int, decay_steps: int, kind: str) -> float:
    """Boost factor at RL step s (0 for the first step, S-1 for the last): 1 + (alpha0 - 1) f(s).

    linear  : f = 1 - min(s/S_decay, 1)
    cosine  : f = 0.5 * (1 + cos(pi * min(s/S_decay, 1)))
    constant: f = 1
    So the first step has the full boost alpha0; with S_decay = S steps the last step has
    1 + (alpha0 - 1) / S under linear (1.025 for alpha0 = 2, S = 40), and the boost reaches 1
    exactly only at s = S_decay, after the run.
    """
    assert s >= 0 and decay_steps > 0, (s, decay_steps)
    if kind == "constant":
        return float(alpha0)
    x = min(s / decay_steps, 1.0)
    f = 1.0 - x if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * x))
    return 1.0 + (alpha0 - 1.0) * f


def boost_factors(s: int, cfg: Config) -> tuple[float, float]:
    """(alpha_pos, alpha_neg) of RL step s, computed once per step for the shaping and the log."""
    if not cfg.token_shaping:
        return 1.0, 1.0
    S = cfg.alpha_decay_steps or cfg.steps  # (a run's config.json holds it resolved: see resolve_defaults)
    return (alpha_schedule(cfg.alpha0_pos, s, S, cfg.alpha_schedule),
            alpha_schedule(cfg.alpha0_neg, s, S, cfg.alpha_schedule))


def boost_count(rho: float, n: int) -> int:
    """How many of n candidate tokens a fraction rho boosts: ceil(rho * n).

    ceil, so any polarity with tokens and rho > 0 boosts at least one (a batch with a
    single short positive answer still gets its rarest token boosted). The 1e-9 absorbs
    float noise: 0.2 * 15 = 3.0000000000000004 must give 3, not 4.
    """
    return max(0, min(n, math.ceil(rho * n - 1e-9)))


def select_tail(values: torch.Tensor, candidates: torch.Tensor, rho: float, tail: str,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Mark the lowest/highest ceil(rho * n) `values` among the n `candidates` (batch-wide).

    values [B, T] float, candidates [B, T] bool -> selected [B, T] bool (a subset of candidates).
    Ties at the quota boundary are broken at random (a shuffle drawn from `generator`, a CPU
    generator) instead of by position: tokens whose pi_old is exactly 1 (log p == 0.0, common
    once entropy falls) would otherwise be boosted because their rows come first.
    """
    flat_idx = candidates.flatten().nonzero().squeeze(1)             # [n]
    k = boost_count(rho, flat_idx.numel())
    selected = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
    if k > 0:
        key = values.flatten()[flat_idx]                             # [n]
        key = key if tail == "low" else -key                         # always take the k smallest keys
        shuffle = torch.randperm(key.numel(), generator=generator).to(key.device)  # [n] random order
        order = shuffle[torch.sort(key[shuffle], stable=True).indices]  # by value; ties in shuffled order
        selected[flat_idx[order[:k]]] = True
    return selected.view_as(candidates)


def shape_advantages(adv: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, alphas: tuple[float, float],
                     cfg: Config, entropy: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """Per-token advantages A^ [B, T] (method 2 + 3) and which tokens were boosted.

    adv [B]: sample advantages; old_logp [B, T]: log pi_old of each response token;
    mask [B, T]: tokens in the loss; alphas: (alpha_pos, alpha_neg) of this step (boost_factors);
    entropy [B, T]: pi_old entropy (token_criterion=entropy); generator: the tie-break shuffle.
    Returns (token_adv [B, T] float32, zero on padding; boosted_pos [B, T] bool; boosted_neg [B, T] bool).

    Selection is over the WHOLE batch (all tokens of all positive samples compete), so call
    this once per batch, before splitting into micro-batches. Polarity is the sign of adv
    (method 1); w_pos/w_neg only scale. Ranking by log p gives the same order as by p.
    """
    B, T = old_logp.shape
    assert adv.shape == (B,) and mask.shape == (B, T), (tuple(adv.shape), tuple(mask.shape), (B, T))
    mask = mask.bool()
    token_adv = polarity_weights(adv.float(), cfg.w_pos, cfg.w_neg)[:, None] * mask  # [B, T], 0 on padding
    no_boost = torch.zeros(B, T, dtype=torch.bool, device=mask.device)
    if not cfg.token_shaping:
        return token_adv, no_boost, no_boost.clone()

    values = old_logp if cfg.token_criterion == "prob" else entropy   # [B, T]
    assert values is not None and values.shape == (B, T), "token_criterion=entropy needs entropy [B, T]"
    need(bool(torch.isfinite(values[mask]).all()), f"shape_advantages: pi_old {cfg.token_criterion} has NaN/inf")
    # pi_old is uncertain where a token's probability is low, or where the entropy is high
    end = lambda intent: "low" if (intent == "uncertain") == (cfg.token_criterion == "prob") else "high"
    pos_tokens = mask & (adv > 0)[:, None]                           # [B, T]
    neg_tokens = mask & (adv < 0)[:, None]                           # [B, T]
    boosted_pos = select_tail(values, pos_tokens, cfg.rho_pos, end(cfg.pos_tail), generator)
    boosted_neg = select_tail(values, neg_tokens, cfg.rho_neg, end(cfg.neg_tail), generator)
    scale = torch.ones(B, T, device=mask.device)
    scale[boosted_pos] = alphas[0]
    scale[boosted_neg] = alphas[1]
    return token_adv * scale, boosted_pos, boosted_neg


# ---------------------------------------------------------------- objective (method 4)

def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str, num_tokens=None, num_seqs=None,
              constant: float | None = None) -> torch.Tensor:
    """Reduce per-token values x [B, T] over mask [B, T] (bool) to a scalar.

    token-mean          : sum_{i,t} x / num_tokens                (DAPO; every token counts once)
    seq-mean-token-mean : sum_i (sum_t x / len_i) / num_seqs       (GRPO original)
    seq-mean-token-sum  : sum_{i,t} x / num_seqs
    token-sum-norm      : sum_{i,t} x / (num_seqs * constant)      (Dr. GRPO, constant = max length)
    num_tokens / num_seqs default to this call's counts (tokens; rows with >= 1 token). For
    gradient accumulation pass the FULL batch's counts: then the minibatch losses sum to the
    full-batch loss exactly (the normaliser is a constant, not a per-minibatch mean).
    """
    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))  # NaN-safe on padding
    lens = mask.sum(dim=-1)                                                      # [B]
    if num_tokens is None:
        num_tokens = lens.sum().clamp(min=1)
    if num_seqs is None:
        num_seqs = (lens > 0).sum().clamp(min=1)
    if mode == "token-mean":
        return x.sum() / num_tokens
    if mode == "seq-mean-token-mean":
        return (x.sum(dim=-1) / lens.clamp(min=1)).sum() / num_seqs
    if mode == "seq-mean-token-sum":
        return x.sum() / num_seqs
    if mode == "token-sum-norm":
        assert constant is not None, "token-sum-norm needs Config.loss_agg_constant (e.g. max_new_tokens)"
        return x.sum() / (num_seqs * constant)
    raise ValueError(f"loss_agg={mode!r}: unknown")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, token_adv: torch.Tensor, mask: torch.Tensor,
                cfg: Config, ref_logp: torch.Tensor | None = None, num_tokens=None, num_seqs=None):
    """DAPO-style clipped surrogate (+ beta * k3 KL to the reference). All inputs [B, T].

    per token, r = pi_theta / pi_old = exp(logp - old_logp), A = token_adv:
        l = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)     (pessimistic: no gain from moving r far)
        dual clip (clip_c, as verl), A < 0 only: l = min(l, -clip_c A), so a huge ratio on
        a token we are pushing down cannot make the loss (and gradient) unbounded.
        KL k3 (Schulman): with d = ref_logp - logp, k3 = exp(d) - d - 1 >= 0, unbiased for
        KL(pi_theta || pi_ref) on samples of pi_theta.
    loss = aggregate(l) + kl_coef * aggregate(k3), same aggregation (see `aggregate` for
    num_tokens / num_seqs under gradient accumulation).
    Returns (loss scalar, stats dict of floats over THIS call's response tokens).
    """
    B, T = logp.shape
    assert all(t is None or t.shape == (B, T) for t in (old_logp, token_adv, mask, ref_logp)), "all inputs [B, T]"
    assert cfg.kl_coef == 0 or ref_logp is not None, "kl_coef > 0 needs ref_logp"
    mask = mask.bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    log_ratio = torch.where(mask, logp - old_logp, zero)            # [B, T]
    ratio = torch.exp(log_ratio)                                    # [B, T]
    adv = torch.where(mask, token_adv.to(logp.dtype), zero)         # [B, T]
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)                    # [B, T]
    if cfg.clip_c is not None:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * cfg.clip_c), pg)
    agg = dict(mask=mask, mode=cfg.loss_agg, num_tokens=num_tokens, num_seqs=num_seqs,
               constant=cfg.loss_agg_constant)
    pg_loss = aggregate(pg, **agg)
    loss = pg_loss
    kl = None
    if ref_logp is not None:
        d = torch.where(mask, ref_logp - logp, zero)
        kl = torch.exp(d) - d - 1                                   # [B, T] k3
        kl_loss = aggregate(kl, **agg)
        if cfg.kl_coef != 0:
            loss = loss + cfg.kl_coef * kl_loss

    with torch.no_grad():  # logging only; one device sync for all numbers
        n = mask.sum().clamp(min=1)
        frac = lambda b: (b & mask).sum() / n
        r = ratio.detach()
        stat = {
            "pg_loss": pg_loss.detach(),
            # clip active = the min picked the clipped term, the token gets no gradient:
            "clipfrac_high": frac((adv > 0) & (r > 1.0 + cfg.eps_high)),
            "clipfrac_low": frac((adv < 0) & (r < 1.0 - cfg.eps_low)),
            "clipfrac_dual": frac((adv < 0) & (r > cfg.clip_c)) if cfg.clip_c is not None else zero,
            # approx KL(pi_old || pi_theta): k3 on the sampled tokens, r - 1 - log r (>= 0)
            "approx_kl": ((r - 1 - log_ratio.detach()) * mask).sum() / n,
            "ratio_mean": (r * mask).sum() / n,
            "ratio_max": torch.where(mask, r, zero).max() if mask.any() else zero + 1,
            "num_tokens": mask.sum().to(logp.dtype),
        }
        if kl is not None:
            stat["kl_ref"] = (kl.detach() * mask).sum() / n
        stats = dict(zip(stat, torch.stack([v.to(torch.float64) for v in stat.values()]).tolist()))
    return loss, stats


# ============================================================================ TRAINER
# The same steps on real rollouts: `train_step`, then the functions it calls in its order.
# Under torchrun (processes.py) each process samples and trains on its share of the rows
# (`my_share`), and a few calls named for what they gather make every decision the
# single-process one; with one process they do nothing.

# ----------------------------------------------------------------------------- one step

def train_step(step: int, policy, ref_policy, optimizer, tok, cfg: Config, train_set, train_ids, state: dict):
    """One RL step (step = 1 .. S): rollouts -> rewards -> advantages -> pi_old -> token shaping -> PPO epochs.
    Returns (metrics of method section 6, a few samples for samples.jsonl)."""
    device = policy.output_weight.device
    t0 = time.time()
    # 1. Rollouts and rewards. Sampling randomness is a pure function of (seed, step, row), and
    #    the data position is saved, so a resumed run draws exactly what an uninterrupted one
    #    would, with any number of processes.
    batch, drawn, state["data_pos"], info = sample_batch(policy, tok, cfg, train_set, train_ids, state["data_pos"],
                                                         step, device)
    t1 = time.time()
    # 2. Advantages: group-relative (method 1), from the rewards alone.
    adv = compute_advantages(batch.reward, cfg.group_size, cfg, batch.correct)          # [B]
    loss_mask = batch.mask & ~batch.truncated[:, None] if cfg.overlong_filter else batch.mask
    alphas = boost_factors(step - 1, cfg)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg)
    one_pass, learn = pi_old_from_update(cfg), has_learning_signal(adv, loss_mask, cfg)
    if learn:
        # 3. pi_old: log-probs and entropies of the sampled tokens under the weights that sampled
        #    them; with one epoch and no reference model, the update's own forward (pi_old_from_update).
        old_logp, entropy, ref_logp = (None, None, None) if one_pass else old_logprobs(policy, ref_policy, batch, cfg)
        t2 = time.time()
        # 4. Polarity and token-level shaping (method 2, 3); the tie-break shuffle has its own seed.
        tie_break = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 2_000_000_011)
        rank_by = batch.sample_logp if one_pass else old_logp                           # [B, T]
        token_adv, boosted_pos, boosted_neg = shape_advantages(adv, rank_by, loss_mask, alphas, cfg, entropy,
                                                               tie_break)               # [B, T]
        # 5. --ppo-epochs optimizer steps on the clipped surrogate (method 4).
        epochs, train_tokens, update_entropy = ppo_update(policy, optimizer, batch, old_logp, token_adv, loss_mask,
                                                          ref_logp, cfg)
        entropy = update_entropy if one_pass else entropy
    else:
        # Every group's answers agree: the loss and its gradient are exactly 0, so no forward and no
        # backward; the optimizer steps all the same, as under a zero gradient (Adam's moments decay).
        t2 = time.time()
        epochs, train_tokens = zero_gradient_update(policy, optimizer, cfg), 0
        entropy = torch.full(batch.mask.shape, float("nan"), device=device)             # [B, T] not computed
        boosted_pos = boosted_neg = torch.zeros_like(batch.mask)
    t3 = time.time()

    m = dict(step=step, split="train",
             **step_metrics(batch, adv, entropy, loss_mask, boosted_pos, boosted_neg, alphas, drawn, cfg),
             **update_metrics(epochs), lr=optimizer.param_groups[0]["lr"], ds_tries=info["ds_tries"],
             ds_mixed_groups=info["ds_mixed_groups"],
             gen_tokens_per_s=info["gen_tokens"] / max(info["time_generate"], 1e-9),
             train_tokens_per_s=train_tokens / max(t3 - t2, 1e-9),
             time_generate=info["time_generate"], time_reward=info["time_reward"],
             time_old_logp=t2 - t1, time_update=t3 - t2, time_step=t3 - t0, nothing_to_learn=not learn)
    G = cfg.group_size
    samples = [dict(step=step, split="train", prompt=r.problem.prompt, gold=r.problem.answer, completion=r.text,
                    reward=r.reward, advantage=float(adv[i * G]))
               for i, r in enumerate(batch.rollouts[:cfg.log_samples * G:G])]  # one response per group
    return m, samples


# ----------------------------------------------------------------------------- data order

@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # Data order is a pure function of (seed, epoch), so a resumed run only needs the position.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def take_problems(pos: int, k: int, n: int, seed: int) -> list[int]:
    """Problem indices at positions pos .. pos+k-1 of an endless, reshuffled-each-epoch stream."""
    return [epoch_order(n, seed, p // n)[p % n] for p in range(pos, pos + k)]


# ----------------------------------------------------------------------------- rollouts

@dataclass
class Rollout:  # one sampled response and what the verifier made of it
    prompt: list[int]       # prompt token ids
    response: list[int]     # response token ids, the EOS that ended it included
    text: str               # the decoded response
    problem: tasks.Problem  # the question and its gold answer
    correct: float          # verifier score: 1 right, 0 wrong
    reward: float           # correct + the overlong penalty when on (method 4)
    truncated: bool         # stopped by --max-new-tokens, no EOS
    logprobs: list = field(default_factory=list)  # the sampler's log-prob of each response token


@dataclass
class Batch:  # the step's kept rollouts as tensors: B = prompts_per_step * group_size rows, groups consecutive
    rollouts: list          # [B] Rollout
    ids: torch.Tensor         # [B, L] prompt + response, RIGHT-padded with pad_id (causal: no mask needed)
    prompt_len: torch.Tensor  # [B]
    targets: torch.Tensor     # [B, T] response tokens, left-aligned, 0 on padding
    mask: torch.Tensor        # [B, T] bool, response tokens incl. the EOS that ended it
    reward: torch.Tensor      # [B] verifier score + overlong penalty
    correct: torch.Tensor     # [B] verifier score (1 / 0)
    truncated: torch.Tensor   # [B] bool
    sample_logp: torch.Tensor  # [B, T] the sampler's log-probs of the response tokens, 0 on padding


def overlong_cache(cfg: Config) -> int:
    """--overlong-cache, or a fifth of the limit when not given (DAPO: 4096 of 20480)."""
    return cfg.max_new_tokens // 5 if cfg.overlong_cache is None else cfg.overlong_cache


def train_keys(cfg: Config, step: int, round: int, rows: range) -> torch.Tensor:
    """Sampling keys [len(rows)] of rows `rows` of a step's dynamic-sampling round (row = place in
    the whole round's batch): a row's tokens depend on nothing else, not on the process that
    samples it, the --gen-batch-size chunk it falls in or the rows beside it."""
    return model.hash64(cfg.seed, 1, step, round, torch.arange(rows.start, rows.stop))


def eval_keys(cfg: Config, problems: range, n: int) -> torch.Tensor:
    """Sampling keys [len(problems) * n] of the held-out samples, problem-major: sample j of
    problem i has the key of (seed, i, j) at every evaluation, so before / after differ only by
    the model."""
    i = torch.arange(problems.start, problems.stop).repeat_interleave(n)
    return model.hash64(cfg.seed, 2, i, torch.arange(n).repeat(len(problems)))


def weights_version(policy) -> int | None:
    """How many optimizer steps this process took on the policy (load_policy starts the count):
    model.generate keeps its decode copies of the weights while it stays the same. None for a
    model the trainer did not load: generate then makes the copies for each call."""
    return getattr(policy, "optimizer_steps", None)


def rollout_groups(policy, tok, cfg: Config, problems, prompts, keys) -> tuple[list[Rollout], float, float]:
    """P problems -> P * group_size scored rollouts (rows g*G .. g*G+G-1 answer problem g),
    sampled with `keys` [P * G] (train_keys), with the seconds spent generating and scoring."""
    seqs = [p for p in prompts for _ in range(cfg.group_size)]
    chunk = cfg.gen_batch_size or max(len(seqs), 1)
    t0 = time.time()
    responses, sampler_logp = [], []
    for s in range(0, len(seqs), chunk):
        r, lp = model.generate(policy, seqs[s:s + chunk], cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                               eos_ids=tok.eos_ids, row_keys=keys[s:s + chunk],
                               weights_version=weights_version(policy))
        responses += r
        sampler_logp += lp
    t1 = time.time()
    out = []
    for i, (prompt, response) in enumerate(zip(seqs, responses)):
        problem, text = problems[i // cfg.group_size], tok.decode(response)
        correct = reward(text, problem)
        out.append(Rollout(prompt, response, text, problem, correct, correct, response[-1] not in tok.eos_ids,
                           sampler_logp[i]))
    if cfg.overlong_penalty:
        penalty = overlong_reward_penalty(torch.tensor([len(r.response) for r in out]), cfg.max_new_tokens,
                                          overlong_cache(cfg), cfg.overlong_penalty_factor)
        for r, p in zip(out, penalty.tolist()):
            r.reward += p
    return out, t1 - t0, time.time() - t1


def collate(rollouts: list[Rollout], pad_id: int, device) -> Batch:
    """Rollouts -> one right-padded Batch."""
    B = len(rollouts)
    L = max(len(r.prompt) + len(r.response) for r in rollouts)
    T = max(len(r.response) for r in rollouts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    targets = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    sample_logp = torch.zeros(B, T)
    for i, r in enumerate(rollouts):
        ids[i, :len(r.prompt) + len(r.response)] = torch.tensor(r.prompt + r.response)
        targets[i, :len(r.response)] = torch.tensor(r.response)
        mask[i, :len(r.response)] = True
        sample_logp[i, :len(r.logprobs)] = torch.tensor(r.logprobs)
    col = lambda k: torch.tensor([getattr(r, k) for r in rollouts], device=device)
    return Batch(rollouts, ids.to(device), torch.tensor([len(r.prompt) for r in rollouts], device=device),
                 targets.to(device), mask.to(device), col("reward"), col("correct"), col("truncated"),
                 sample_logp.to(device))


@torch.no_grad()
def sample_batch(policy, tok, cfg: Config, train_set, train_ids, data_pos: int, step: int, device):
    """Rollouts of one step -> (Batch of the kept groups, every rollout drawn, new data position, info).

    Dynamic sampling (DAPO, method 1): a group whose answers are all right or all wrong
    teaches nothing, so with --dynamic-sampling keep sampling rounds of --prompts-per-step
    prompts until that many groups are mixed, at most --max-sample-tries rounds; past the cap,
    unmixed groups fill the batch. Several processes: each samples its share of a round's
    groups, then all gather the round, so every process holds the same rollouts and decides alike.
    """
    policy.eval()
    P, G = cfg.prompts_per_step, cfg.group_size
    mine = my_share(P)  # this process's groups of each round (all of them in one process)
    mixed, unmixed, drawn, t_gen, t_reward = [], [], [], 0.0, 0.0
    for tries in range(1, (cfg.max_sample_tries if cfg.dynamic_sampling else 1) + 1):
        idx = take_problems(data_pos, P, len(train_set), cfg.seed)[mine.start:mine.stop]
        data_pos += P
        keys = train_keys(cfg, step, tries, range(mine.start * G, mine.stop * G))
        with full_weights(policy):
            rollouts, tg, tr = rollout_groups(policy, tok, cfg, [train_set[j] for j in idx],
                                              [train_ids[j] for j in idx], keys)
        # the whole round on every process; its time is the slowest process's
        rollouts, (tg, tr) = processes.gather_lists(rollouts), processes.max_numbers([tg, tr])
        drawn, t_gen, t_reward = drawn + rollouts, t_gen + tg, t_reward + tr
        is_mixed = group_is_mixed(torch.tensor([r.correct for r in rollouts]), G)  # [P]
        for g in range(P):
            (mixed if is_mixed[g] else unmixed).append(rollouts[g * G:(g + 1) * G])
        if len(mixed) >= P or not cfg.dynamic_sampling:
            break
    # Without dynamic sampling the batch is the one round, in order; with it, mixed groups first.
    groups = (mixed + unmixed)[:P] if cfg.dynamic_sampling else [drawn[g * G:(g + 1) * G] for g in range(P)]
    batch = collate([r for g in groups for r in g], tok.pad_id, device)
    info = dict(ds_tries=tries, ds_mixed_groups=int(group_is_mixed(batch.correct, G).sum()), time_generate=t_gen,
                time_reward=t_reward, gen_tokens=sum(len(r.response) for r in drawn))
    return batch, drawn, data_pos, info


# ----------------------------------------------------------------------------- log-probs

def autocast(cfg: Config, device):
    """bf16 autocast on CUDA (weights and optimizer stay fp32); plain fp32 on CPU by default."""
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else None,
             "float32": None, "bfloat16": torch.bfloat16}[cfg.dtype]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def response_logprobs(policy, batch: Batch, rows: slice, cfg: Config, with_entropy=False):
    """log pi(response token) [b, T] (and entropy [b, T] or None) for the batch rows `rows`,
    at the sampling temperature, T trimmed to the longest response in these rows."""
    mask = batch.mask[rows]
    lens = mask.sum(1)                                              # [b]
    T, L = int(lens.max()), int((batch.prompt_len[rows] + lens).max())
    mask, targets = mask[:, :T], batch.targets[rows, :T]
    with autocast(cfg, batch.ids.device):  # (a group's shared prompt runs once: model.response_states)
        hidden = policy.response_states(batch.ids[rows, :L], batch.prompt_len[rows], T)  # [b, T, d]
    b_idx, t_idx = mask.nonzero(as_tuple=True)                       # the N response tokens, row-major
    h = hidden[b_idx, t_idx]                                         # [N, d]: the state that predicts each token
    # Output layer in fp32, outside autocast: ratios pi_theta / pi_old are exp(differences of
    # log-probs close to 0), and bf16 logits (8 bits of mantissa) would drown them in rounding.
    # The sampler's own log-probs are not used as pi_old either: its kernels (KV cache, other
    # batch shapes) give slightly different numbers, so the first ratio would not be exactly 1.
    logp, ent = token_logprobs(h.float() / cfg.temperature, policy.output_weight.float(),
                               targets[b_idx, t_idx], with_entropy=with_entropy)
    scatter = lambda v: v.new_zeros(mask.shape).index_put((b_idx, t_idx), v)  # [N] -> [b, T]
    return scatter(logp), (scatter(ent) if with_entropy else None)


def pi_old_from_update(cfg: Config) -> bool:
    """One PPO epoch and no reference model: the update's own forward runs under the weights that
    sampled, so it IS pi_old (detached; the ratio is exactly 1) and no separate pass is needed.
    A3PO's batch-wide selection, which needs every token's pi_old before the loss, then ranks
    by the sampler's log-probs of the same distribution (method 4). Ranking by entropy needs
    the separate pass."""
    return cfg.ppo_epochs == 1 and cfg.kl_coef == 0 and not (cfg.token_shaping and cfg.token_criterion == "entropy")


@torch.no_grad()
def old_logprobs(policy, ref_policy, batch: Batch, cfg: Config):
    """pi_old log-probs and entropies [B, T] (and the reference model's log-probs when
    kl_coef > 0), by a forward pass of the training model before the update, in the same
    micro-batches the update uses, so the first epoch's ratios are exactly 1.
    Several processes: each computes its rows, then one all-gather gives every process the
    whole [B, T] tensors, so the batch-wide token selection of method 3 is the one-process one."""
    policy.eval()
    B, T = batch.mask.shape
    mine = my_share(B)
    k = 2 if ref_policy is None else 3                               # old, entropy (, ref)
    out = torch.zeros(len(mine), k, T, device=batch.mask.device)     # [b, k, T] this rank's rows
    for s in range(mine.start, mine.stop, cfg.micro_batch_size):
        rows = slice(s, s + cfg.micro_batch_size)
        lp, e = response_logprobs(policy, batch, rows, cfg, with_entropy=True)
        r = slice(s - mine.start, s - mine.start + lp.shape[0])
        out[r, 0, :lp.shape[1]], out[r, 1, :lp.shape[1]] = lp, e
        if ref_policy is not None:
            out[r, 2, :lp.shape[1]] = response_logprobs(ref_policy, batch, rows, cfg)[0]
    processes.reshard_root(policy), processes.reshard_root(ref_policy)
    out = processes.gather_rows(out)                                 # [B, k, T]
    return out[:, 0], out[:, 1], (out[:, 2] if ref_policy is not None else None)


# ----------------------------------------------------------------------------- update

def learning_rate(step: int, cfg: Config) -> float:
    """Linear warm-up over --warmup-steps, then constant, or cosine decay toward 0 at --lr-decay-steps (0 after)."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    S = cfg.lr_decay_steps or cfg.steps  # (a run's config.json holds it resolved: see resolve_defaults)
    progress = min(1.0, (step - cfg.warmup_steps - 1) / max(1, S - cfg.warmup_steps))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def has_learning_signal(adv: torch.Tensor, loss_mask: torch.Tensor, cfg: Config) -> bool:
    """Whether the step's loss can have a gradient: a token in the loss with a non-zero advantage
    after the polarity weights (shaping only scales those), or a KL term."""
    return cfg.kl_coef > 0 or bool((polarity_weights(adv, cfg.w_pos, cfg.w_neg)[:, None] * loss_mask).any())


def zero_gradient_update(policy, optimizer, cfg: Config) -> list[dict]:
    """--ppo-epochs optimizer steps on an exactly zero gradient, without computing it: what
    ppo_update would do to the weights and the AdamW state on a batch with nothing to learn."""
    params = [p for p in policy.parameters() if p.requires_grad]
    for _ in range(cfg.ppo_epochs):
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        if weights_version(policy) is not None:
            policy.optimizer_steps += 1
    optimizer.zero_grad(set_to_none=True)
    return [dict(loss=0.0, grad_norm=0.0, skipped=False)] * cfg.ppo_epochs


MEAN_STATS = ("clipfrac_low", "clipfrac_high", "clipfrac_dual", "approx_kl", "ratio_mean", "kl_ref")


def ppo_update(policy, optimizer, batch: Batch, old_logp, token_adv, loss_mask, ref_logp, cfg: Config):
    """--ppo-epochs passes over the batch; each pass accumulates gradients over micro-batches of
    --micro-batch-size rows and takes ONE optimizer step. The loss is normalised by the whole
    batch's token / sequence counts, so the summed micro-batch gradients equal the full batch's.
    A pass whose loss or gradient norm is not finite is skipped (no optimizer step).
    old_logp None (pi_old_from_update, one epoch): pi_old is this forward's own log-probs, detached.
    Returns (one dict per epoch: the whole batch's token-weighted means, max ratio, loss, gradient
    norm before clipping, skipped; tokens processed; the forward's entropies [B, T] when it was
    pi_old, else None). Several processes: each runs its rows with the WHOLE batch's counts, and
    the gradients and logged numbers are summed over them, so all take the same step or skip it.
    """
    policy.train()
    mine = my_share(batch.mask.shape[0])
    lens = loss_mask.sum(1)
    counts = dict(num_tokens=lens.sum().clamp(min=1), num_seqs=(lens > 0).sum().clamp(min=1))
    processes.reshard_root(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    one_pass = old_logp is None
    assert not one_pass or cfg.ppo_epochs == 1, "pi_old from the update's forward needs one epoch"
    entropy = torch.zeros(len(mine), batch.mask.shape[1], device=batch.mask.device) if one_pass else None
    epochs, tokens = [], 0
    for _ in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        loss, sums, n, ratio_max = 0.0, {}, 0.0, 0.0
        for s in range(mine.start, mine.stop, cfg.micro_batch_size):
            rows = slice(s, s + cfg.micro_batch_size)
            logp, ent = response_logprobs(policy, batch, rows, cfg, with_entropy=one_pass)  # [b, T]
            T = logp.shape[1]
            if one_pass:
                entropy[s - mine.start:s - mine.start + logp.shape[0], :T] = ent.detach()
            old = logp.detach() if one_pass else old_logp[rows, :T]
            ref = None if ref_logp is None else ref_logp[rows, :T]
            mb_loss, st = policy_loss(logp, old, token_adv[rows, :T], loss_mask[rows, :T], cfg,
                                      ref_logp=ref, **counts)
            mb_loss.backward()
            loss += mb_loss.item()  # a share of the full-batch loss (normalised by the batch's counts)
            tokens += int(batch.prompt_len[rows].sum() + batch.mask[rows].sum())
            for k in MEAN_STATS:
                if k in st:
                    sums[k] = sums.get(k, 0.0) + st[k] * st["num_tokens"]
            n += st["num_tokens"]
            ratio_max = max(ratio_max, st["ratio_max"])
        processes.sum_gradients(policy, params)
        keys = list(sums)  # MEAN_STATS order, the same keys on every process
        total = processes.sum_numbers([loss, n, *(sums[k] for k in keys)])
        loss, n, sums = total[0], total[1], dict(zip(keys, total[2:]))
        ratio_max = processes.max_numbers([ratio_max])[0]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(processes.full_value(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if skipped:
            optimizer.zero_grad(set_to_none=True)  # the weights and Adam moments stay as they were
        else:
            optimizer.step()
            if weights_version(policy) is not None:
                policy.optimizer_steps += 1
        epochs.append(dict({k: v / max(n, 1.0) for k, v in sums.items()}, ratio_max=ratio_max, loss=loss,
                           grad_norm=grad_norm, skipped=skipped))
    return epochs, int(processes.sum_numbers([tokens])[0]), (processes.gather_rows(entropy) if one_pass else None)


# ----------------------------------------------------------------------------- metrics (method 6)

def batch_stats(rollouts: list[Rollout], adv: torch.Tensor) -> dict:
    """Reward, accuracy, polarity shares and lengths of a list of rollouts with their advantages [B]."""
    n = len(rollouts)
    return dict(reward=sum(r.reward for r in rollouts) / n, accuracy=sum(r.correct for r in rollouts) / n,
                frac_pos=float((adv > 0).float().mean()), frac_neg=float((adv < 0).float().mean()),
                frac_zero=float((adv == 0).float().mean()), length=sum(len(r.response) for r in rollouts) / n,
                truncated=sum(r.truncated for r in rollouts) / n)


def step_metrics(batch: Batch, adv, entropy, loss_mask, boosted_pos, boosted_neg, alphas, drawn, cfg) -> dict:
    """What the step's batch looked like: the kept batch (what the update trained on) and, with
    the suffix _drawn, every rollout sampled this step (the policy's real accuracy, before
    dynamic sampling chose groups). Entropies are of the kept batch (pi_old is computed there only)."""
    mask = batch.mask
    lengths = mask.sum(1).float()                                     # [B]
    pos, neg = adv > 0, adv < 0                                       # [B]
    mean = lambda x, m: float((x * m).sum() / m.sum()) if bool(m.any()) else float("nan")
    fraction = lambda b, m: float(b.sum() / m.sum()) if bool(m.any()) else 0.0
    drawn_adv = compute_advantages(torch.tensor([r.reward for r in drawn]), cfg.group_size, cfg,
                                   torch.tensor([r.correct for r in drawn]))
    return {
        **batch_stats(batch.rollouts, adv.cpu()),
        "length_pos": mean(lengths, pos), "length_neg": mean(lengths, neg),
        "entropy": mean(entropy, mask), "entropy_pos": mean(entropy, mask & pos[:, None]),
        "entropy_neg": mean(entropy, mask & neg[:, None]),
        "boosted_pos": fraction(boosted_pos, loss_mask & pos[:, None]),
        "boosted_neg": fraction(boosted_neg, loss_mask & neg[:, None]),
        "boosted": fraction(boosted_pos | boosted_neg, loss_mask),
        "alpha_pos": alphas[0], "alpha_neg": alphas[1],
        **{k + "_drawn": v for k, v in batch_stats(drawn, drawn_adv).items()}, "rollouts_drawn": len(drawn),
    }


def update_metrics(epochs: list[dict]) -> dict:
    """The update's numbers: the LAST epoch's under the plain names (in the first epoch the ratio
    is exactly 1, so its clip fractions and KL are 0 by construction), every epoch in per_epoch."""
    last = epochs[-1]
    out = {k: v for k, v in last.items() if k != "skipped"}
    out["nonfinite_skipped"] = sum(e["skipped"] for e in epochs)
    out["per_epoch"] = {k: [e[k] for e in epochs] for k in out if k != "nonfinite_skipped"}
    return out


# ----------------------------------------------------------------------------- evaluation

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), the chance that k of the n, drawn without replacement, hold a correct one."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@torch.no_grad()
def evaluate(policy, tok, cfg: Config, problems, prompt_ids, samples=None) -> dict:
    """Held-out accuracy: n = max(--eval-k) samples per problem at evaluation's temperature, top-p
    and token budget (cli.eval_sampling) (avg@n = mean correctness = pass@1, and unbiased
    pass@k), plus greedy accuracy. Beside the reward's strict reading: lenient_acc scores the
    same samples with the verifier's fallback (a last number counts without \\boxed{}), so a
    gain that is only the format shows as a gap;
    boxed and truncated are the shares of samples that box an answer / hit the token budget.
    samples: gets every sampled response (problem-major): problem, sample, text, length, reward,
    truncated. Several processes: each evaluates its share of the problems; counts are gathered."""
    policy.eval()
    n = max(cfg.eval_k)
    T, top_p, L = cli.eval_sampling(cfg)
    mine = my_share(len(problems))
    per_problem, mine_sampled = [], []  # counts over each problem's samples; this rank's samples
    seqs = [prompt_ids[i] for i in mine for _ in range(n)]
    keys = eval_keys(cfg, mine, n)                                   # [len(mine) * n]
    greedy, sampled = [], []
    with full_weights(policy):  # (a collective under --fsdp: every process takes part, even one without problems)
        for s in range(0, len(seqs), cfg.eval_batch_size):
            sampled += model.generate(policy, seqs[s:s + cfg.eval_batch_size], L, T, top_p, eos_ids=tok.eos_ids,
                                      row_keys=keys[s:s + cfg.eval_batch_size],
                                      weights_version=weights_version(policy))[0]
        for s in range(mine.start, mine.stop, cfg.eval_batch_size):
            greedy += model.generate(policy, prompt_ids[s:min(s + cfg.eval_batch_size, mine.stop)],
                                     L, 0.0, eos_ids=tok.eos_ids,
                                     weights_version=weights_version(policy))[0]
    for j, i in enumerate(mine):
        rs = sampled[j * n:(j + 1) * n]
        texts = [tok.decode(r) for r in rs]
        rewards = [reward(t, problems[i]) for t in texts]
        cut = [len(r) == L and r[-1] not in tok.eos_ids for r in rs]
        per_problem.append(dict(
            correct=int(sum(rewards)), lenient=sum(reward(t, problems[i], fallback=True) for t in texts),
            boxed=sum("\\boxed" in t for t in texts), truncated=sum(cut), length=sum(map(len, rs)),
            greedy=reward(tok.decode(greedy[j]), problems[i]), greedy_length=len(greedy[j])))
        if samples is not None:
            mine_sampled += [dict(problem=i, sample=k, completion=texts[k], length=len(rs[k]),
                                  reward=rewards[k], truncated=cut[k]) for k in range(n)]
    per_problem = processes.gather_lists(per_problem)
    if samples is not None:
        samples += processes.gather_lists(mine_sampled)
    P = len(per_problem)
    total = lambda key: sum(x[key] for x in per_problem)
    out = {f"avg@{n}": total("correct") / (n * P)}
    for k in sorted({1, *cfg.eval_k}):  # pass@1 always: the number the default run reports
        out[f"pass@{k}"] = sum(pass_at_k(n, x["correct"], k) for x in per_problem) / P
    out["greedy_acc"] = total("greedy") / P
    out["lenient_acc"] = total("lenient") / (n * P)
    out["boxed"] = total("boxed") / (n * P)
    out["truncated"] = total("truncated") / (n * P)
    out["length"] = total("length") / (n * P)
    out["greedy_length"] = total("greedy_length") / P
    return out


def evaluate_all(policy, tok, cfg: Config, held_out: list) -> dict:
    """Every held-out set (runs.HeldOut): {name: (evaluate's metrics, its samples, seconds)}."""
    results = {}
    for h in held_out:
        t0, samples = time.time(), []
        with runs.ticker(f"evaluating {h.name} ({len(h.problems)} problems)"):
            ev = evaluate(policy, tok, cfg, h.problems, h.ids, samples)
        results[h.name] = (ev, samples, time.time() - t0)
    return results


# ----------------------------------------------------------------------------- the run

def resolve_defaults(cfg: Config) -> Config:
    """Fill in the settings whose default depends on others, so config.json records the values
    used, and a run extended on --resume keeps its schedules' horizons."""
    if cfg.loss_agg == "token-sum-norm" and cfg.loss_agg_constant is None:  # Dr. GRPO: the generation budget
        cfg = replace(cfg, loss_agg_constant=float(cfg.max_new_tokens))
    return replace(cfg, overlong_cache=overlong_cache(cfg), alpha_decay_steps=cfg.alpha_decay_steps or cfg.steps,
                   lr_decay_steps=cfg.lr_decay_steps or cfg.steps)


def run_training(run: runs.Run) -> dict:
    """The steps, evaluations and checkpoints of a run that runs.prepare loaded. Returns
    {"before": {set: eval dict}, "after": the same or None, "run_dir", "stopped": the signal that stopped it, or None}."""
    cfg, policy, state = run.cfg, run.policy, run.state
    runs.print_start(run)
    eval_due = lambda s: s == cfg.steps or (cfg.eval_every and s % cfg.eval_every == 0)
    seconds = dict(step=[], eval=[])  # for the ETA

    def evaluate_and_log(step):
        t0 = time.time()
        results = evaluate_all(policy, run.tok, cfg, run.held_out)
        runs.log_eval(run, step, results)
        seconds["eval"].append(time.time() - t0)
        return {name: ev for name, (ev, _, _) in results.items()}

    stop, restore_signals = runs.install_stop_signals()
    t_start, saved_at = time.time(), state["step"] if state["step"] else None
    try:
        if state["eval_before"] is None:
            state["eval_before"] = state["eval_last"] = evaluate_and_log(0)
        while state["step"] < cfg.steps:
            # a signal any process saw, during a step or an evaluation: every process saves and stops here
            stop["signal"] = processes.any_signal(stop["signal"])
            if stop["signal"]:
                if saved_at != state["step"]:
                    runs.save_checkpoint(cfg.run_dir, policy, run.tok, run.optimizer, state)
                print(f"stopped after step {state['step']}; continue with: {processes.launcher()} a3po.py "
                      f"--resume {cfg.run_dir}")
                return dict(before=state["eval_before"], after=None, run_dir=cfg.run_dir, stopped=stop["signal"])
            step = state["step"] + 1
            with runs.ticker(f"step {step}/{cfg.steps}"):
                m, samples = train_step(step, policy, run.ref_policy, run.optimizer, run.tok, cfg, run.train_set,
                                        run.train_ids, state)
            state["step"] = step
            state["nonfinite_skipped"] += m["nonfinite_skipped"]
            runs.log_step(run, m, samples)
            seconds["step"].append(m["time_step"])
            evals_left = sum(map(eval_due, range(step, cfg.steps + 1)))
            print(runs.progress_line(m, cfg, runs.eta(seconds, cfg.steps - step, evals_left)), flush=True)

            if eval_due(step):
                state["eval_last"] = evaluate_and_log(step)
            if step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0):
                runs.save_checkpoint(cfg.run_dir, policy, run.tok, run.optimizer, state)
                saved_at = step
        runs.print_summary(run, time.time() - t_start)
    finally:
        restore_signals()
        runs.release(run)
    return dict(before=state["eval_before"], after=state["eval_last"], run_dir=cfg.run_dir, stopped=None)


def train(cfg: Config) -> dict:
    """The whole run: load it (runs.prepare), then train. See run_training for what it returns."""
    return run_training(runs.prepare(resolve_defaults(cfg)))


def eval_only(cfg: Config, loaded=None) -> dict:
    """--eval-only: evaluate --model (any checkpoint folder) on every held-out set; results.json
    and every sample go to the run folder. Returns {name: metrics}."""
    cfg, policy, tok, held_out = loaded or runs.prepare_eval(cfg)
    runs.print_eval_header(cfg, held_out)
    t0 = time.time()
    results = evaluate_all(policy, tok, cfg, held_out)
    runs.write_eval_results(cfg, held_out, results, time.time() - t0)
    return {name: ev for name, (ev, _, _) in results.items()}


# ----------------------------------------------------------------------------- command line

def build_parser():
    """The flags: one per Config field (cli.py), the presets' values shown next to the defaults."""
    return cli.build_parser(Config, PRESETS, prog="a3po", description=(
        "A3PO and its baselines (GRPO, DAPO, PSR, NSR, W-REINFORCE) on one CPU or GPU, or on N processes with "
        "`torchrun --nproc-per-node N a3po.py` (the same rollouts for any N). With no arguments: the a3po preset "
        "on the shipped model and synthetic task. [method N] tags name the sections of docs/method.md. A setting "
        "whose default is 'none' is off unless given; '--X none' turns it off again."))


def parse_config(argv=None) -> Config:
    """Config defaults <- --algo preset <- the flags given; with --resume RUN_DIR, the run's saved
    settings (runs.resumed_config: changing one needs --override)."""
    given = cli.parse_flags(build_parser(), Config, argv)
    if "resume" in given:
        return runs.resumed_config(Config, given)
    if given.get("data") == "search":  # the search task comes with its own model and token budget
        given = {"model": "data/search_model", "max_new_tokens": tasks.SEARCH_MAX_NEW_TOKENS, **given}
    return apply_preset(given.pop("algo", Config().algo), given)


def main(argv=None):
    """Errors in the flags, files or data print one line and exit 2; a bug keeps its traceback.
    Exit 130 / 143 after a Ctrl-C / SIGTERM (the run saved its checkpoint first).
    Under torchrun every process runs this; the process group lives from here to the end."""
    try:
        cfg = resolve_defaults(parse_config(argv))
        if threads := runs.choose_threads(cfg):
            torch.set_num_threads(threads)
        runs.check_machine(cfg)  # (before joining the process group: a bad batch split fails on every rank alike)
        processes.init_distributed(cfg.device, cfg.dist_timeout)
        loaded = runs.prepare_eval(cfg) if cfg.eval_only else runs.prepare(cfg)
    except UserError as e:  # (the loaders' file:line errors arrive as UserError: see runs.input_errors)
        processes.print_once(f"a3po: error: {e}", file=sys.stderr)
        processes.shutdown_distributed()
        raise SystemExit(2)
    try:
        if cfg.eval_only:
            return eval_only(cfg, loaded)
        try:
            result = run_training(loaded)
        except KeyboardInterrupt:
            print("\naborted (the last checkpoint, if any, is intact)")
            raise SystemExit(130)
    finally:
        runs.stop_copying_console()
        processes.shutdown_distributed()
    if result["stopped"]:
        raise SystemExit(128 + result["stopped"])
    return result


if __name__ == "__main__":
    main()

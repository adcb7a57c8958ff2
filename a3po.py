"""A3PO: Adaptive and Asymmetric token-level advantage shaping for Policy Optimization.

A from-scratch, single-file reference of "Rethinking Sample Polarity in Reinforcement
Learning with Verifiable Rewards" (arXiv 2512.21625). See ../shared/A3PO_SPEC.md.
"""

# ============================== MATH (spec sections 1-4, 7) ==============================
# The algorithm, in the order it runs on one batch:
#   Config / PRESETS            which variant (A3PO or a baseline) and its constants
#   compute_advantages          rewards [B] -> one advantage per response        (spec 1, 2)
#   shape_advantages            advantage [B] -> one advantage per token [B, T]  (spec 2, 3)
#   token_logprobs              hidden states -> log pi(token), entropy          (spec 7)
#   policy_loss                 clipped surrogate + optional KL, aggregated      (spec 4)
# Shapes: B responses (= prompts * group_size), T response tokens (right-padded, `mask`
# marks real tokens, the EOS that ended a response included), N = B*T flattened rows,
# d hidden size, V vocabulary size.
import math
from dataclasses import dataclass, fields, replace

import torch

# ----------------------------------------------------------------------------- config

ADV_NORMS = ("std", "none", "raw")
RAW_ADVS = ("psr", "nsr", "w-reinforce")
ALPHA_SCHEDULES = ("linear", "cosine", "constant")
TOKEN_CRITERIA = ("prob", "entropy")
TAILS = ("low", "high")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum-norm")


@dataclass
class Config:
    # Defaults below are the a3po preset (spec section 5), so Config() is A3PO.
    # "spec" = the value A3PO_SPEC.md gives (it restates the paper / DAPO / GRPO; the paper's
    # own constants were not available, so these are the spec's choices); "ours" = the spec
    # left it open and this file chose.
    algo: str = "a3po"              # preset the values came from: grpo dapo psr nsr w-reinforce a3po
    # --- spec 1: group-relative advantage
    adv_norm: str = "std"           # spec. std: (R-mean)/(std+eps); none: R-mean (Dr. GRPO); raw: see raw_adv
    adv_eps: float = 1e-6           # ours (spec writes "eps"): keeps (R-mean)/std finite for near-equal rewards
    raw_adv: str = "psr"            # ours (only read when adv_norm=raw): psr A=R | nsr A=R-1 | w-reinforce A=lambda/-1
    wreinforce_lambda: float = 0.1  # spec (Zhu et al. 2025): weight of correct answers in W-REINFORCE
    # --- spec 2: polarity-level weights
    w_pos: float = 1.0              # spec: A~ = w_pos * A for A > 0
    w_neg: float = 1.0              # spec: A~ = w_neg * A for A < 0
    # --- spec 3: asymmetric, adaptive token-level shaping (the A3PO part)
    token_shaping: bool = True      # spec (a3po preset on; every other preset off)
    rho_pos: float = 0.2            # spec: fraction of positive-sample tokens boosted
    rho_neg: float = 0.2            # spec: fraction of negative-sample tokens boosted
    alpha0_pos: float = 2.0         # spec: boost factor at step 0, positive samples
    alpha0_neg: float = 2.0         # spec: boost factor at step 0, negative samples
    alpha_schedule: str = "linear"  # spec: linear | cosine | constant
    alpha_decay_steps: int | None = None  # spec: S_decay; None = total training steps S
    token_criterion: str = "prob"   # spec: rank tokens by pi_old prob, or by pi_old entropy (analysis)
    pos_tail: str = "low"           # spec: boost the LOW-prob tokens of positive samples
    neg_tail: str = "high"          # spec: boost the HIGH-prob tokens of negative samples
    # --- spec 4: objective
    eps_low: float = 0.2            # spec: ratio clipped below at 1 - eps_low
    eps_high: float = 0.28          # spec: clip-higher (DAPO): ratio clipped above at 1 + eps_high
    clip_c: float | None = None     # spec: dual-clip bound for A < 0 (verl's clip_ratio_c, e.g. 3.0); None = off
    loss_agg: str = "token-mean"    # spec: token-mean | seq-mean-token-mean | seq-mean-token-sum | token-sum-norm
    # token-sum-norm (Dr. GRPO) divides each response's token SUM by this constant instead of
    # by its own length. Use the generation limit (max new tokens): then a full-length response
    # weighs like token-mean and short ones are not up-weighted. None = the trainer fills it in
    # with its max response length (policy_loss refuses token-sum-norm without it). Ours.
    loss_agg_constant: float | None = None
    kl_coef: float = 0.0            # spec: beta of the k3 KL to a reference model (0: none loaded)
    overlong_filter: bool = False   # spec (DAPO): truncated responses get zero loss weight
    overlong_penalty: bool = False  # spec (DAPO): soft length penalty added to the reward
    overlong_cache: int = 64        # ours (DAPO used 4096 of 20480): penalty ramps over the last `cache` tokens
    overlong_penalty_factor: float = 1.0  # DAPO: penalty at the limit is -factor
    dynamic_sampling: bool = True   # spec (DAPO): drop all-equal-reward groups, sample more prompts
    # ----- trainer fields (owned by helper TRAINER; added below this line) -----
    # Checked by check_config in the TRAINER section; their comments are the --help lines.
    # --- trainer: model and data
    model: str = "data/default_model"  # HF model folder to train (relative paths are also looked up next to a3po.py)
    data: str = "synthetic"            # training problems: 'synthetic' (our arithmetic task) or a JSONL file
    data_format: str = "auto"          # format of --data / --eval-data: auto | gsm8k | math | generic
    prompt_key: str | None = None      # generic JSONL: the key holding the question
    answer_key: str | None = None      # generic JSONL: the key holding the gold answer
    template: str = "boxed"            # prompt template: boxed (step by step, answer in \boxed{}) | plain
    synthetic_level: int = 3           # difficulty of the synthetic task, 1 (easiest) to 5
    train_size: int = 20000            # synthetic training problems generated (a --data file uses all its lines)
    # --- spec 1 (trainer): rollouts
    steps: int = 40                    # training steps S; each samples one batch of rollouts
    prompts_per_step: int = 16         # prompts per step (groups in the batch)
    group_size: int = 8                # G: responses sampled per prompt
    max_new_tokens: int = 64           # response length limit (also the overlong limit of spec 4)
    temperature: float = 1.0           # sampling temperature; training log-probs use the same (hidden / T)
    top_p: float = 1.0                 # nucleus sampling threshold
    max_sample_tries: int = 4          # dynamic sampling: at most this many rounds of --prompts-per-step prompts a step
    gen_batch_size: int = 0            # sequences per generate() call (0 = the whole batch at once)
    # --- spec 4 (trainer): optimisation
    ppo_epochs: int = 2                # passes over each batch; one optimizer step per pass
    minibatch_size: int = 32           # responses per forward/backward; gradients accumulate over the whole batch
    lr: float = 1e-4                   # AdamW peak learning rate
    warmup_steps: int = 2              # linear learning-rate warm-up steps
    lr_schedule: str = "constant"      # after warm-up: constant | cosine
    weight_decay: float = 0.0          # AdamW weight decay
    grad_clip: float = 1.0             # max gradient norm (0 = no clipping)
    grad_checkpointing: bool = False   # recompute each block in backward: less memory, more time
    # --- trainer: evaluation, logging, checkpoints
    eval_data: str | None = None       # held-out JSONL (default: synthetic test split, or the last --eval-size of --data)
    eval_size: int = 200               # held-out problems evaluated (at most)
    eval_k: tuple[int, ...] = (1, 8)   # report pass@k for each k; max(k) samples per problem at --temperature
    eval_every: int = 0                # also evaluate every N steps (0 = only before and after training)
    eval_batch_size: int = 256         # sequences per generate() call during evaluation
    log_samples: int = 4               # responses per step written to samples.jsonl (one per group)
    save_every: int = 0                # also checkpoint every N steps (0 = only at the end and on Ctrl-C)
    run_dir: str | None = None         # output folder (default runs/<algo>-<date>-<time>)
    resume: str | None = None          # continue the run in this folder from its checkpoint, exactly
    eval_only: bool = False            # only evaluate --model (any checkpoint folder) and exit
    seed: int = 0                      # seeds data order and sampling (the task itself is fixed)
    device: str = "auto"               # cpu | cuda | cuda:N (auto = cuda when available)
    dtype: str = "auto"                # compute dtype: auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16
    threads: int = 0                   # CPU threads for torch (0 = torch's default); 1 is faster for tiny models on a busy machine

    def __post_init__(self):
        # Bad flags fail here, before any compute, with the field's name.
        def choice(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Config.{name}={getattr(self, name)!r}: must be one of {allowed}")
        choice("algo", tuple(PRESETS))
        choice("adv_norm", ADV_NORMS)
        choice("raw_adv", RAW_ADVS)
        choice("alpha_schedule", ALPHA_SCHEDULES)
        choice("token_criterion", TOKEN_CRITERIA)
        choice("pos_tail", TAILS)
        choice("neg_tail", TAILS)
        choice("loss_agg", LOSS_AGGS)
        for name in ("rho_pos", "rho_neg"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Config.{name}={getattr(self, name)}: must be in [0, 1]")
        for name in ("eps_low", "eps_high", "kl_coef", "adv_eps", "w_pos", "w_neg", "wreinforce_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"Config.{name}={getattr(self, name)}: must be >= 0")
        if self.eps_low >= 1:
            raise ValueError(f"Config.eps_low={self.eps_low}: must be < 1 (ratio floor 1-eps_low > 0)")
        if self.clip_c is not None and self.clip_c <= 1:
            raise ValueError(f"Config.clip_c={self.clip_c}: the dual-clip bound must be > 1 (or None)")
        if self.alpha_decay_steps is not None and self.alpha_decay_steps <= 0:
            raise ValueError(f"Config.alpha_decay_steps={self.alpha_decay_steps}: must be > 0 (or None)")
        if self.loss_agg_constant is not None and self.loss_agg_constant <= 0:
            raise ValueError(f"Config.loss_agg_constant={self.loss_agg_constant}: must be > 0")
        if self.overlong_cache < 0:
            raise ValueError(f"Config.overlong_cache={self.overlong_cache}: must be >= 0")


# Spec section 5. Each preset sets every column of the spec's table, so applying it on top of
# any Config gives the same algorithm.
# PSR / NSR / W-REINFORCE use RAW rewards (Zhu et al.): adv_norm=raw with raw_adv psr (A=R),
# nsr (A=R-1), w-reinforce (A=lambda if correct, -1 if wrong). Their w_pos/w_neg zeros are
# then redundant (A=R is never < 0, A=R-1 never > 0) but document intent. The other variant,
# masking one polarity of group-normalised advantages, is the same preset with
# adv_norm="std" (e.g. `--algo psr --adv-norm std` keeps w_neg=0).
# W-REINFORCE: the table's "w_pos 0.1" is lambda. It is applied ONCE, in the raw mapping
# (wreinforce_lambda=0.1), so w_pos stays 1; setting w_pos=0.1 as well would give 0.01.
_STD_TABLE = dict(adv_norm="std", raw_adv="psr")
PRESETS: dict[str, dict] = {
    "grpo": dict(**_STD_TABLE, w_pos=1.0, w_neg=1.0, token_shaping=False, eps_low=0.2, eps_high=0.2,
                 loss_agg="seq-mean-token-mean", dynamic_sampling=False),
    "dapo": dict(**_STD_TABLE, w_pos=1.0, w_neg=1.0, token_shaping=False, eps_low=0.2, eps_high=0.28,
                 loss_agg="token-mean", dynamic_sampling=True),
    "psr": dict(adv_norm="raw", raw_adv="psr", w_pos=1.0, w_neg=0.0, token_shaping=False,
                eps_low=0.2, eps_high=0.28, loss_agg="token-mean", dynamic_sampling=False),
    "nsr": dict(adv_norm="raw", raw_adv="nsr", w_pos=0.0, w_neg=1.0, token_shaping=False,
                eps_low=0.2, eps_high=0.28, loss_agg="token-mean", dynamic_sampling=False),
    "w-reinforce": dict(adv_norm="raw", raw_adv="w-reinforce", wreinforce_lambda=0.1, w_pos=1.0, w_neg=1.0,
                        token_shaping=False, eps_low=0.2, eps_high=0.28, loss_agg="token-mean",
                        dynamic_sampling=False),
    "a3po": dict(**_STD_TABLE, w_pos=1.0, w_neg=1.0, token_shaping=True, eps_low=0.2, eps_high=0.28,
                 loss_agg="token-mean", dynamic_sampling=True),
}


def apply_preset(base: "str | Config", overrides: dict | None = None) -> Config:
    """Config for a preset: (Config defaults or `base`'s fields) <- PRESETS[algo] <- overrides.

    base: a preset name, or a Config whose .algo names the preset (its other fields, e.g.
    the trainer's, are kept unless the preset sets them). overrides: ONLY the flags the user
    gave explicitly (e.g. argparse flags whose value is not None); they win over the preset.
    """
    overrides = dict(overrides or {})
    cfg = Config() if isinstance(base, str) else base
    algo = overrides.pop("algo", base if isinstance(base, str) else base.algo)
    if algo not in PRESETS:
        raise ValueError(f"unknown preset {algo!r}: choose one of {tuple(PRESETS)}")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown Config field(s) {unknown}")
    return replace(cfg, **{**PRESETS[algo], **overrides, "algo": algo})  # replace re-runs the checks


def _check(ok: bool, msg: str):
    if not ok:
        raise ValueError(msg)


# ------------------------------------------------------- rewards -> advantages (spec 1, 2)

def overlong_reward_penalty(lengths: torch.Tensor, max_len: int, cache: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the verifier reward. lengths [B] -> [B] (<= 0).

    0 up to max_len - cache tokens, then a linear ramp down to -factor at max_len (and
    beyond), so a response is told it is getting long before it is cut off.
    """
    _check(cache >= 0 and max_len > 0, f"overlong penalty: need max_len > 0, cache >= 0 (got {max_len}, {cache})")
    over = lengths.double() - (max_len - cache)                      # [B] tokens into the cache zone
    ramp = over / cache if cache > 0 else (over > 0).double()       # cache 0: only past max_len
    return (-factor * ramp.clamp(0, 1)).float()


def reward_to_raw_advantage(rewards: torch.Tensor, kind: str, wreinforce_lambda: float = 0.1) -> torch.Tensor:
    """Raw-reward advantages of the polarity baselines (spec 2, Zhu et al.). rewards [B] -> [B].

    psr: A = R (only correct answers move the model); nsr: A = R - 1 (only wrong ones);
    w-reinforce: A = lambda * R for R > 0 (lambda for a correct answer), R - 1 otherwise (-1).
    No group mean, no std: each answer is judged alone.
    """
    r = rewards.float()
    if kind == "psr":
        return r.clone()
    if kind == "nsr":
        return r - 1
    if kind == "w-reinforce":
        return torch.where(r > 0, wreinforce_lambda * r, r - 1)
    raise ValueError(f"raw advantage kind {kind!r}: must be one of {RAW_ADVS}")


def group_advantages(rewards: torch.Tensor, group_size: int, norm: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """GRPO group-relative advantages (spec 1). rewards [B], groups are consecutive -> adv [B].

    std : (R - mean) / (std + eps), std = SAMPLE std (unbiased, divides by G-1) like
          torch.std and the usual GRPO implementations (TRL, verl). A group of 1 has A = 0.
    none: R - mean (Dr. GRPO: no division, so easy/hard prompts are not re-weighted).
    raw : rewards as given (the caller mapped them with reward_to_raw_advantage).
    A group whose rewards are all equal gets EXACTLY 0 (float means can miss by an ulp).
    """
    _check(rewards.dim() == 1, f"group_advantages: rewards must be [B], got shape {tuple(rewards.shape)}")
    _check(group_size >= 1 and rewards.numel() % group_size == 0,
           f"group_advantages: batch of {rewards.numel()} rewards is not divisible by group_size={group_size}")
    _check(bool(torch.isfinite(rewards).all()), "group_advantages: rewards contain NaN/inf")
    if norm == "raw":
        return rewards.float().clone()
    _check(norm in ("std", "none"), f"group_advantages: norm={norm!r} must be one of {ADV_NORMS}")
    r = rewards.double().reshape(-1, group_size)                      # [B/G, G]
    adv = r - r.mean(dim=1, keepdim=True)                             # [B/G, G]
    if norm == "std":
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        adv = adv / (std + eps)
    same = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)  # [B/G, 1] nothing to learn
    adv = adv.masked_fill(same, 0.0)
    return adv.view(-1).float()


def group_is_mixed(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards [B] -> [B/G] bool: the group has at least two different rewards.
    Dynamic sampling (DAPO) keeps only these groups: the others have A = 0 everywhere."""
    r = rewards.reshape(-1, group_size)                              # [B/G, G]
    return r.amax(dim=1) != r.amin(dim=1)


def compute_advantages(rewards: torch.Tensor, group_size: int, cfg: Config) -> torch.Tensor:
    """rewards [B] -> advantage per response [B], per cfg.adv_norm (raw: mapped per cfg.raw_adv)."""
    if cfg.adv_norm == "raw":
        group_advantages(rewards, group_size, "raw")                  # same shape checks
        return reward_to_raw_advantage(rewards, cfg.raw_adv, cfg.wreinforce_lambda)
    return group_advantages(rewards, group_size, cfg.adv_norm, cfg.adv_eps)


def polarity_weights(adv: torch.Tensor, w_pos: float, w_neg: float) -> torch.Tensor:
    """Sample-level polarity shaping (spec 2). adv [B] -> A~ [B]: w_pos*A if A>0, w_neg*A if A<0."""
    return torch.where(adv > 0, w_pos * adv, torch.where(adv < 0, w_neg * adv, torch.zeros_like(adv)))


# ------------------------------------------------ token-level shaping, the A3PO part (spec 3)

def alpha_schedule(alpha0: float, step: int, decay_steps: int, kind: str) -> float:
    """Boost factor at optimizer step s: alpha(s) = 1 + (alpha0 - 1) * f(s).

    linear  : f = 1 - min(s/S, 1)
    cosine  : f = 0.5 * (1 + cos(pi * min(s/S, 1)))
    constant: f = 1
    f(0) = 1 (full boost, when exploration matters most) and f(S) = 0 (plain advantages) for
    linear and cosine; after S the boost stays off.
    """
    _check(step >= 0, f"alpha_schedule: step={step} must be >= 0")
    if kind == "constant":
        return float(alpha0)
    _check(kind in ALPHA_SCHEDULES, f"alpha_schedule: kind={kind!r} must be one of {ALPHA_SCHEDULES}")
    _check(decay_steps is not None and decay_steps > 0, f"alpha_schedule: decay_steps={decay_steps} must be > 0")
    x = min(step / decay_steps, 1.0)
    f = 1.0 - x if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * x))
    return 1.0 + (alpha0 - 1.0) * f


def boost_count(rho: float, n: int) -> int:
    """How many of n candidate tokens a fraction rho boosts: ceil(rho * n).

    ceil, so any polarity with tokens and rho > 0 boosts at least one (a batch with a
    single short positive answer still gets its rarest token boosted). The 1e-9 absorbs
    float noise: 0.2 * 15 = 3.0000000000000004 must give 3, not 4.
    """
    return max(0, min(n, math.ceil(rho * n - 1e-9)))


def select_tail(values: torch.Tensor, candidates: torch.Tensor, rho: float, tail: str) -> torch.Tensor:
    """Mark the lowest/highest rho fraction of `values` among `candidates` (batch-wide).

    values [B, T] float, candidates [B, T] bool -> selected [B, T] bool (a subset of candidates).
    Ties are broken deterministically: among equal values, the earlier token in row-major
    (sample, position) order is selected first (stable sort by value, then flat index).
    """
    flat_idx = candidates.flatten().nonzero().squeeze(1)             # [n] ascending positions
    k = boost_count(rho, flat_idx.numel())
    selected = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
    if k > 0:
        v = values.flatten()[flat_idx]                               # [n]
        key = v if tail == "low" else -v                             # always take the k smallest keys
        order = torch.sort(key, stable=True).indices                 # stable: ties keep index order
        selected[flat_idx[order[:k]]] = True
    return selected.view_as(candidates)


def shape_advantages(adv: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, step: int,
                     total_steps: int, cfg: Config, entropy: torch.Tensor | None = None):
    """Per-token advantages A^ [B, T] (spec 2 + 3) and which tokens were boosted.

    adv [B]: sample advantages; old_logp [B, T]: log pi_old of each response token;
    mask [B, T]: real response tokens; entropy [B, T]: pi_old entropy (token_criterion=entropy).
    Returns (token_adv [B, T] float32, zero on padding; boosted_pos [B, T] bool; boosted_neg [B, T] bool).

    Selection is over the WHOLE batch (all tokens of all positive samples compete), so call
    this once per batch, before splitting into minibatches. Polarity is the sign of adv
    (spec 1); w_pos/w_neg only scale. Ranking by log p gives the same order as ranking by p.
    """
    B, T = old_logp.shape
    _check(adv.shape == (B,), f"shape_advantages: adv must be [{B}], got {tuple(adv.shape)}")
    _check(mask.shape == (B, T), f"shape_advantages: mask must be [{B}, {T}], got {tuple(mask.shape)}")
    mask = mask.bool()
    a_tilde = polarity_weights(adv.float(), cfg.w_pos, cfg.w_neg)    # [B]
    token_adv = a_tilde[:, None].expand(B, T) * mask                 # [B, T], 0 on padding
    no_boost = torch.zeros(B, T, dtype=torch.bool, device=mask.device)
    if not cfg.token_shaping:
        return token_adv, no_boost, no_boost.clone()

    if cfg.token_criterion == "prob":
        values = old_logp
    else:
        _check(entropy is not None, "shape_advantages: token_criterion='entropy' needs the entropy [B, T] tensor")
        _check(entropy.shape == (B, T), f"shape_advantages: entropy must be [{B}, {T}], got {tuple(entropy.shape)}")
        values = entropy
    _check(bool(torch.isfinite(values[mask]).all()),
           f"shape_advantages: {'old_logp' if cfg.token_criterion == 'prob' else 'entropy'} has NaN/inf on response tokens")

    pos_tokens = mask & (adv > 0)[:, None]                           # [B, T]
    neg_tokens = mask & (adv < 0)[:, None]                           # [B, T]
    boosted_pos = select_tail(values, pos_tokens, cfg.rho_pos, cfg.pos_tail)
    boosted_neg = select_tail(values, neg_tokens, cfg.rho_neg, cfg.neg_tail)

    S = cfg.alpha_decay_steps or total_steps
    alpha_pos = alpha_schedule(cfg.alpha0_pos, step, S, cfg.alpha_schedule)
    alpha_neg = alpha_schedule(cfg.alpha0_neg, step, S, cfg.alpha_schedule)
    scale = torch.ones(B, T, device=mask.device)
    scale[boosted_pos] = alpha_pos
    scale[boosted_neg] = alpha_neg
    return token_adv * scale, boosted_pos, boosted_neg


# ---------------------------------------------- log-probs without full logits (spec 7)

def _compute_dtype(*tensors) -> torch.dtype:
    # fp32 for fp32/bf16/fp16 inputs (log-probs of a 150k vocabulary need fp32 logits);
    # float64 inputs stay float64 so torch.autograd.gradcheck can check this function.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class ChunkedTokenLogprobs(torch.autograd.Function):
    """log p(target) and entropy of softmax(h W^T), chunk_size rows of logits at a time.

    Forward saves only the inputs plus two numbers per row (logsumexp, entropy); backward
    recomputes each chunk's logits. So peak extra memory is O(chunk_size * V), never N * V.
    With z = logits of one row, q = softmax(z), H = -sum_j q_j log q_j:
        d logp / d z_j = onehot_j - q_j
        d H    / d z_j = -q_j (log q_j + H)          (= -q_j (z_j - sum_k q_k z_k))
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, with_entropy):
        ctx.set_materialize_grads(False)  # an unused output (e.g. entropy) gives g=None: skip its term
        cdtype = _compute_dtype(hidden, weight)
        N = hidden.shape[0]
        logp = torch.empty(N, dtype=cdtype, device=hidden.device)    # [N]
        lse = torch.empty(N, dtype=cdtype, device=hidden.device)     # [N] saved for backward
        ent = torch.empty(N, dtype=cdtype, device=hidden.device) if with_entropy else None
        # autocast off: under bf16 autocast the matmul would round logits to bf16.
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdtype)                                    # [V, d] (no copy when fp32)
            for s in range(0, N, chunk_size):
                e = min(s + chunk_size, N)
                logits = hidden[s:e].to(cdtype) @ w.T               # [c, V]
                lse[s:e] = torch.logsumexp(logits, dim=-1)
                logq = logits.sub_(lse[s:e, None])                  # [c, V] log softmax, in place
                logp[s:e] = logq.gather(1, targets[s:e, None]).squeeze(1)
                if with_entropy:
                    q = logq.exp()                                  # [c, V]
                    ent[s:e] = -(q.mul_(logq)).sum(dim=-1)          # H = -sum q log q
                    del q
                del logits, logq  # free this chunk's [c, V] before the next one allocates (else 2x peak)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(hidden, weight, targets, lse, ent)
        return logp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return None, None, None, None, None
        cdtype, N, c = lse.dtype, hidden.shape[0], ctx.chunk_size
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdtype)                                    # [V, d]
            dh = torch.empty(hidden.shape, dtype=cdtype, device=hidden.device) if need_h else None  # [N, d]
            dw = torch.zeros(w.shape, dtype=cdtype, device=w.device) if need_w else None            # [V, d]
            for s in range(0, N, c):
                e = min(s + c, N)
                h = hidden[s:e].to(cdtype)                           # [c, d]
                logq = (h @ w.T).sub_(lse[s:e, None])                # [c, V] recomputed log softmax
                # dlogits = g_logp * (onehot - q) + g_ent * (-q (logq + H))
                #         = q * (a + b * logq) + g_logp * onehot,  a = -g_logp - g_ent * H,  b = -g_ent
                # built in place (few passes over [c, V]: this loop is memory-bound next to the matmuls)
                gl = g_logp[s:e, None].to(cdtype) if g_logp is not None else None   # [c, 1]
                if g_ent is None:
                    q, dlogits = None, logq.exp_().mul_(-gl)         # [c, V], no second buffer
                else:
                    ge = g_ent[s:e, None].to(cdtype)                 # [c, 1]
                    a = -ge * ent[s:e, None] - (gl if gl is not None else 0)
                    q = logq.exp()                                   # [c, V]
                    dlogits = logq.mul_(-ge).add_(a).mul_(q)         # [c, V]
                if gl is not None:
                    dlogits.scatter_add_(1, targets[s:e, None], gl)
                if need_h:
                    torch.mm(dlogits, w, out=dh[s:e])                # [c, d] = [c, V] @ [V, d]
                if need_w:
                    dw.addmm_(dlogits.T, h)                          # [V, d] += [V, c] @ [c, d]
                del logq, dlogits, q  # free this chunk's [c, V] buffers before the next chunk's
        return (dh.to(hidden.dtype) if need_h else None, dw.to(weight.dtype) if need_w else None,
                None, None, None)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   chunk_size: int = 1024, with_entropy: bool = True):
    """Per-token log-probs (and entropies) of the output layer, without [N, V] logits.

    hidden [N, d] (final-normed hidden states, any float dtype; divide by the sampling
    temperature first), weight [V, d] (lm head), targets [N] token ids.
    Returns (logp [N], entropy [N] or None), float32 (float64 for float64 inputs),
    differentiable w.r.t. hidden and weight; gradients come back in the inputs' dtypes.
    """
    _check(hidden.dim() == 2, f"token_logprobs: hidden must be [N, d], got shape {tuple(hidden.shape)}")
    _check(weight.dim() == 2 and weight.shape[1] == hidden.shape[1],
           f"token_logprobs: weight must be [V, {hidden.shape[1]}], got shape {tuple(weight.shape)}")
    _check(targets.shape == (hidden.shape[0],),
           f"token_logprobs: targets must be [{hidden.shape[0]}], got shape {tuple(targets.shape)}")
    _check(not targets.is_floating_point(), f"token_logprobs: targets must be integer ids, got {targets.dtype}")
    _check(int(chunk_size) >= 1, f"token_logprobs: chunk_size={chunk_size} must be >= 1")
    _check(hidden.is_floating_point() and weight.is_floating_point(), "token_logprobs: hidden/weight must be float")
    if targets.numel() > 0:  # out-of-range ids would be a device-side assert on CUDA
        lo, hi = int(targets.min()), int(targets.max())
        _check(lo >= 0 and hi < weight.shape[0],
               f"token_logprobs: target ids span [{lo}, {hi}], outside the vocabulary [0, {weight.shape[0]})")
    return ChunkedTokenLogprobs.apply(hidden, weight, targets.long(), int(chunk_size), bool(with_entropy))


# ---------------------------------------------------------------- objective (spec 4)

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
        _check(constant is not None, "loss_agg=token-sum-norm needs Config.loss_agg_constant (e.g. max_new_tokens)")
        return x.sum() / (num_seqs * constant)
    raise ValueError(f"loss_agg={mode!r}: must be one of {LOSS_AGGS}")


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
    for name, t in (("old_logp", old_logp), ("token_adv", token_adv), ("mask", mask), ("ref_logp", ref_logp)):
        _check(t is None or t.shape == (B, T), f"policy_loss: {name} must be [{B}, {T}], got {None if t is None else tuple(t.shape)}")
    _check(cfg.kl_coef == 0 or ref_logp is not None, "policy_loss: kl_coef > 0 needs ref_logp")
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


# ============================== TRAINER (rollouts, steps, eval, checkpoints, CLI) =========
# One process, CPU or one CUDA GPU. `train` runs one step in this order:
#   sample_batch       prompts -> group_size responses each (model.generate), rewards
#                      (verifier.score + overlong penalty), dynamic sampling        (spec 1, 4)
#   response_logprobs  old log-probs / entropies of pi_old from the training model  (spec 4, 7)
#   compute_advantages, shape_advantages (MATH section above)                        (spec 1-3)
#   ppo_update         --ppo-epochs passes of minibatches, accumulated, AdamW step   (spec 4)
#   evaluate           avg@k, pass@k, greedy accuracy on held-out problems
#   save_checkpoint    HF model folder + optimizer + trainer state, atomic
# then the command line (`python a3po.py --help`).
import argparse
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import re
import shutil
import signal
import threading
import time
import typing

import model
import verifier
from data import tasks

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- data

def resolve_model_path(path: str) -> str:
    """A relative --model that is not found from the working directory is looked up next to
    a3po.py, so the default `data/default_model` works from anywhere."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    here = os.path.join(REPO_DIR, path)
    return here if os.path.exists(here) else path


def load_data(cfg: Config):
    """-> (train problems, held-out problems). Bad files fail here, naming file:line."""
    fmt = dict(fmt=cfg.data_format, prompt_key=cfg.prompt_key, answer_key=cfg.answer_key)
    held_out = None
    if cfg.data == "synthetic":
        # The task itself is fixed (seed 0): --seed changes only the training randomness, so
        # runs with different seeds are compared on the same held-out problems.
        train = tasks.synthetic_problems(cfg.train_size, 0, "train", cfg.synthetic_level)
        if not cfg.eval_data:
            held_out = tasks.synthetic_problems(cfg.eval_size, 0, "test", cfg.synthetic_level)
    else:
        train = tasks.load_problems(cfg.data, **fmt)
        if not cfg.eval_data:  # hold out the tail of the file (never trained on)
            if len(train) < 2 * cfg.eval_size:
                raise ValueError(f"{cfg.data}: {len(train)} problems is too few to hold out "
                                 f"--eval-size {cfg.eval_size}; pass --eval-data or a smaller --eval-size")
            train, held_out = train[:-cfg.eval_size], train[-cfg.eval_size:]
    if cfg.eval_data:
        held_out = tasks.load_problems(cfg.eval_data, **fmt)[:cfg.eval_size]
    return train, held_out


def encode_prompts(problems, tok, cfg: Config, context: int, where: str) -> list[list[int]]:
    """Prompt ids of each problem; a prompt that cannot fit its answer in the context
    (the model's max_position_embeddings) is an error."""
    ids = [tasks.build_prompt(p.prompt, tok, cfg.template) for p in problems]
    for i, p in enumerate(ids):
        if len(p) + cfg.max_new_tokens > context:
            raise ValueError(f"{where}: problem {i + 1}: prompt of {len(p)} tokens + --max-new-tokens "
                             f"{cfg.max_new_tokens} exceeds the model's context of {context} tokens")
    return ids


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # Data order is a pure function of (seed, epoch), so a resumed run only needs the position.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def take_problems(pos: int, k: int, n: int, seed: int) -> list[int]:
    """Problem indices at positions pos .. pos+k-1 of an endless, reshuffled-each-epoch stream."""
    return [epoch_order(n, seed, p // n)[p % n] for p in range(pos, pos + k)]


# ----------------------------------------------------------------------------- rollouts

@dataclasses.dataclass
class Batch:  # one step's rollouts: B = prompts_per_step * group_size rows, groups consecutive
    ids: torch.Tensor         # [B, L] prompt + response, RIGHT-padded with pad_id (causal: no mask needed)
    prompt_len: torch.Tensor  # [B]
    targets: torch.Tensor     # [B, T] response tokens, left-aligned, 0 on padding
    mask: torch.Tensor        # [B, T] bool, response tokens incl. the EOS that ended it
    reward: torch.Tensor      # [B] verifier score + overlong penalty
    correct: torch.Tensor     # [B] verifier score (1 / 0)
    truncated: torch.Tensor   # [B] bool: stopped by --max-new-tokens, no EOS
    questions: list           # [B] problem text
    golds: list               # [B] gold answers
    texts: list               # [B] decoded responses


def generate_groups(policy, tok, cfg: Config, prompts: list[list[int]], generator) -> list[list[int]]:
    """P prompts -> P * group_size responses; rows g*G .. g*G+G-1 answer prompt g."""
    seqs = [p for p in prompts for _ in range(cfg.group_size)]
    chunk = cfg.gen_batch_size or len(seqs)
    out = []
    for s in range(0, len(seqs), chunk):
        out += model.generate(policy, seqs[s:s + chunk], cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                              eos_ids=tok.eos_ids, generator=generator)[0]
    return out


def score_responses(responses, golds, tok, cfg: Config):
    """-> texts, correct [B], truncated [B], reward [B] (spec 4: DAPO's soft overlong penalty)."""
    texts = [tok.decode(r) for r in responses]
    correct = torch.tensor([verifier.score(t, g) for t, g in zip(texts, golds)], dtype=torch.float32)
    truncated = torch.tensor([r[-1] not in tok.eos_ids for r in responses])
    reward = correct.clone()
    if cfg.overlong_penalty:
        lengths = torch.tensor([len(r) for r in responses])
        reward += overlong_reward_penalty(lengths, cfg.max_new_tokens, cfg.overlong_cache, cfg.overlong_penalty_factor)
    return texts, correct, truncated, reward


def collate(groups, pad_id: int, device) -> Batch:
    """List of groups (dicts of per-response lists) -> one right-padded Batch."""
    rows = [{k: g[k][i] for k in g} for g in groups for i in range(len(g["response"]))]
    B = len(rows)
    L = max(len(r["prompt"]) + len(r["response"]) for r in rows)
    T = max(len(r["response"]) for r in rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    targets = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, r in enumerate(rows):
        p, o = r["prompt"], r["response"]
        ids[i, :len(p) + len(o)] = torch.tensor(p + o)
        targets[i, :len(o)] = torch.tensor(o)
        mask[i, :len(o)] = True
    col = lambda k: torch.tensor([r[k] for r in rows])
    return Batch(ids.to(device), col("prompt_len").to(device), targets.to(device), mask.to(device),
                 col("reward").to(device), col("correct").to(device), col("truncated").to(device),
                 [r["question"] for r in rows], [r["gold"] for r in rows], [r["text"] for r in rows])


@torch.no_grad()
def sample_batch(policy, tok, cfg: Config, train_set, train_ids, data_pos: int, generator, device):
    """Rollouts of one step -> (Batch, new data position, info).

    Dynamic sampling (DAPO, spec 1): a group whose rewards are all equal has A = 0 and
    teaches nothing, so with --dynamic-sampling keep sampling rounds of --prompts-per-step
    prompts until that many groups have mixed rewards, at most --max-sample-tries rounds.
    If the cap is hit, all-equal groups fill the batch (as without dynamic sampling); the
    number of mixed groups and rounds is logged.
    """
    policy.eval()
    P, G = cfg.prompts_per_step, cfg.group_size
    mixed, uniform, gen_tokens, t_gen, t_reward = [], [], 0, 0.0, 0.0
    rounds = cfg.max_sample_tries if cfg.dynamic_sampling else 1
    for tries in range(1, rounds + 1):
        idx = take_problems(data_pos, P, len(train_set), cfg.seed)
        data_pos += P
        t0 = time.time()
        responses = generate_groups(policy, tok, cfg, [train_ids[j] for j in idx], generator)
        t1 = time.time()
        golds = [train_set[j].answer for j in idx for _ in range(G)]
        texts, correct, truncated, reward = score_responses(responses, golds, tok, cfg)
        t_gen, t_reward = t_gen + t1 - t0, t_reward + time.time() - t1
        gen_tokens += sum(len(r) for r in responses)
        is_mixed = group_is_mixed(reward, G)  # [P]
        for g, j in enumerate(idx):
            rows = slice(g * G, (g + 1) * G)
            group = dict(prompt=[train_ids[j]] * G, prompt_len=[len(train_ids[j])] * G, response=responses[rows],
                         reward=reward[rows].tolist(), correct=correct[rows].tolist(),
                         truncated=truncated[rows].tolist(), question=[train_set[j].prompt] * G,
                         gold=[train_set[j].answer] * G, text=texts[rows])
            (mixed if bool(is_mixed[g]) or not cfg.dynamic_sampling else uniform).append(group)
        if len(mixed) >= P:
            break
    info = dict(ds_tries=tries, ds_mixed_groups=min(len(mixed), P), gen_tokens=gen_tokens,
                time_generate=t_gen, time_reward=t_reward)
    return collate((mixed + uniform)[:P], tok.pad_id, device), data_pos, info


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
    mask, targets, plen = mask[:, :T], batch.targets[rows, :T], batch.prompt_len[rows]
    with autocast(cfg, batch.ids.device):
        hidden = policy.hidden_states(batch.ids[rows, :L])           # [b, L, d]
    b_idx, t_idx = mask.nonzero(as_tuple=True)                       # the N response tokens, row-major
    h = hidden[b_idx, plen[b_idx] - 1 + t_idx]                       # [N, d]: the state that predicts each token
    # Output layer in fp32, outside autocast: ratios pi_theta / pi_old are exp(differences of
    # log-probs close to 0), and bf16 logits (8 bits of mantissa) would drown them in rounding.
    # The sampler's own log-probs are not used as pi_old either: its kernels (KV cache, other
    # batch shapes) give slightly different numbers, so the first ratio would not be exactly 1.
    logp, ent = token_logprobs(h.float() / cfg.temperature, policy.output_weight.float(),
                               targets[b_idx, t_idx], with_entropy=with_entropy)
    scatter = lambda v: v.new_zeros(mask.shape).index_put((b_idx, t_idx), v)  # [N] -> [b, T]
    return scatter(logp), (scatter(ent) if with_entropy else None)


@torch.no_grad()
def old_logprobs(policy, ref_policy, batch: Batch, cfg: Config):
    """pi_old log-probs and entropies [B, T] (and the reference model's log-probs when
    kl_coef > 0), by a forward pass of the training model before the update, in the same
    minibatches the update uses, so the first epoch's ratios are exactly 1."""
    policy.eval()
    B, T = batch.mask.shape
    old, ent = torch.zeros(B, T, device=batch.mask.device), torch.zeros(B, T, device=batch.mask.device)
    ref = torch.zeros(B, T, device=batch.mask.device) if ref_policy is not None else None
    for s in range(0, B, cfg.minibatch_size):
        rows = slice(s, s + cfg.minibatch_size)
        lp, e = response_logprobs(policy, batch, rows, cfg, with_entropy=True)
        old[rows, :lp.shape[1]], ent[rows, :lp.shape[1]] = lp, e
        if ref is not None:
            ref[rows, :lp.shape[1]] = response_logprobs(ref_policy, batch, rows, cfg)[0]
    return old, ent, ref


# ----------------------------------------------------------------------------- update

def learning_rate(step: int, cfg: Config) -> float:
    """Linear warm-up over --warmup-steps, then constant or cosine decay (toward 0 after the last step)."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps - 1) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def ppo_update(policy, optimizer, batch: Batch, old_logp, token_adv, loss_mask, ref_logp, cfg: Config):
    """--ppo-epochs passes over the batch; each pass accumulates gradients over minibatches of
    --minibatch-size rows and takes ONE optimizer step. The loss is normalised by the whole
    batch's token / sequence counts, so the summed minibatch gradients equal the full batch's.
    A pass whose loss or gradient norm is not finite is skipped (no optimizer step)."""
    policy.train()
    B = batch.mask.shape[0]
    lens = loss_mask.sum(1)
    counts = dict(num_tokens=lens.sum().clamp(min=1), num_seqs=(lens > 0).sum().clamp(min=1))
    stats, n_stats, losses, grad_norms, skipped, tokens = {}, 0.0, [], [], 0, 0
    for _ in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0  # = the full-batch loss, since every minibatch is normalised by the batch's counts
        for s in range(0, B, cfg.minibatch_size):
            rows = slice(s, s + cfg.minibatch_size)
            logp, _ = response_logprobs(policy, batch, rows, cfg)                 # [b, T]
            T = logp.shape[1]
            ref = None if ref_logp is None else ref_logp[rows, :T]
            loss, st = policy_loss(logp, old_logp[rows, :T], token_adv[rows, :T], loss_mask[rows, :T], cfg,
                                   ref_logp=ref, **counts)
            loss.backward()
            total += loss.item()
            tokens += int(batch.prompt_len[rows].sum() + batch.mask[rows].sum())
            for k, v in st.items():  # token-weighted means over minibatches and epochs
                if k != "pg_loss":   # (already a share of the full-batch loss, like `loss`)
                    stats[k] = stats.get(k, 0.0) + v * st["num_tokens"]
            n_stats += st["num_tokens"]
        losses.append(total)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm))
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)  # skip: the weights and Adam moments stay as they were
            skipped += 1
            continue
        optimizer.step()
        grad_norms.append(grad_norm)
    out = {k: v / max(n_stats, 1.0) for k, v in stats.items() if k != "num_tokens"}
    out.update(loss=sum(losses) / len(losses), grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else None,
               nonfinite_skipped=skipped, train_tokens=tokens)
    return out


# ----------------------------------------------------------------------------- metrics

def step_metrics(batch: Batch, adv, entropy, loss_mask, boosted_pos, boosted_neg, step0: int, cfg: Config) -> dict:
    """Everything spec section 6 asks about the batch (the update's own numbers come from ppo_update)."""
    mask = batch.mask
    lengths = mask.sum(1).float()                                     # [B]
    pos, neg = adv > 0, adv < 0                                       # [B]
    mean = lambda x, m: float((x * m).sum() / m.sum()) if bool(m.any()) else float("nan")
    share = lambda b, m: float(b.sum() / m.sum()) if bool(m.any()) else 0.0
    S = cfg.alpha_decay_steps or cfg.steps
    alpha = lambda a0: alpha_schedule(a0, step0, S, cfg.alpha_schedule) if cfg.token_shaping else 1.0
    pos_tok, neg_tok = loss_mask & pos[:, None], loss_mask & neg[:, None]
    return {
        "reward": float(batch.reward.mean()), "accuracy": float(batch.correct.mean()),
        "frac_pos": float(pos.float().mean()), "frac_neg": float(neg.float().mean()),
        "frac_zero": float((adv == 0).float().mean()),
        "boosted_pos": share(boosted_pos, pos_tok), "boosted_neg": share(boosted_neg, neg_tok),
        "boosted": share(boosted_pos | boosted_neg, loss_mask),
        "alpha_pos": alpha(cfg.alpha0_pos), "alpha_neg": alpha(cfg.alpha0_neg),
        "entropy": mean(entropy, mask), "entropy_pos": mean(entropy, mask & pos[:, None]),
        "entropy_neg": mean(entropy, mask & neg[:, None]),
        "length": float(lengths.mean()), "length_pos": mean(lengths, pos), "length_neg": mean(lengths, neg),
        "truncated": float(batch.truncated.float().mean()),
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), the chance that k of the n, drawn without replacement, hold a correct one."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@torch.no_grad()
def evaluate(policy, tok, cfg: Config, problems, prompt_ids) -> dict:
    """Held-out accuracy: n = max(--eval-k) samples per problem at the training temperature
    (avg@n = mean correctness = pass@1, and unbiased pass@k), plus greedy accuracy."""
    policy.eval()
    device = policy.output_weight.device
    n = max(cfg.eval_k)
    # The same random stream at every evaluation: before / after differ only by the model.
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + 999_999_937)
    seqs = [p for p in prompt_ids for _ in range(n)]
    golds = [q.answer for q in problems for _ in range(n)]
    greedy, sampled = [], []
    for s in range(0, len(seqs), cfg.eval_batch_size):
        sampled += model.generate(policy, seqs[s:s + cfg.eval_batch_size], cfg.max_new_tokens, cfg.temperature,
                                  cfg.top_p, eos_ids=tok.eos_ids, generator=gen)[0]
    for s in range(0, len(prompt_ids), cfg.eval_batch_size):
        greedy += model.generate(policy, prompt_ids[s:s + cfg.eval_batch_size], cfg.max_new_tokens, 0.0,
                                 eos_ids=tok.eos_ids)[0]
    correct = [verifier.score(tok.decode(r), g) for r, g in zip(sampled, golds)]
    c = [int(sum(correct[i * n:(i + 1) * n])) for i in range(len(problems))]  # correct samples per problem
    out = {f"avg@{n}": sum(correct) / len(correct)}
    for k in sorted({1, *cfg.eval_k}):  # pass@1 always: the number the default run reports
        out[f"pass@{k}"] = sum(pass_at_k(n, ci, k) for ci in c) / len(c)
    out["greedy_acc"] = sum(verifier.score(tok.decode(r), q.answer) for r, q in zip(greedy, problems)) / len(problems)
    out["length"] = sum(len(r) for r in sampled) / len(sampled)
    out["greedy_length"] = sum(len(r) for r in greedy) / len(greedy)
    return out


def append_jsonl(path: str, record: dict):
    # NaN / inf (e.g. the entropy of positive samples when there are none) become null: strict JSON.
    record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")


def truncate_jsonl(path: str, last_step: int):
    """On resume, drop lines logged after the checkpoint (a crash may have outrun it)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    write_atomic(path, "".join(keep))


def write_atomic(path: str, text: str):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: str, policy, tok, optimizer, state: dict):
    """run_dir/checkpoint = a Hugging Face folder (`model.load` and `--model` read it) plus
    optimizer.safetensors (Adam moments) and trainer_state.json (step, data position, ...).
    Written whole to checkpoint.tmp, then swapped in: a crash at any point leaves the last
    good checkpoint (as checkpoint, or as checkpoint.old during the swap)."""
    from safetensors.torch import save_file

    if not all(bool(torch.isfinite(p).all()) for p in policy.parameters()):
        raise RuntimeError("refusing to checkpoint non-finite weights")
    final, tmp, old = (os.path.join(run_dir, n) for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(policy, tok, tmp)
    opt = optimizer.state_dict()
    tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous() for i, s in opt["state"].items() for k, v in s.items()}
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    write_atomic(os.path.join(tmp, "trainer_state.json"),
                 json.dumps(dict(state, param_groups=opt["param_groups"]), indent=2))
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: str) -> str | None:
    for name in ("checkpoint", "checkpoint.old"):  # .old: a crash hit between the two renames
        if os.path.exists(os.path.join(run_dir, name, "trainer_state.json")):
            return os.path.join(run_dir, name)
    return None


def load_trainer_state(ckpt: str, optimizer) -> dict:
    from safetensors.torch import load_file

    with open(os.path.join(ckpt, "trainer_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    tensors = load_file(os.path.join(ckpt, "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch_cpu"))
    opt_state = {}
    for key, v in tensors.items():  # "state.<param index>.<name>"
        _, i, name = key.split(".", 2)
        opt_state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    return state


# ----------------------------------------------------------------------------- the run

def check_config(cfg: Config):
    """Trainer settings that cannot work fail here, before anything is loaded."""
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)
    B = cfg.prompts_per_step * cfg.group_size
    for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "ppo_epochs", "minibatch_size",
                 "max_sample_tries", "eval_size", "eval_batch_size", "train_size"):
        need(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} must be >= 1 (got {getattr(cfg, name)})")
    need(cfg.adv_norm == "raw" or cfg.group_size >= 2,
         f"--group-size {cfg.group_size}: group-relative advantages need at least 2 responses per prompt")
    need(B % cfg.minibatch_size == 0, f"--minibatch-size {cfg.minibatch_size} does not divide the batch of "
         f"--prompts-per-step {cfg.prompts_per_step} x --group-size {cfg.group_size} = {B} responses")
    need(cfg.temperature > 0, f"--temperature {cfg.temperature}: training needs > 0 (log-probs use hidden / T)")
    need(0 < cfg.top_p <= 1, f"--top-p {cfg.top_p} must be in (0, 1]")
    need(cfg.lr_schedule in ("constant", "cosine"), f"--lr-schedule {cfg.lr_schedule!r}: constant or cosine")
    need(cfg.dtype in ("auto", "float32", "bfloat16"), f"--dtype {cfg.dtype!r}: auto, float32 or bfloat16")
    need(cfg.threads >= 0, f"--threads {cfg.threads} must be >= 0 (0 = torch's default)")
    need(cfg.lr >= 0 and cfg.warmup_steps >= 0 and cfg.weight_decay >= 0, "--lr, --warmup-steps, --weight-decay must be >= 0")
    need(len(cfg.eval_k) > 0 and min(cfg.eval_k) >= 1, f"--eval-k {cfg.eval_k}: give one or more k >= 1")
    need(cfg.data == "synthetic" or os.path.isfile(cfg.data), f"--data {cfg.data}: no such file (or 'synthetic')")
    need(not cfg.eval_data or os.path.isfile(cfg.eval_data), f"--eval-data {cfg.eval_data}: no such file")
    path = resolve_model_path(cfg.model)
    need(os.path.isfile(os.path.join(path, "config.json")),
         f"--model {cfg.model}: no Hugging Face model folder there (config.json missing)")


def pick_device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def run_dir_for(cfg: Config) -> str:
    return cfg.run_dir or os.path.join("runs", f"{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}")


def fmt_time(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.1f}s"


def install_ctrl_c():
    """First Ctrl-C: finish the running step, save a checkpoint, exit cleanly. A second
    Ctrl-C aborts at once (the last checkpoint on disk stays intact)."""
    stop = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        return stop, None

    def handler(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\nCtrl-C: finishing this step, then saving a checkpoint (Ctrl-C again aborts)", flush=True)

    return stop, signal.signal(signal.SIGINT, handler)


def train_step(step: int, policy, ref_policy, optimizer, tok, cfg: Config, train_set, train_ids, state: dict):
    """One RL step: rollouts -> rewards -> advantages -> shaping -> PPO epochs.
    Returns (metrics of spec section 6, a few samples for samples.jsonl)."""
    device = policy.output_weight.device
    t0 = time.time()
    # 1. Rollouts and rewards. Sampling randomness is a pure function of (seed, step), and the
    #    data position is saved, so a resumed run draws exactly what an uninterrupted one would.
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
    batch, state["data_pos"], info = sample_batch(policy, tok, cfg, train_set, train_ids, state["data_pos"], gen, device)
    t1 = time.time()
    # 2. pi_old: log-probs and entropies of the sampled tokens under the weights that sampled them.
    old_logp, entropy, ref_logp = old_logprobs(policy, ref_policy, batch, cfg)          # [B, T]
    t2 = time.time()
    # 3. Advantages: group-relative (spec 1), then polarity and token-level shaping (spec 2, 3).
    adv = compute_advantages(batch.reward, cfg.group_size, cfg)                         # [B]
    loss_mask = batch.mask & ~batch.truncated[:, None] if cfg.overlong_filter else batch.mask
    token_adv, boosted_pos, boosted_neg = shape_advantages(
        adv, old_logp, loss_mask, step - 1, cfg.steps, cfg, entropy=entropy)            # [B, T]
    # 4. --ppo-epochs optimizer steps on the clipped surrogate (spec 4).
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg)
    upd = ppo_update(policy, optimizer, batch, old_logp, token_adv, loss_mask, ref_logp, cfg)
    t3 = time.time()

    m = dict(step=step, split="train", **step_metrics(batch, adv, entropy, loss_mask, boosted_pos, boosted_neg,
                                                       step - 1, cfg))
    m.update({k: v for k, v in upd.items() if k != "train_tokens"})
    m.update(lr=optimizer.param_groups[0]["lr"], ds_tries=info["ds_tries"], ds_mixed_groups=info["ds_mixed_groups"],
             gen_tokens_per_s=info["gen_tokens"] / max(info["time_generate"], 1e-9),
             train_tokens_per_s=upd["train_tokens"] / max(t3 - t2, 1e-9),
             time_generate=info["time_generate"], time_reward=info["time_reward"],
             time_old_logp=t2 - t1, time_update=t3 - t2, time_step=t3 - t0)
    G = cfg.group_size
    samples = [dict(step=step, prompt=batch.questions[i], gold=batch.golds[i], completion=batch.texts[i],
                    reward=float(batch.reward[i]), advantage=float(adv[i]))
               for i in range(0, min(cfg.log_samples * G, len(batch.texts)), G)]  # one response per group
    return m, samples


def progress_line(m: dict, cfg: Config, eta: float) -> str:
    line = (f"step {m['step']:4d}/{cfg.steps} | reward {m['reward']:.3f} | acc {m['accuracy']:.3f} | "
            f"ent {m['entropy']:.3f} | len {m['length']:.1f} | boost {100 * m['boosted']:.1f}% | "
            f"{fmt_time(m['time_step'])} | eta {fmt_time(eta)}")
    if cfg.dynamic_sampling and m["ds_tries"] > 1:  # the cap on tries is visible when hit
        line += f" | mixed groups {m['ds_mixed_groups']}/{cfg.prompts_per_step} in {m['ds_tries']} tries"
    if m["nonfinite_skipped"]:
        line += f" | SKIPPED {m['nonfinite_skipped']} non-finite update(s)"
    return line


def train(cfg: Config) -> dict:
    """The whole run. Returns {"before": eval dict, "after": eval dict, "run_dir", "stopped"}."""
    check_config(cfg)
    device = pick_device(cfg)
    if cfg.loss_agg == "token-sum-norm" and cfg.loss_agg_constant is None:  # Dr. GRPO: the generation budget
        cfg = dataclasses.replace(cfg, loss_agg_constant=float(cfg.max_new_tokens))
    run_dir = cfg.resume or run_dir_for(cfg)
    cfg = dataclasses.replace(cfg, run_dir=run_dir)
    ckpt = find_checkpoint(run_dir)
    if cfg.resume and ckpt is None:
        raise FileNotFoundError(f"--resume {run_dir}: no checkpoint there")
    if not cfg.resume and ckpt is not None:
        raise FileExistsError(f"{run_dir} already holds a run: --resume {run_dir} continues it")
    train_set, eval_set = load_data(cfg)

    policy, tok = model.load(ckpt or resolve_model_path(cfg.model), device=device)
    context = policy.config.max_position_embeddings
    train_ids = encode_prompts(train_set, tok, cfg, context, "--data " + cfg.data)
    eval_ids = encode_prompts(eval_set, tok, cfg, context, "--eval-data " + (cfg.eval_data or cfg.data))
    policy.gradient_checkpointing = cfg.grad_checkpointing
    # The KL reference is the STARTING model (also on resume), frozen; not loaded when kl_coef = 0.
    ref_policy = None
    if cfg.kl_coef > 0:
        ref_policy = model.load(resolve_model_path(cfg.model), device=device)[0].requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    os.makedirs(run_dir, exist_ok=True)
    metrics_path, samples_path = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "samples.jsonl")
    write_atomic(os.path.join(run_dir, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=2))
    if ckpt:
        state = load_trainer_state(ckpt, optimizer)
        truncate_jsonl(metrics_path, state["step"])
        truncate_jsonl(samples_path, state["step"])
        print(f"resumed {run_dir} at step {state['step']}")
    else:
        for path in (metrics_path, samples_path):
            open(path, "w").close()
        torch.manual_seed(cfg.seed)
        state = dict(step=0, data_pos=0, nonfinite_skipped=0, eval_before=None, eval_last=None)
    print(f"{cfg.algo}: {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters on {device}, "
          f"{len(train_set)} training / {len(eval_set)} held-out problems, {cfg.steps} steps of "
          f"{cfg.prompts_per_step} prompts x {cfg.group_size} samples -> {run_dir}", flush=True)

    def run_eval(step):
        t0 = time.time()
        ev = evaluate(policy, tok, cfg, eval_set, eval_ids)
        append_jsonl(metrics_path, dict(step=step, split="eval", **ev, time_eval=time.time() - t0))
        print(f"eval {step:4d} | " + " | ".join(f"{k} {v:.3f}" if v <= 1 else f"{k} {v:.1f}" for k, v in ev.items())
              + f" | {fmt_time(time.time() - t0)}", flush=True)
        return ev

    stop, previous_handler = install_ctrl_c()
    t_start, first_step, step_seconds = time.time(), state["step"] + 1, 0.0
    try:
        if state["eval_before"] is None:
            state["eval_before"] = state["eval_last"] = run_eval(0)
        for step in range(first_step, cfg.steps + 1):
            m, samples = train_step(step, policy, ref_policy, optimizer, tok, cfg, train_set, train_ids, state)
            state["step"] = step
            state["nonfinite_skipped"] += m["nonfinite_skipped"]
            append_jsonl(metrics_path, m)
            for s in samples:
                append_jsonl(samples_path, s)
            step_seconds += m["time_step"]
            print(progress_line(m, cfg, step_seconds / (step - first_step + 1) * (cfg.steps - step)), flush=True)

            if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
                state["eval_last"] = run_eval(step)
            if step == cfg.steps or stop["requested"] or (cfg.save_every and step % cfg.save_every == 0):
                save_checkpoint(run_dir, policy, tok, optimizer, state)  # skipped updates never changed the weights
            if stop["requested"]:
                print(f"stopped after step {step}; continue with: python a3po.py --resume {run_dir}")
                return dict(before=state["eval_before"], after=None, run_dir=run_dir, stopped=True)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)

    print_summary(state["eval_before"], state["eval_last"], cfg, state, time.time() - t_start, run_dir, len(eval_set))
    return dict(before=state["eval_before"], after=state["eval_last"], run_dir=run_dir, stopped=False)


def print_summary(before: dict, after: dict, cfg: Config, state: dict, seconds: float, run_dir: str, n_eval: int):
    """Before / after table; the LAST line is `pass@1: <before>% -> <after>%` for scripts."""
    print(f"\ndone: {state['step']} steps in {fmt_time(seconds)}, {state['nonfinite_skipped']} non-finite "
          f"update(s) skipped; checkpoint in {os.path.join(run_dir, 'checkpoint')}")
    print(f"held-out: {n_eval} problems, {max(cfg.eval_k)} samples each at temperature {cfg.temperature}")
    print(f"  {'':14s} {'before':>8s} {'after':>8s}")
    for k in after:
        fmt = (lambda v: f"{100 * v:7.1f}%") if "length" not in k else (lambda v: f"{v:8.1f}")
        print(f"  {k:14s} {fmt(before[k]) if k in before else '-':>8s} {fmt(after[k])}")
    print(f"pass@1: {100 * before['pass@1']:.1f}% -> {100 * after['pass@1']:.1f}%", flush=True)


def eval_only(cfg: Config) -> dict:
    """--eval-only: evaluate --model (any checkpoint folder) on the held-out problems."""
    check_config(cfg)
    device = pick_device(cfg)
    _, eval_set = load_data(cfg)
    policy, tok = model.load(resolve_model_path(cfg.model), device=device)
    eval_ids = encode_prompts(eval_set, tok, cfg, policy.config.max_position_embeddings,
                              "--eval-data " + (cfg.eval_data or cfg.data))
    ev = evaluate(policy, tok, cfg, eval_set, eval_ids)
    for k, v in ev.items():
        print(f"{k:14s} {v:.4f}")
    print(f"pass@1: {100 * ev['pass@1']:.1f}%", flush=True)
    return ev


# ----------------------------------------------------------------------------- command line

def field_help() -> dict[str, str]:
    """One --help line per Config field, read from the comments in Config's source (the
    `# --- spec N: ...` headers and each field's trailing comment), so they cannot drift."""
    helps, section, block = {}, "spec 5", []
    for line in inspect.getsource(Config).splitlines()[1:]:
        s = line.strip()
        if s.startswith("def "):
            break
        header = re.match(r"# -+ ([^:]+):", s)  # "# --- spec 1: group-relative advantage"
        field = re.match(r"(\w+)\s*:[^=]+=[^#]*(?:#\s*(.*))?$", s)
        if header:
            section, block = header.group(1), []
        elif s.startswith("#"):
            block.append(s.lstrip("# "))
        elif field:
            block_text = " ".join(block)  # no trailing comment: the first sentence of the block above
            text = field.group(2) or re.match(r"(.*?[a-z0-9)]{2}\.)(\s|$)|(.*)", block_text).group(0).strip()
            helps[field.group(1)] = f"[{section}] {text}"
            block = []
    return helps


CHOICES = dict(adv_norm=ADV_NORMS, raw_adv=RAW_ADVS, alpha_schedule=ALPHA_SCHEDULES, token_criterion=TOKEN_CRITERIA,
               pos_tail=TAILS, neg_tail=TAILS, loss_agg=LOSS_AGGS, lr_schedule=("constant", "cosine"),
               data_format=("auto", "gsm8k", "math", "generic"), template=tuple(tasks.TEMPLATES),
               dtype=("auto", "float32", "bfloat16"))


def build_parser() -> argparse.ArgumentParser:
    """Every Config field is a flag. Defaults are SUPPRESSed so that parse_args returns only
    the flags the user typed: those override the preset chosen by --algo."""
    p = argparse.ArgumentParser(
        prog="a3po.py", argument_default=argparse.SUPPRESS,
        description="A3PO and its baselines (GRPO, DAPO, PSR, NSR, W-REINFORCE) on one CPU or GPU. "
                    "With no arguments: the a3po preset on the shipped model and synthetic task.")
    helps, defaults = field_help(), Config()
    for f in dataclasses.fields(Config):
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        text = f"{helps.get(f.name, '')} (default: {default})".replace("%", "%%")
        args = typing.get_args(f.type)
        base = next((a for a in args if a is not type(None)), f.type) if type(None) in args else f.type
        if f.name == "algo":
            p.add_argument(flag, choices=list(PRESETS), help=text)
        elif base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif typing.get_origin(base) is tuple:
            p.add_argument(flag, type=int, nargs="+", metavar="K", help=text)
        elif f.name in CHOICES:
            p.add_argument(flag, choices=CHOICES[f.name], help=text)
        else:  # "none" turns an optional setting off
            conv = (lambda b: lambda s: None if s.lower() == "none" else b(s))(base) if type(None) in args else base
            p.add_argument(flag, type=conv, metavar={int: "N", float: "X"}.get(base, "S"), help=text)
    return p


def parse_config(argv=None) -> Config:
    """Config defaults <- --algo preset <- the flags given. With --resume RUN_DIR: the run's
    saved config.json <- the flags given (e.g. a larger --steps to extend it)."""
    given = vars(build_parser().parse_args(argv))
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    if "resume" in given:
        path = os.path.join(given["resume"], "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"--resume {given['resume']}: no config.json there")
        if "algo" in given:
            raise ValueError("--algo cannot change on --resume (the preset is in the run's config.json)")
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        saved["eval_k"] = tuple(saved["eval_k"])
        return dataclasses.replace(Config(**saved), **given)
    return apply_preset(given.pop("algo", Config().algo), given)


def main(argv=None):
    cfg = parse_config(argv)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return eval_only(cfg) if cfg.eval_only else train(cfg)
    except KeyboardInterrupt:
        print("\naborted (the last checkpoint, if any, is intact)")
        raise SystemExit(130)


if __name__ == "__main__":
    main()

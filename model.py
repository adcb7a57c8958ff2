"""A decoder-only transformer that loads Hugging Face Llama / Qwen2 / Qwen3 checkpoints.

One file, nanoGPT / gpt-fast style: config -> modules -> loading/saving -> tokenizer ->
sampling with a preallocated KV cache. The parameter names and the weight layout are exactly
the Hugging Face ones (rotate-half rotary embedding, `model.layers.N.self_attn.q_proj.weight`,
...), so `model.safetensors` files load unchanged and `save` writes files transformers reads.

Shapes: B batch, T sequence length, S cache length, d hidden size, H query heads,
Hkv key/value heads, hd head dim, V vocabulary.
"""
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------- config

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass
class ModelConfig:
    model_type: str = "llama"  # "llama" | "qwen2" | "qwen3"
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 0  # 0 -> hidden_size // num_attention_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # bias on q/k/v (qwen2 always; llama/qwen3 also on o_proj)
    rope_scaling: dict | None = None  # {"rope_type": "llama3" | "linear", "factor": ..., ...}
    bos_token_id: int | None = None
    eos_token_ids: list = field(default_factory=list)  # generate() stops here when eos_ids=None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in ARCHITECTURES:
            raise ValueError(f"unsupported model_type {self.model_type!r} (supported: {sorted(ARCHITECTURES)})")
        if self.model_type == "qwen2":
            self.attention_bias = True  # Qwen2 always has q/k/v biases and no config flag for it
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("llama3", "linear"):
                raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: llama3, linear)")
            self.rope_scaling = {**self.rope_scaling, "rope_type": kind}

    @classmethod
    def from_hf(cls, c: dict, where="config.json") -> "ModelConfig":
        """Parse a Hugging Face config.json dict; anything we would silently get wrong is an error."""
        mt = c.get("model_type")
        if mt not in ARCHITECTURES:
            raise ValueError(f"{where}: unsupported model_type {mt!r} (supported: {sorted(ARCHITECTURES)})")
        def bad(option, value):
            raise ValueError(f"{where}: unsupported option {option}={value!r} for model_type {mt!r}")
        if c.get("hidden_act", "silu") != "silu":
            bad("hidden_act", c["hidden_act"])
        if c.get("mlp_bias"):
            bad("mlp_bias", True)
        if c.get("use_sliding_window"):
            bad("use_sliding_window", True)  # Qwen2/3 sliding-window attention is not implemented
        if any(t != "full_attention" for t in (c.get("layer_types") or [])):
            bad("layer_types", sorted(set(c["layer_types"])))
        if c.get("partial_rotary_factor", 1.0) != 1.0:
            bad("partial_rotary_factor", c["partial_rotary_factor"])
        if c.get("pretraining_tp", 1) != 1:
            bad("pretraining_tp", c["pretraining_tp"])
        # transformers 5 writes {"rope_parameters": {"rope_type", "rope_theta", ...}};
        # older checkpoints write "rope_theta" and "rope_scaling" at the top level.
        rp = c.get("rope_parameters") or {}
        scaling = c.get("rope_scaling") or rp
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in ("default", "llama3", "linear"):
            bad("rope_scaling type", kind)
        rope_scaling = None
        if kind != "default":
            keys = ["factor"] + (["low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
                                 if kind == "llama3" else [])
            missing = [k for k in keys if k not in scaling]
            if missing:
                raise ValueError(f"{where}: rope_scaling of type {kind!r} lacks {missing}")
            rope_scaling = {"rope_type": kind, **{k: scaling[k] for k in keys}}
        eos = c.get("eos_token_id")
        try:
            return cls(
                model_type=mt, vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                num_attention_heads=c["num_attention_heads"],
                num_key_value_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
                head_dim=c.get("head_dim") or 0,
                rope_theta=float(c.get("rope_theta", rp.get("rope_theta", 10000.0))),
                rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=c.get("max_position_embeddings", 2048),
                tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
                attention_bias=bool(c.get("attention_bias", False)), rope_scaling=rope_scaling,
                bos_token_id=c.get("bos_token_id"), pad_token_id=c.get("pad_token_id"),
                eos_token_ids=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)))
        except KeyError as e:
            raise ValueError(f"{where}: missing required key {e.args[0]!r}") from None

    def to_hf(self, dtype=torch.float32) -> dict:
        c = {
            "architectures": [ARCHITECTURES[self.model_type]], "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling,
            "rms_norm_eps": self.rms_norm_eps, "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
            "torch_dtype": str(dtype).removeprefix("torch."),
            "bos_token_id": self.bos_token_id, "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else (self.eos_token_ids or None),
        }
        if self.model_type == "qwen2":
            c["use_sliding_window"] = False
        else:
            c["attention_bias"] = self.attention_bias
        return c


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """[hd/2] float32 rotary frequencies, computed exactly as transformers does (on the CPU)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    if s["rope_type"] == "linear":
        return inv_freq / s["factor"]
    # llama3: long wavelengths are slowed down by `factor`, short ones kept, the band between
    # the two interpolated smoothly (Llama 3.1 long-context recipe).
    factor, lo, hi, old_len = (s["factor"], s["low_freq_factor"], s["high_freq_factor"],
                               s["original_max_position_embeddings"])
    low_freq_wavelen, high_freq_wavelen = old_len / lo, old_len / hi
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


# ----------------------------------------------------------------------------- modules

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Normalise in float32 like transformers, then cast back before the weight multiply.
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


def apply_rope(x, cos, sin_signed):
    """Rotate-half RoPE. x [B, T, h, hd]; cos, sin_signed [B or 1, T, 1, hd].

    transformers: x * cos + cat(-x2, x1) * sin. roll(x) = cat(x2, x1), and sin_signed = cat(-sin, sin)
    folds the sign in, so this is the same arithmetic with fewer ops (it runs every layer, every step).
    """
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin_signed


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        d, b = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(d, self.n_head * self.hd, bias=b)
        self.k_proj = nn.Linear(d, self.n_kv * self.hd, bias=b)
        self.v_proj = nn.Linear(d, self.n_kv * self.hd, bias=b)
        # Qwen2 has biases on q/k/v only; Llama/Qwen3 `attention_bias` also covers o_proj.
        self.o_proj = nn.Linear(self.n_head * self.hd, d, bias=b and cfg.model_type != "qwen2")
        if cfg.model_type == "qwen3":  # Qwen3: RMSNorm over each head's q and k before RoPE
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, kv=None, start=0, mask=None, past=None):
        # x [B, T, d]; kv: None (plain causal forward) or, for generate()'s prefill, this layer's
        # cache (k, v), each [B, Hkv, S, hd]: write slots start..start+T-1, attend to 0..start+T-1.
        # past: None or (k, v) [B, Hkv, P, hd] of tokens before x (response_states' shared prompt),
        # attended to first. mask: None or bool [B, 1, T, keys] (True = may attend).
        # (generate()'s one-token decode steps run in _decode_step, not here.)
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, hd]
        if kv is not None:  # prefill in generate(): fill the cache, attend to what it holds
            k_cache, v_cache = kv
            k_cache[:, :, start:start + T] = k
            v_cache[:, :, start:start + T] = v
            k, v = k_cache[:, :, :start + T], v_cache[:, :, :start + T]  # views, no copy
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        if mask is None:  # training forward, or prefill of equal-length prompts: plain causal
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):  # SwiGLU
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, kv=None, start=0, mask=None, past=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv, start, mask, past)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """Parameter names are the Hugging Face ones: model.embed_tokens, model.layers.N..., lm_head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers)),
            norm=RMSNorm(config.hidden_size, config.rms_norm_eps),
        ))
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):  # only matters for random test models; checkpoints overwrite it
        if isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.device.type != "meta":
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def output_weight(self):  # [V, d]
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def rope(self, positions):
        """positions LongTensor [B or 1, T] -> cos, sin_signed [B or 1, T, 1, hd] in the model dtype."""
        inv_freq = rope_inv_freq(self.config).to(positions.device)
        freqs = positions[..., None].float() * inv_freq  # [B, T, hd/2], float32 like transformers
        dtype = self.output_weight.dtype
        cos = torch.cat([freqs.cos(), freqs.cos()], -1).to(dtype)
        sin = torch.cat([-freqs.sin(), freqs.sin()], -1).to(dtype)
        return cos.unsqueeze(2), sin.unsqueeze(2)

    def _blocks(self, x, cos, sin, caches=None, start=0, mask=None, pasts=None):
        # x [B, T, d] -> final-normed hidden [B, T, d]; caches / pasts: one (k, v) per layer or None
        ckpt = self.gradient_checkpointing and caches is None and pasts is None and torch.is_grad_enabled()
        for i, block in enumerate(self.model.layers):
            if ckpt:  # recompute the block in backward instead of storing its activations
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, None if caches is None else caches[i], start, mask,
                          None if pasts is None else pasts[i])
        return self.model.norm(x)

    def hidden_states(self, input_ids):
        """input_ids [B, T] -> final-normed hidden states [B, T, d] (full causal attention)."""
        T = input_ids.shape[1]
        cos, sin = self.rope(torch.arange(T, device=input_ids.device)[None])
        return self._blocks(self.model.embed_tokens(input_ids), cos, sin)

    def response_states(self, ids, prompt_len, T):
        """The hidden states that predict each row's response tokens, for the trainer's log-probs.

        ids [b, L]: prompt + response, right-padded; prompt_len [b]; T: response tokens wanted.
        Returns [b, T, d]: row i, token t = the final-normed state at position prompt_len[i] - 1 + t
        (clamped to L - 1: past a row's own response the values mean nothing).
        Consecutive rows with the same prompt (a GRPO group) run that prompt once: its keys and
        values are computed for one row and attended to by each row's response, which saves
        (G - 1) / G of the prompt's forward and backward; the numbers are those of the full
        forward up to float rounding, and the gradient reaches the prompt through every row.
        """
        b, L = ids.shape
        cols = torch.arange(L, device=ids.device)
        same = ((ids[1:] == ids[:-1]) | (cols >= prompt_len[1:, None])).all(1) & (prompt_len[1:] == prompt_len[:-1])
        new_prompt = torch.cat([same.new_ones(1), ~same])                    # [b] row i starts a prompt
        starts = new_prompt.nonzero()[:, 0].tolist()
        if len(starts) == b or T == 0 or (self.gradient_checkpointing and torch.is_grad_enabled()):
            pos = (prompt_len[:, None] - 1 + torch.arange(T, device=ids.device)).clamp(max=L - 1)  # [b, T]
            # (not self.hidden_states: under FSDP that is a registered forward method of its own)
            cos, sin = self.rope(torch.arange(L, device=ids.device)[None])
            hidden = self._blocks(self.model.embed_tokens(ids), cos, sin)                          # [b, L, d]
            return hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))
        owner = new_prompt.cumsum(0) - 1                                      # [b] row -> its prompt
        # 1. Each distinct prompt once, right-padded to P slots (causal: a prompt never sees its padding).
        P = int(prompt_len.max())
        dtype = torch.get_autocast_dtype(ids.device.type) if torch.is_autocast_enabled(ids.device.type) \
            else self.output_weight.dtype
        attn = self.model.layers[0].self_attn
        empty = lambda: torch.empty(len(starts), attn.n_kv, P, attn.hd, dtype=dtype, device=ids.device)
        caches = [(empty(), empty()) for _ in self.model.layers]              # filled by the prompt pass
        cos, sin = self.rope(torch.arange(P, device=ids.device)[None])
        prompt_hidden = self._blocks(self.model.embed_tokens(ids[starts, :P]), cos, sin, caches, 0)  # [u, P, d]
        first = prompt_hidden[owner, prompt_len - 1]                          # [b, d]: predicts response token 0
        S = T - 1  # 2. Response tokens 0 .. T-2 of each row, attending to its prompt's slots, then causally
        if S == 0:
            return first[:, None]
        pos = prompt_len[:, None] + torch.arange(S, device=ids.device)        # [b, S] positions
        cos, sin = self.rope(pos)
        prompt_slots = (torch.arange(P, device=ids.device) < prompt_len[:, None])[:, None, None, :]  # [b, 1, 1, P]
        causal = torch.ones(S, S, dtype=torch.bool, device=ids.device).tril()
        mask = torch.cat([prompt_slots.expand(b, 1, S, P), causal.expand(b, 1, S, S)], -1)  # [b, 1, S, P + S]
        x = self.model.embed_tokens(ids.gather(1, pos.clamp(max=L - 1)))  # [b, S, d]
        pasts = [(k[owner], v[owner]) for k, v in caches]                     # [b, Hkv, P, hd] each
        return torch.cat([first[:, None], self._blocks(x, cos, sin, mask=mask, pasts=pasts)], 1)

    def forward(self, input_ids):
        """input_ids [B, T] -> logits [B, T, V] in the model dtype."""
        return F.linear(self.hidden_states(input_ids), self.output_weight)


# ----------------------------------------------------------------------------- load / save

def _read_json(path, required=True):
    if not os.path.exists(path):
        if required:
            raise FileNotFoundError(f"{path}: file not found")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def _weight_files(path):
    """-> list of safetensors files of the checkpoint (single file or sharded with an index)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not weight_map:
            raise ValueError(f"{index}: no 'weight_map'")
        files = [os.path.join(path, f) for f in dict.fromkeys(weight_map.values())]
    else:
        files = [os.path.join(path, "model.safetensors")]
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"{f}: weight file not found (expected model.safetensors or "
                                    f"model.safetensors.index.json with its shards in {path})")
    return files


def load(path, device="cpu", dtype=torch.float32):
    """Load a Hugging Face folder -> (Transformer in eval mode, Tokenizer).

    The module is built on the meta device (no memory), then each tensor is read from the
    safetensors file, cast and assigned one at a time: peak memory is one model in `dtype`.
    Refused with the folder, file or tensor named: a tokenizer with ids past the embedding,
    a tensor holding NaN/inf. A checkpoint that names no EOS loads with tokenizer.eos_ids == []
    (see set_eos).
    """
    from safetensors import safe_open

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory")
    cfg = ModelConfig.from_hf(_read_json(os.path.join(path, "config.json")), os.path.join(path, "config.json"))
    tokenizer = Tokenizer.from_folder(path, cfg)
    # More embedding rows than tokens is common and fine (padded to a multiple of 64/128);
    # a token past the last row would only fail deep inside generate().
    if tokenizer.max_id() >= cfg.vocab_size:
        raise ValueError(f"{path}: tokenizer.json has ids up to {tokenizer.max_id()} ({tokenizer.vocab_size} tokens) "
                         f"but the model's embedding has {cfg.vocab_size} rows (config.json vocab_size): "
                         "the tokenizer does not belong to these weights")
    cfg.eos_token_ids, cfg.bos_token_id, cfg.pad_token_id = list(tokenizer.eos_ids), tokenizer.bos_id, tokenizer.pad_id
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = dict(model.named_parameters())
    loaded = {}
    for file in _weight_files(path):
        try:
            f = safe_open(file, framework="pt", device="cpu")
            names = list(f.keys())
        except Exception as e:  # safetensors raises its own error types; say which file
            raise ValueError(f"{file}: cannot read safetensors file ({type(e).__name__}: {e})") from None
        for name in names:
            if name not in expected:
                # Old checkpoints store rotary buffers; tied ones sometimes also store lm_head.
                if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and cfg.tie_word_embeddings):
                    continue
                raise ValueError(f"{file}: unexpected tensor {name!r} (not part of a {cfg.model_type} model "
                                 f"with this config.json)")
            try:
                t = f.get_tensor(name)
            except Exception as e:
                raise ValueError(f"{file}: cannot read tensor {name!r} ({type(e).__name__}: {e})") from None
            if t.shape != expected[name].shape:
                raise ValueError(f"{file}: tensor {name!r} has shape {list(t.shape)}, expected "
                                 f"{list(expected[name].shape)} from config.json")
            loaded[name] = t.to(device=device, dtype=dtype)
            # NaN/inf weights would load silently and fail at the first training step.
            if not _all_finite(loaded[name]):
                why = _nonfinite(name, loaded[name])
                if _all_finite(t):  # finite as stored: the cast overflowed
                    why += f" after casting {t.dtype} to {dtype} (values too large for it)"
                raise ValueError(f"{file}: {why}")
            del t
    missing = [n for n in expected if n not in loaded]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(loaded, strict=True, assign=True)
    return model.eval(), tokenizer


def _all_finite(t):
    # A sum is NaN or inf when any element is, so a finite sum proves every element finite;
    # on the CPU that is 10x faster than isfinite(t).all(). Only a sum that overflowed needs
    # the element-wise check.
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    return bool(torch.isfinite(t.sum(dtype=acc))) or bool(torch.isfinite(t).all())


def _nonfinite(name, t):
    bad = ~torch.isfinite(t)
    return (f"tensor {name!r} holds non-finite values ({int(torch.isnan(t).sum())} NaN, "
            f"{int((bad & ~torch.isnan(t)).sum())} inf of {t.numel()})")


def check_finite(model: nn.Module, where="model") -> None:
    """Raise ValueError naming the first parameter or buffer that holds NaN or inf (one pass
    over the weights). model.load already checks each tensor as it reads it."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not _all_finite(t.detach()):
            raise ValueError(f"{where}: {_nonfinite(name, t.detach())}")


def save(model: Transformer, tokenizer: "Tokenizer", path) -> None:
    """Write a Hugging Face folder (config.json, model.safetensors, tokenizer files), atomically."""
    from safetensors.torch import save_file

    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); the folder is meant to be shared
    try:
        cfg = model.config
        cfg.eos_token_ids, cfg.bos_token_id, cfg.pad_token_id = list(tokenizer.eos_ids), tokenizer.bos_id, tokenizer.pad_id
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg.to_hf(model.output_weight.dtype), f, indent=2)
        # Tied models have no lm_head parameter, so the file holds each tensor once.
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        del tensors
        tokenizer.save(tmp)
        if os.path.exists(path):  # swap: old -> aside, new -> path, then delete old
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- tokenizer

def _token_content(entry):  # tokenizer_config entries are "text", {"content": "text"} or null
    return entry.get("content") if isinstance(entry, dict) else entry


def _as_list(v):
    return [] if v is None else [v] if isinstance(v, int) else list(v)


CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
                   "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim "
                   "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


class Tokenizer:
    """tokenizers.Tokenizer + special token ids + chat formatting (no jinja)."""

    def __init__(self, tk, eos_ids, bos_id=None, pad_id=None, chat_style=None, chat_template=None):
        import tokenizers
        # eos_ids == [] is allowed: such a checkpoint loads and scores text, and generate()
        # runs to max_new_tokens. Training needs an EOS: set_eos(tok, "<token>") names one.
        eos_ids = _as_list(eos_ids)
        if chat_style not in (None, "chatml", "llama3"):
            raise ValueError(f"unsupported chat_style {chat_style!r} (supported: chatml, llama3, None)")
        # Own copy with special-token matching switched off: encode() must treat a "<|im_end|>"
        # inside dataset text as plain characters. apply_chat inserts special ids directly.
        self.tk = tokenizers.Tokenizer.from_str(tk.to_str())
        self.tk.encode_special_tokens = True
        self.eos_ids, self.bos_id = eos_ids, bos_id
        self.pad_id = eos_ids[0] if pad_id is None and eos_ids else pad_id
        self.chat_style = chat_style
        self.chat_template = chat_template or {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE}.get(chat_style)
        # Chat templates of SmolLM2 / Qwen2.5 add a default system message when none is given.
        m = re.search(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}]+?)<\|im_end\|>", self.chat_template or "")
        self.default_system = m.group(1) if chat_style == "chatml" and m else None
        # Llama 3.1+ templates always open with a system header carrying these dates.
        self.llama31 = chat_style == "llama3" and "Cutting Knowledge Date" in (self.chat_template or "")
        for name, i in [("eos", e) for e in eos_ids] + [("bos", bos_id), ("pad", self.pad_id)]:
            if i is not None and not 0 <= i < self.tk.get_vocab_size():
                raise ValueError(f"{name} id {i} outside the vocabulary (size {self.tk.get_vocab_size()})")

    @classmethod
    def from_tokenizers(cls, tk, eos_ids, bos_id=None, pad_id=None, chat_style=None) -> "Tokenizer":
        return cls(tk, eos_ids, bos_id, pad_id, chat_style)

    @classmethod
    def from_folder(cls, path, cfg: ModelConfig | None = None) -> "Tokenizer":
        import tokenizers
        file = os.path.join(path, "tokenizer.json")
        if not os.path.exists(file):
            raise FileNotFoundError(f"{file}: file not found")
        try:
            tk = tokenizers.Tokenizer.from_file(file)
        except Exception as e:
            raise ValueError(f"{file}: cannot parse ({e})") from None
        tc = _read_json(os.path.join(path, "tokenizer_config.json"), required=False)
        gc = _read_json(os.path.join(path, "generation_config.json"), required=False)
        tid = lambda entry: None if _token_content(entry) is None else tk.token_to_id(_token_content(entry))
        eos = []  # every EOS any of the three files names: generation must stop on all of them
        for v in (gc.get("eos_token_id"), tid(tc.get("eos_token")), cfg.eos_token_ids if cfg else None):
            eos += [i for i in _as_list(v) if i is not None and i not in eos]
        # BOS: the id the tokenizer's own post-processor prepends (Llama), else add_bos_token.
        with_special, plain = tk.encode("a", add_special_tokens=True).ids, tk.encode("a", add_special_tokens=False).ids
        bos = with_special[0] if len(with_special) > len(plain) and with_special[-len(plain):] == plain else None
        if bos is None and tc.get("add_bos_token"):
            bos = tid(tc.get("bos_token"))
        pad = tid(tc.get("pad_token"))
        if pad is None:
            pad = gc.get("pad_token_id", cfg.pad_token_id if cfg else None)
        template = tc.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja = os.path.join(path, "chat_template.jinja")  # transformers 5 writes the template here
        if template is None and os.path.exists(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        style = ("chatml" if "<|im_start|>" in (template or "") else
                 "llama3" if "<|start_header_id|>" in (template or "") else None)
        try:
            return cls(tk, eos, bos, pad, style, template)
        except ValueError as e:  # e.g. an EOS id from config.json past the tokenizer's vocabulary
            raise ValueError(f"{path}: {e}") from None

    def save(self, path):
        tk_json = json.loads(self.tk.to_str())
        with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tk_json, f, ensure_ascii=False)
        name = lambda i: None if i is None else self.tk.id_to_token(i)
        added = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
                 for t in tk_json.get("added_tokens", [])}
        tc = {"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added,
              "eos_token": name(self.eos_ids[0] if self.eos_ids else None), "bos_token": name(self.bos_id),
              "pad_token": name(self.pad_id),
              "add_bos_token": self.bos_id is not None, "clean_up_tokenization_spaces": False}
        if self.chat_template:
            tc["chat_template"] = self.chat_template
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(tc, f, indent=2, ensure_ascii=False)
        gc = {"eos_token_id": self.eos_ids if len(self.eos_ids) != 1 else self.eos_ids[0],
              "bos_token_id": self.bos_id, "pad_token_id": self.pad_id}
        if not self.eos_ids:
            del gc["eos_token_id"]  # none: written as absent, as transformers does
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump(gc, f, indent=2)

    @property
    def vocab_size(self):
        return self.tk.get_vocab_size()

    def max_id(self):
        """The largest token id the tokenizer can produce (ids need not be dense)."""
        return max(self.tk.get_vocab(with_added_tokens=True).values(), default=-1)

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Special-token strings stay text; no BOS."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _special(self, token):
        i = self.tk.token_to_id(token)
        if i is None:
            raise ValueError(f"chat style {self.chat_style!r} needs the special token {token!r}, not in vocabulary")
        return i

    def apply_chat(self, messages: list[dict], add_generation_prompt=True) -> list[int]:
        """Messages [{"role", "content"}] -> ids, as the family's chat template renders them.

        Built as a list of special-token ids and text pieces; each text piece is encoded as one
        string (as transformers encodes the text between special tokens), so contents can never
        produce special tokens.
        """
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"chat message must be {{'role': str, 'content': str}}, got {m!r}")
        parts = []  # ints (special ids) and strs (text)
        if self.chat_style is None:
            parts = ([] if self.bos_id is None else [self.bos_id]) + ["".join(m["content"] for m in messages)]
        elif self.chat_style == "chatml":
            start, end = self._special("<|im_start|>"), self._special("<|im_end|>")
            if self.default_system and messages and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": self.default_system}] + list(messages)
            for m in messages:
                parts += [start, f"{m['role']}\n{m['content']}", end, "\n"]
            if add_generation_prompt:
                parts += [start, "assistant\n"]
        else:  # llama3
            hs, he, eot = (self._special(t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
            bos = self.bos_id if self.bos_id is not None else self._special("<|begin_of_text|>")
            msgs = list(messages)
            if self.llama31:  # 3.1 template: a system header always, with its knowledge-date lines
                system = msgs.pop(0)["content"].strip() if msgs and msgs[0]["role"] == "system" else ""
                msgs.insert(0, {"role": "system", "content": "Cutting Knowledge Date: December 2023\n"
                                "Today Date: 26 Jul 2024\n\n" + system})
            parts = [bos] if msgs else []
            for m in msgs:
                content = m["content"] if self.llama31 and m["role"] == "system" else m["content"].strip()
                parts += [hs, m["role"], he, "\n\n" + content, eot]
            if add_generation_prompt:
                parts += [hs, "assistant", he, "\n\n"]
        ids, text = [], ""
        for p in parts + [None]:  # merge neighbouring text pieces, encode each run once
            if isinstance(p, str):
                text += p
                continue
            if text:
                ids += self.encode(text)
                text = ""
            if p is not None:
                ids.append(p)
        return ids


def set_eos(tok: Tokenizer, token_text: str) -> int:
    """Make the token spelled `token_text` (e.g. "<|im_end|>") the tokenizer's only EOS, for a
    checkpoint whose config files name none or the wrong one; it also becomes the pad id
    when there is none. Returns its id. Pass eos_ids=tok.eos_ids to generate (its default
    reads model.config, which model.save refreshes from the tokenizer)."""
    i = tok.tk.token_to_id(token_text) if isinstance(token_text, str) and token_text else None
    if i is None:
        specials = [t.content for t in tok.tk.get_added_tokens_decoder().values() if t.special]
        hint = f"; its special tokens: {', '.join(map(repr, specials[:12]))}" if specials else ""
        raise ValueError(f"EOS token {token_text!r} is not in the tokenizer's vocabulary (one token, spelled as "
                         f"in tokenizer.json){hint}")
    tok.eos_ids = [i]
    if tok.pad_id is None:
        tok.pad_id = i
    return i


# ----------------------------------------------------------------------------- sampling

# Counter-based random numbers: a row's uniforms are a pure function of (its key, the decode
# step), so they cannot depend on which batch, chunk or process samples the row. splitmix64
# (Steele et al. 2014) in torch int64 ops: multiplication wraps mod 2^64 as the uint64 version
# does, and a logical shift right is an arithmetic one with the sign-extended bits masked off.
_GOLDEN = -0x61C8864680B583EB  # 0x9E3779B97F4A7C15 as an int64
_MUL1, _MUL2 = -0x40A7B892E31B1A47, -0x6B2FB644ECCEEE15  # 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _shr(z, k):  # logical z >> k on int64
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """int64 tensor -> int64 tensor: splitmix64's output function of the state z + golden gamma."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MUL1
    z = (z ^ _shr(z, 27)) * _MUL2
    return z ^ _shr(z, 31)


def hash64(*parts) -> torch.Tensor:
    """Ints or int64 tensors (broadcast together) -> one int64 hash per element, each part
    mixed in turn: hash64(seed, step, torch.arange(B)) gives B unrelated keys."""
    z = torch.zeros((), dtype=torch.long)
    for p in parts:
        p = torch.as_tensor(p, dtype=torch.long)
        z = splitmix64(z.to(p.device) ^ p)
    return z


def uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """keys int64 [B], decode step -> u [B, 1] float64 in [0, 1): the top 53 bits of
    hash64(key, step) times 2^-53, so u is never 1.0."""
    return (_shr(hash64(keys, step), 11).double() * 2.0 ** -53)[:, None]


def _sample(logits, temperature, top_p, top_k, u):
    """logits [B, V], u [B, 1] uniform in [0, 1) float64 -> (token [B], log-prob [B] under
    log_softmax(logits / temperature)).

    Inverse-CDF sampling: one uniform number per row and a cumulative sum, instead of
    torch.multinomial or Gumbel noise (both draw or scan far more random numbers: on a CPU at
    batch 64 x 49k vocab that costs more than the output layer's matmul).
    """
    z = logits.float()
    if temperature == 0:  # greedy; log-probs at temperature 1
        tok = z.argmax(-1, keepdim=True)
        return tok[:, 0], (z.gather(-1, tok) - torch.logsumexp(z, -1, keepdim=True))[:, 0]
    if temperature != 1.0:
        z = z / temperature
    m = z.amax(-1, keepdim=True)  # [B, 1]
    e = (z - m).exp_()  # [B, V] unnormalised probabilities (one [B, V] buffer, not two)
    tok = _inverse_cdf(e, top_p, top_k, u)  # [B, 1]
    logp = z.gather(-1, tok) - m - e.sum(-1, keepdim=True).log()  # full distribution, not the truncated one
    return tok[:, 0], logp[:, 0]


def _inverse_cdf(e, top_p, top_k, u):
    """e [B, V] >= 0 unnormalised probabilities, u [B, 1] uniform -> sampled index [B, 1]
    (after top-k / top-p)."""
    if top_k > 0 and top_k < e.shape[-1]:
        kth = torch.topk(e, top_k, -1).values[:, -1:]
        e = e.masked_fill(e < kth, 0.0)
    if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
        sorted_e, idx = torch.sort(e, -1, descending=True)
        before = sorted_e.cumsum(-1) - sorted_e  # mass of the more likely tokens
        drop = before > top_p * sorted_e.sum(-1, keepdim=True)
        e = e.masked_fill(drop.scatter(-1, idx, drop), 0.0)
    if e.shape[-1] <= 4 * CDF_BLOCK:  # a small vocabulary: one running sum costs less than two levels of ops
        c = e.double().cumsum_(-1)  # [B, V]
        return torch.searchsorted(c, u * c[:, -1:], right=True).clamp_(max=e.shape[-1] - 1)
    return _two_level_search(e, u)


CDF_BLOCK = 256  # tokens per block of the two-level inverse CDF


def _two_level_search(e, u):
    """Index i with (sum of e before i) <= u * (sum of e) < (sum up to i), for e [B, V] >= 0,
    u [B, 1] in [0, 1) -> [B, 1], in two levels: the block of CDF_BLOCK tokens that holds that
    point of the mass, then the token inside it. Running sums are float64, as they must be (in
    float32 a tail token's increment, p < 1e-8, rounds away and the tail is sampled wrongly), but
    only over [B, V / CDF_BLOCK] block masses and one [B, CDF_BLOCK] block, never all of [B, V]."""
    B, V = e.shape
    nb = -(-V // CDF_BLOCK)
    if V % CDF_BLOCK:
        e = F.pad(e, (0, nb * CDF_BLOCK - V))                               # zeros: no mass
    blocks = e.view(B, nb, CDF_BLOCK)                                       # [B, nb, K]
    mass = blocks.sum(-1).double()                                          # [B, nb]
    cum = mass.cumsum(-1)                                                   # [B, nb]
    target = u * cum[:, -1:]                                                # [B, 1]
    # a block of zero mass never holds the point: right=True skips past equal running sums
    b = torch.searchsorted(cum, target, right=True).clamp_(max=nb - 1)      # [B, 1]
    mass_b = mass.gather(-1, b)                                             # [B, 1]
    inside = ((target - cum.gather(-1, b) + mass_b) / mass_b).clamp_(min=0)  # [B, 1] share of the block
    run = blocks.gather(1, b[:, :, None].expand(B, 1, CDF_BLOCK))[:, 0].double().cumsum_(-1)  # [B, K]
    j = torch.searchsorted(run, inside * run[:, -1:], right=True)          # [B, 1]
    last = (run < run[:, -1:]).sum(-1, keepdim=True)                        # the block's last token with mass
    return b * CDF_BLOCK + torch.minimum(j, last)


def _decode_linear(w, b, batch):
    """-> f(x [batch, in]) = x W^T + b, with W laid out for the decode steps of generate().

    One row on the CPU: a matrix-vector product only streams W from memory, and MKL's gemv
    pulls ~17-20 GB/s here where a plain reduction over the same bytes reaches 50+. x W^T is
    a weighted sum of the rows of W^T, which is exactly what embedding_bag(mode="sum",
    per_sample_weights=x) computes, and its kernel streams rows at memory speed. It spreads
    bags over threads, so W^T's rows are split into one bag per thread and the partial sums
    added (measured on this project's CPU: 2x faster than gemv on the tiny bench model's matrices,
    1.3x on SmolLM2's). Several rows: oneDNN's prepacked weight layout, the one
    torch.compile's CPU backend uses (1.4-2.5x faster than F.linear). Both are copies made
    once per generate() call.
    """
    if w.device.type == "cpu" and batch == 1 and w.dtype == torch.float32:
        wt = w.detach().t().contiguous()  # [in, out]
        n = max(1, torch.get_num_threads())
        index = torch.arange(wt.shape[0])
        offsets = (torch.arange(n) * -(-wt.shape[0] // n)).clamp(max=wt.shape[0])  # bag j: from row j * ceil(in / n)

        def matvec(x):  # x [1, in] -> [1, out]
            y = F.embedding_bag(index, wt, offsets, mode="sum", per_sample_weights=x[0])  # [n, out]
            y = y.sum(0, keepdim=True)
            return y if b is None else y + b
        return matvec
    if w.device.type == "cpu":
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(w, batch)
            return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        except (AttributeError, RuntimeError):  # a torch build without oneDNN: plain path
            pass
    return lambda x: F.linear(x, w, b)


def _decode_weights(model, batch, version):
    """Per layer (qkv, o, gate_up, down) linears plus the output layer, for _decode_step.

    q/k/v and gate/up are concatenated, so each decode step runs 4 matmuls per layer instead
    of 7 (per-op overhead dominates one-token steps of small models). With a weights `version`
    (see generate) the copies are kept on the model and reused until the version changes; the
    caller must change it whenever the weights change (an optimizer step need not mark a tensor
    as written: fused AdamW leaves its version counter alone).
    """
    if version is None or any(c.__name__ == "FSDPModule" for c in type(model).__mro__):
        return _make_decode_weights(model, batch)  # (a sharded model keeps no full copy between calls)
    key = (version, batch == 1, torch.get_num_threads())
    cached = getattr(model, "_decode_cache", None)
    if cached is None or cached[0] != key:
        model._decode_cache = None  # free the old copies before making new ones
        model._decode_cache = (key, _make_decode_weights(model, batch))
    return model._decode_cache[1]


def _make_decode_weights(model, batch):
    cat = lambda *ts: None if ts[0] is None else torch.cat(ts).detach()
    layers = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        layers.append((
            _decode_linear(cat(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
                           cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias), batch),
            _decode_linear(a.o_proj.weight.detach(), None if a.o_proj.bias is None else a.o_proj.bias.detach(), batch),
            _decode_linear(cat(m.gate_proj.weight, m.up_proj.weight), None, batch),
            _decode_linear(m.down_proj.weight.detach(), None, batch)))
    return layers, _decode_linear(model.output_weight.detach(), None, batch)


def _decode_attention(q, k, v, mask):
    """q [B, Hkv, G, hd], k/v [B, Hkv, s, hd], mask None or bool [B, 1, 1, s] -> [B, Hkv, G, hd].

    SDPA's CPU kernel is tuned for long queries. For one new token per row, two batched
    matmuls and a softmax are faster from batch 8 up (per layer, measured on this project's
    CPU: 1.3x at batch 8, 1.6-1.8x at batch 64); below that SDPA wins.
    """
    if q.device.type != "cpu" or q.shape[0] < 8:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # [B, Hkv, G, s]
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, -1), v)


def _decode_step(model, weights, tok, cos, sin, caches, s, mask):
    """One new token per row: tok [B] at cache slot s -> logits [B, V].

    The same math as Block.forward for T = 1, written flat: cos, sin [B, 1, hd];
    mask None or bool [B, 1, 1, s+1].
    """
    cfg = model.config
    H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    layers, head = weights
    B = tok.shape[0]
    x = model.model.embed_tokens(tok)  # [B, d]
    for block, (qkv, o, gate_up, down), (k_cache, v_cache) in zip(model.model.layers, layers, caches):
        qk, v = qkv(block.input_layernorm(x)).view(B, H + 2 * Hkv, hd).split([H + Hkv, Hkv], 1)
        if block.self_attn.q_norm is not None:
            qk = torch.cat([block.self_attn.q_norm(qk[:, :H]), block.self_attn.k_norm(qk[:, H:])], 1)
        qk = apply_rope(qk, cos, sin)  # q and k heads sit side by side: one rotation for both
        k_cache[:, :, s] = qk[:, H:]
        v_cache[:, :, s] = v
        # Fold the G = H/Hkv query heads that share a kv head into the query-"time" axis:
        # attention then reads each cached kv head once, with no repeat and no GQA path.
        q = qk[:, :H].reshape(B, Hkv, H // Hkv, hd)
        y = _decode_attention(q, k_cache[:, :, :s + 1], v_cache[:, :, :s + 1], mask)
        x = x + o(y.view(B, H * hd))
        g, u = gate_up(block.post_attention_layernorm(x)).chunk(2, -1)
        x = x + down(F.silu(g) * u)
    return head(model.model.norm(x))


@torch.no_grad()
def generate(model: Transformer, prompts, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
             eos_ids=None, generator=None, row_keys=None, weights_version=None):
    """Batched sampling with a preallocated KV cache.

    prompts: list of B lists of token ids (ragged). Returns (completions, logprobs): per
    sequence, the new ids (ending with the EOS that stopped it, if any) and the log-prob of each
    under log_softmax(logits / temperature) (temperature 0 = greedy, log-probs at temperature 1).
    eos_ids=None uses model.config.eos_token_ids; [] never stops early. Finished rows leave the
    batch as it runs; no row's samples depend on when the others finished.
    row_keys: None (uniforms drawn from `generator`) or int64 [B], one key per row: row b's
    uniform at decode step t is uniforms(row_keys[b], t), so a row samples the same tokens in
    any batch, chunk or process (up to the float rounding of other batch shapes' matmuls).
    weights_version: None (the decode copies of the weights are made for this call) or a value
    that changes whenever the weights do (a trainer's count of optimizer steps): the copies are
    then kept on the model and made again only when it changes.
    """
    cfg = model.config
    W = model.output_weight
    device, dtype = W.device, W.dtype
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"generate: bad sampling options temperature={temperature} top_p={top_p} top_k={top_k}")
    eos = _as_list(cfg.eos_token_ids if eos_ids is None else eos_ids)
    B, N = len(prompts), max_new_tokens
    if row_keys is not None:
        row_keys = torch.as_tensor(row_keys, dtype=torch.long)
        if row_keys.shape != (B,):
            raise ValueError(f"generate: row_keys must be int64 [{B}], one per prompt (got {tuple(row_keys.shape)})")
        row_keys = row_keys.to(device)
    if N <= 0:
        return [[] for _ in range(B)], [[] for _ in range(B)]
    # Identical prompts (GRPO samples G completions of each) are prefilled once: U <= B rows.
    index = {}
    inverse = [index.setdefault(tuple(p), len(index)) for p in prompts]  # row -> unique prompt
    lens = [len(p) for p in index]  # [U]
    P = max(lens)
    S = P + N  # cache slots: the left-padded prompt, then one slot per new token
    # Left-pad so every row's last prompt token sits in slot P-1 and all rows write the same
    # slot each step; padded key slots are masked out, positions count from each row's start.
    ids = torch.tensor([[0] * (P - n) + list(p) for n, p in zip(lens, index)], dtype=torch.long)  # [U, P]
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise ValueError(f"generate: token id outside [0, {cfg.vocab_size})")
    ids, inv = ids.to(device), torch.tensor(inverse, device=device)
    pad = torch.tensor([P - n for n in lens], device=device)  # [U]
    slots = torch.arange(S, device=device)
    positions = (slots[None, :] - pad[:, None]).clamp(min=0)  # [U, S] rotary position of each slot
    cos, sin = model.rope(positions)  # [U, S, 1, hd]
    ragged = min(lens) != P
    if ragged:
        valid = slots[None, :] >= pad[:, None]  # [U, S] real (non-pad) slots
        causal = slots[:P, None] >= slots[None, :P]  # [P, P]
        # pad query rows also see themselves, so no softmax row is all -inf (NaN would leak
        # into the padded slots' later-layer keys and values, then into 0 * NaN).
        prefill_mask = ((valid[:, None, :P] & causal) | torch.eye(P, dtype=torch.bool, device=device))[:, None]
        decode_mask = valid[inv][:, None, None, :]  # [B, 1, 1, S], sliced to the live slots each step
    else:
        prefill_mask = decode_mask = None
    shape = (len(index), cfg.num_key_value_heads, S, cfg.head_dim)
    caches = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
              for _ in range(cfg.num_hidden_layers)]
    h = model._blocks(model.model.embed_tokens(ids), cos[:, :P], sin[:, :P], caches, 0, prefill_mask)  # [U, P, d]
    logits = F.linear(h[:, -1], W)  # [U, V]
    if len(index) < B:  # copy each unique prompt's cache (and logits, rotary tables) to its rows
        caches = [(k[inv], v[inv]) for k, v in caches]
        logits, cos, sin = logits[inv], cos[inv], sin[inv]
    cos, sin = cos[:, :, 0], sin[:, :, 0]  # [B, S, hd]
    weights = _decode_weights(model, B, weights_version)
    out_tok = torch.zeros(B, N, dtype=torch.long, device=device)
    out_logp = torch.zeros(B, N, dtype=torch.float32, device=device)
    eos_t = torch.tensor(eos or [-1], device=device)
    rows = torch.arange(B, device=device)  # the output row of each row still being decoded
    done = torch.zeros(B, dtype=torch.bool, device=device)
    n_done = N
    for t in range(N):
        # One uniform number per original row, every step, even for rows dropped below: each
        # row's samples depend only on the seed, never on when other rows finished.
        if temperature == 0:
            u = None
        elif row_keys is not None:
            u = uniforms(row_keys[rows], t)  # [b, 1], only the live rows'
        else:
            u = torch.rand(B, 1, generator=generator, device=device, dtype=torch.float64)[rows]
        tok, logp = _sample(logits, temperature, top_p, top_k, u)
        out_tok[rows, t] = tok
        out_logp[rows, t] = logp
        if eos:
            done |= torch.isin(tok, eos_t)
            # A CPU check every few steps (each one waits for the device): stop when every row
            # is done, and drop the finished rows once they are a quarter of the batch, so
            # rollouts of very different lengths stop paying for their short members. Rows that
            # stopped in between run on, but what they produce after their EOS is cut below.
            if t % 4 == 3:
                live = (~done).nonzero()[:, 0]
                if len(live) == 0:
                    n_done = t + 1
                    break
                if len(live) <= len(rows) * 3 // 4:
                    rows, tok, done = rows[live], tok[live], done[live]
                    caches = [(k[live], v[live]) for k, v in caches]
                    cos, sin = cos[live], sin[live]
                    decode_mask = None if decode_mask is None else decode_mask[live]
        if t == N - 1:
            break
        s = P + t  # slot of the token just sampled
        mask = None if decode_mask is None else decode_mask[..., :s + 1]
        logits = _decode_step(model, weights, tok, cos[:, s:s + 1], sin[:, s:s + 1], caches, s, mask)

    out_tok, out_logp = out_tok[:, :n_done].cpu(), out_logp[:, :n_done].cpu()
    # length of each completion: up to and including its first EOS
    is_eos = torch.isin(out_tok, eos_t.cpu()) if eos else torch.zeros_like(out_tok, dtype=torch.bool)
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full((B,), n_done))
    toks, lps = out_tok.tolist(), out_logp.tolist()
    n = first.tolist()
    return [toks[b][:n[b]] for b in range(B)], [lps[b][:n[b]] for b in range(B)]

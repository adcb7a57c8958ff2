"""Tokens/s of model.generate vs transformers' generate on the same checkpoint, in one process.

Plain sampling (temperature 1, no top-k/top-p), exactly --new-tokens new tokens per row (no EOS
stop on either side), the same prompt repeated over the batch (as GRPO samples a group per
prompt; model.generate prefills identical prompts once) or, with --distinct, a different prompt
per row. With --eos both stop each row at the checkpoint's EOS, as RL rollouts do, and
tokens/s counts the tokens up to each row's EOS (model.generate drops finished rows from its
batch; transformers pads them to the end). For every (model, batch size) the two
implementations run interleaved, --repeats times each, and the median is reported, so load
on a shared machine hits both alike.

    .venv/bin/python bench/generate.py                       # tiny random Llama + SmolLM2 if converted
    .venv/bin/python bench/generate.py --models tiny --batch-sizes 1 8 --repeats 3
    .venv/bin/python bench/generate.py --models tiny --breakdown  # where a decode step's time goes
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402

# The converted SmolLM2-135M-Instruct folder (README: `python tools/gguf_to_hf.py smollm2-hf`).
SMOLLM2 = os.environ.get("SMOLLM2_HF", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "smollm2-hf"))


def tiny_checkpoint(folder):
    """Random Llama: hidden 256, 4 layers, 4 heads, 2 KV heads, vocab 512, saved by transformers."""
    import tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, eos_token_id=1, bos_token_id=None,
                      tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(512)}, unk_token="w0"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tk.save(os.path.join(folder, "tokenizer.json"))
    return folder


def batch_prompts(prompt, batch, distinct):
    """The same prompt in every row, or (--distinct) each row with its own first token, so that
    model.generate cannot prefill identical prompts once (transformers never does)."""
    return [([b + 10] + prompt[1:]) if distinct else prompt for b in range(batch)]


def time_ours(model, prompts, new_tokens, seed, eos):
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out, _ = M.generate(model, prompts, new_tokens, temperature=1.0, eos_ids=eos, generator=g)
    dt = time.perf_counter() - t0
    assert all(len(o) == new_tokens for o in out) or eos
    return sum(map(len, out)) / dt


def time_hf(hf, prompts, new_tokens, seed, eos):
    torch.manual_seed(seed)
    ids = torch.tensor(prompts)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                          top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=0 if eos else new_tokens,
                          eos_token_id=eos or None, pad_token_id=0)
    dt = time.perf_counter() - t0
    new = out[:, ids.shape[1]:]
    if not eos:
        assert new.shape == (len(prompts), new_tokens)
        return new.numel() / dt
    is_eos = torch.isin(new, torch.tensor(eos))  # count each row up to and including its first EOS
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, new.shape[1])
    return lengths.sum().item() / dt


def bench(name, path, prompt_text, args):
    from transformers import AutoModelForCausalLM
    ours, tok = M.load(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # exactly new_tokens on both sides, unless --eos
    eos = tok.eos_ids if args.eos else []
    prompt = tok.apply_chat([{"role": "user", "content": prompt_text}]) if tok.chat_style else tok.encode(prompt_text)
    time_ours(ours, [prompt] * 2, 8, 0, eos), time_hf(hf, [prompt] * 2, 8, 0, eos)  # warm-up
    rows = []
    for batch in args.batch_sizes:
        a, b = [], []
        prompts = batch_prompts(prompt, batch, args.distinct)
        for r in range(args.repeats):
            a.append(time_ours(ours, prompts, args.new_tokens, r, eos))
            b.append(time_hf(hf, prompts, args.new_tokens, r, eos))
        ma, mb = statistics.median(a), statistics.median(b)
        rows.append((name, batch, ma, mb))
        print(f"{name:8s} batch {batch:3d}  ours {ma:8.0f} tok/s  transformers {mb:8.0f} tok/s  "
              f"ratio {ma / mb:5.2f}x   (prompt {len(prompt)} tokens, runs ours {[round(x) for x in a]} "
              f"hf {[round(x) for x in b]})", flush=True)
    if args.breakdown:
        breakdown(name, ours, prompt, rows, args)
    return rows


def breakdown(name, ours, prompt, rows, args):
    """Where a decode step of model.generate goes: ms per step as it is, with every matrix
    product replaced by zeros of its output shape, and with attention replaced by a copy of q.
    The differences are the matmuls' and attention's shares; the rest is elementwise ops,
    sampling and per-op overhead. Last column: the step time that 3x transformers would allow."""
    def step_ms(prompts):
        return statistics.median(1e3 * len(prompts) / time_ours(ours, prompts, args.new_tokens, r, [])
                                 for r in range(args.repeats))
    print(f"\n| {name} batch | ms/step | matmuls | attention | the rest | 3x transformers allows |\n|---|---|---|---|---|---|")
    linear, attention = M._decode_linear, M._decode_attention
    for _, batch, _, hf_tok_s in rows:
        prompts = batch_prompts(prompt, batch, args.distinct)
        full = step_ms(prompts)
        try:
            M._decode_linear = lambda w, b, n: (lambda x, out=w.shape[0]: x.new_zeros(x.shape[0], out))
            no_matmul = step_ms(prompts)
            M._decode_linear, M._decode_attention = linear, (lambda q, k, v, mask: q.clone())
            no_attention = step_ms(prompts)
        finally:
            M._decode_linear, M._decode_attention = linear, attention
        mm, att = full - no_matmul, full - no_attention
        print(f"| {batch} | {full:.2f} | {mm:.2f} | {att:.2f} | {full - mm - att:.2f} | {1e3 * batch / (3 * hf_tok_s):.2f} |",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 64])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distinct", action="store_true", help="a different prompt in every row (no shared prefill)")
    ap.add_argument("--eos", action="store_true", help="stop each row at the checkpoint's EOS (an RL rollout)")
    ap.add_argument("--breakdown", action="store_true", help="also time model.generate without its matmuls / attention")
    ap.add_argument("--smollm2", default=SMOLLM2, help="converted SmolLM2-135M-Instruct folder")
    args = ap.parse_args()
    if args.breakdown and args.eos:
        ap.error("--breakdown times fixed-length steps: run it without --eos")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, {args.new_tokens} new tokens, "
          f"median of {args.repeats}, {'distinct prompts' if args.distinct else 'one prompt repeated'}"
          f"{', stop at EOS' if args.eos else ''}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in args.models:
            rows += bench("tiny", tiny_checkpoint(tmp), "w5 w17 w300 w42 w9 w77 w123 w8 w64 w201 w33 w2 w400 w11 w99 w7", args)
    if "smollm2" in args.models:
        if os.path.exists(os.path.join(args.smollm2, "model.safetensors")):
            rows += bench("smollm2", args.smollm2, "Natalia sold clips to 48 of her friends in April, and then "
                          "she sold half as many clips in May. How many clips did Natalia sell altogether?", args)
        else:
            print(f"smollm2: skipped, {args.smollm2} not found (convert it with tools/gguf_to_hf.py)")
    print("\n| model | batch | ours tok/s | transformers tok/s | speed-up |\n|---|---|---|---|---|")
    for name, batch, a, b in rows:
        print(f"| {name} | {batch} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()

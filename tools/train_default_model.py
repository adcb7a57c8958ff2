"""Builds data/default_model/: the tiny Llama that `python a3po.py` trains by default.

    python tools/train_default_model.py            # about 15 minutes on one CPU thread

From scratch, with nothing downloaded:
  1. a byte-level BPE tokenizer, trained (tokenizers library) on synthetic problems;
  2. a ~1M-parameter Llama (model.py), trained by supervised next-token prediction on
     prompt -> worked solution of the synthetic arithmetic task (data/tasks.py);
  3. held-out pass@1 / pass@8 at temperature 1, then model.save to a Hugging Face folder.

Why the model is deliberately unsure. RL with verifiable rewards can only sharpen what
sampling already finds sometimes: a model that always fails gets reward 0 everywhere, one
that always succeeds has nothing to learn. So a share of the training solutions contain an
arithmetic slip (a line's result off by 1-3, carried forward to a wrong final answer, see
tasks.worked_solution). The model learns the arithmetic (its most likely answer is usually
right) but also learns to slip now and then: sampled at temperature 1 it is right on only
some of its tries (pass@1 well below pass@8). That is the gap RL closes in the default run.
"""

import argparse
import math
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import a3po  # noqa: E402  (token_logprobs: per-token log-probs without full logits)
import model  # noqa: E402
import verifier  # noqa: E402
from data import tasks  # noqa: E402

SPECIALS = ["<pad>", "<bos>", "<eos>"]  # ids 0, 1, 2


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/default_model", help="output folder (replaced atomically)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--level", type=int, default=tasks.DEFAULT_LEVEL, help="synthetic task level")
    ap.add_argument("--slip-rate", type=float, default=0.3, help="chance that a solution line has a slip")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=384, help="BPE vocabulary size")
    ap.add_argument("--eval-size", type=int, default=200, help="held-out problems for pass@k")
    ap.add_argument("--eval-every", type=int, default=500, help="steps between evaluations (0 = end only)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    # One thread: a 1M-parameter model gains little from more, a fixed count makes the rebuild
    # repeatable bit for bit, and on a busy machine extra threads spin-wait for each other.
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    ap.add_argument("--snapshots", action="store_true", help="also save the model at each evaluation, "
                    "to OUT-stepN (for choosing how long to train)")
    return ap.parse_args()


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(vocab_size, seed):
    """Byte-level BPE with every digit its own token (so numbers are spelled digit by digit,
    which a small model learns arithmetic on far more easily than multi-digit tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Texts of every level and both wordings, so the vocabulary serves the whole task family.
    corpus = [tasks.format_question(p.prompt) + "\n" + p.solution
              for level in tasks.LEVELS for p in tasks.synthetic_problems(2000, seed, "train", level)]
    tk.train_from_iterator(corpus, trainer)
    ids = [tk.token_to_id(s) for s in SPECIALS]
    assert ids == [0, 1, 2], ids
    return model.Tokenizer.from_tokenizers(tk, eos_ids=[2], bos_id=1, pad_id=0, chat_style=None)


# ----------------------------------------------------------------------------- data


def sft_example(chain, tok, rng, slip_rate):
    """(ids, n_prompt): prompt exactly as the RL trainer builds it, then a worked solution
    (with slips at slip_rate) and EOS."""
    problem = tasks.chain_problem(chain, rng)
    prompt = tasks.build_prompt(problem.prompt, tok, "boxed")
    response = tok.encode(tasks.worked_solution(chain, slip_rate, rng)) + tok.eos_ids[:1]
    return prompt + response, len(prompt)


def sft_batch(chains, tok, rng, slip_rate):
    """-> ids [B, L] right-padded, targets [B, L-1], loss mask [B, L-1] (response tokens only)."""
    examples = [sft_example(c, tok, rng, slip_rate) for c in chains]
    L = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), L), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), L - 1, dtype=torch.bool)
    for i, (seq, n_prompt) in enumerate(examples):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, n_prompt - 1:len(seq) - 1] = True  # position t predicts token t+1
    return ids, ids[:, 1:], mask


def sft_loss(net, ids, targets, mask):
    """Mean negative log-likelihood of the response tokens (incl. EOS)."""
    hidden = net.hidden_states(ids[:, :-1])  # [B, L-1, d]
    logp, _ = a3po.token_logprobs(hidden[mask], net.output_weight, targets[mask], with_entropy=False)
    return -logp.mean()


def learning_rate(step, total, peak, warmup=50):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(net, tok, problems, k=8, max_new_tokens=64, seed=0):
    """Held-out pass@1 (mean over k samples at temperature 1), pass@k, greedy accuracy."""
    net.eval()
    prompts = [tasks.build_prompt(p.prompt, tok, "boxed") for p in problems]
    gen = torch.Generator().manual_seed(seed)
    sampled, _ = model.generate(net, [p for p in prompts for _ in range(k)], max_new_tokens, 1.0,
                                eos_ids=tok.eos_ids, generator=gen)
    greedy, _ = model.generate(net, prompts, max_new_tokens, 0.0, eos_ids=tok.eos_ids)
    right = [verifier.score(tok.decode(r), problems[i // k].answer) for i, r in enumerate(sampled)]
    per_problem = [right[i * k:(i + 1) * k] for i in range(len(problems))]
    net.train()
    return dict(
        pass1=sum(right) / len(right),
        passk=sum(any(r) for r in per_problem) / len(problems),
        greedy=sum(verifier.score(tok.decode(r), p.answer) for r, p in zip(greedy, problems)) / len(problems),
        length=sum(len(r) for r in sampled) / len(sampled),
    )


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    print(f"seed {args.seed}  level {args.level}  slip rate {args.slip_rate}  steps {args.steps}", flush=True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    tok = train_tokenizer(args.vocab, args.seed)
    cfg = model.ModelConfig(
        model_type="llama", vocab_size=tok.vocab_size, hidden_size=args.hidden,
        intermediate_size=args.intermediate, num_hidden_layers=args.layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True)
    net = model.Transformer(cfg)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, "
          f"{cfg.num_hidden_layers} layers", flush=True)

    chains = tasks.sample_chains(args.steps * args.batch_size, args.seed, "train", args.level)
    held_out = tasks.synthetic_problems(args.eval_size, 0, "test", args.level)  # what a3po.py evaluates on
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    net.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        batch = sft_batch(chains[step * args.batch_size:(step + 1) * args.batch_size], tok, rng, args.slip_rate)
        loss = sft_loss(net, *batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:6.0f}s", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            m = evaluate(net, tok, held_out, max_new_tokens=args.max_new_tokens)
            print(f"eval step {step + 1}: pass@1 {m['pass1']:.1%}  pass@8 {m['passk']:.1%}  "
                  f"greedy {m['greedy']:.1%}  length {m['length']:.1f}", flush=True)
            if args.snapshots:
                model.save(net, tok, f"{args.out}-step{step + 1}")

    m = evaluate(net, tok, held_out, max_new_tokens=args.max_new_tokens)
    result = (f"held-out ({args.eval_size} problems, level {args.level}, temperature 1): pass@1 {m['pass1']:.1%}  "
              f"pass@8 {m['passk']:.1%}  greedy {m['greedy']:.1%}  mean length {m['length']:.1f} tokens")
    print(result)
    model.save(net.eval(), tok, args.out)
    seconds = time.time() - t0
    write_model_card(args, n_params, result, seconds)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"saved {args.out} ({size / 1e6:.1f} MB)  seed {args.seed}  wall time {seconds:.0f}s")


def write_model_card(args, n_params, result, seconds):
    """README.md next to the weights: what this is and the exact command that rebuilt it."""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                     if k not in ("out", "snapshots", "threads", "eval_every"))
    text = f"""# default_model

A {n_params / 1e6:.2f}M-parameter Llama trained from scratch on the synthetic arithmetic task of
`data/tasks.py` (level {args.level}), the model `python a3po.py` trains by default. A share
({args.slip_rate:.0%} per line) of its training solutions contain a slip, so that sampled at
temperature 1 it is right only part of the time: RL has something to sharpen.

Rebuilt by `python tools/train_default_model.py {flags}` in {seconds / 60:.1f} minutes on
{torch.get_num_threads()} CPU thread(s) (torch {torch.__version__}).

{result}
"""
    tmp = os.path.join(args.out, "README.md.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.path.join(args.out, "README.md"))


if __name__ == "__main__":
    main()

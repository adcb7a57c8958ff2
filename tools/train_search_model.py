"""Builds data/search_model/: the tiny Llama for the search task (`a3po.py --data search`).

    python tools/train_search_model.py            # about 15 minutes on one CPU thread

From scratch, with nothing downloaded, like tools/train_default_model.py (whose loss and
learning-rate schedule it reuses):
  1. a byte-level BPE tokenizer (every digit its own token), trained on search problems;
  2. a ~1M-parameter Llama (model.py), trained by supervised next-token prediction on
     prompt -> worked search of the search task (data/tasks.py);
  3. held-out pass@1 / pass@16 at temperature 1 within the task's token budget, and the
     distribution of response lengths; then model.save to a Hugging Face folder.

What the model learns, and what it does not. Its solutions try candidates in a random
order and ignore the low/high verdicts (tasks.search_solution), and a share of them
(--guess-rate) give up early with an unchecked guess. So it learns to check a candidate
exactly but not where to look: sampled at temperature 1 it finds n within the budget
(tasks.SEARCH_MAX_NEW_TOKENS, about 6 tries of 12 candidates) only some of the time, its
responses range from one try to the whole budget, and the shorter search that the verdicts
allow (bisection, tasks.bisection_solution) is there for RL to discover.
"""

import argparse
import os
import random
import sys
import time

import torch

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
sys.path.insert(0, TOOLS)

import model  # noqa: E402
import verifier  # noqa: E402
from data import tasks  # noqa: E402
from train_default_model import SPECIALS, learning_rate, sft_loss  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/search_model", help="output folder (replaced atomically)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guess-rate", type=float, default=0.2, help="share of solutions that stop with a guess")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=384, help="BPE vocabulary size")
    ap.add_argument("--context", type=int, default=320, help="max_position_embeddings (a whole 12-try search fits)")
    ap.add_argument("--max-response-tokens", type=int, default=128,
                    help="cut training solutions after this many tokens (the RL budget is less)")
    ap.add_argument("--eval-size", type=int, default=100, help="held-out problems for pass@k")
    ap.add_argument("--eval-k", type=int, default=16, help="samples per held-out problem")
    ap.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0 = end only)")
    ap.add_argument("--max-new-tokens", type=int, default=tasks.SEARCH_MAX_NEW_TOKENS)
    # One thread: repeatable bit for bit, and no spin-waiting on a busy machine.
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    return ap.parse_args()


def train_tokenizer(vocab_size, seed):
    """Byte-level BPE, digits one token each (as the default model's), on search texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [tasks.format_question(p.prompt) + "\n" + p.solution for p in tasks.search_problems(4000, seed, "train")]
    tk.train_from_iterator(corpus, trainer)
    assert [tk.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    return model.Tokenizer.from_tokenizers(tk, eos_ids=[2], bos_id=1, pad_id=0, chat_style=None)


def sft_examples(searches, tok, rng, guess_rate, max_response):
    """-> [(ids, n_prompt)]: the prompt exactly as the RL trainer builds it, a worked search
    (a guess at guess_rate), EOS; cut after max_response response tokens. The cut drops only
    the tail of the longest searches, past what a response may spend at RL time
    (tasks.SEARCH_MAX_NEW_TOKENS): it saves a third of the compute and teaches nothing used."""
    examples = []
    for s in searches:
        prompt = tasks.build_prompt(tasks.search_text(s), tok, "boxed")
        response = tok.encode(tasks.search_solution(s, rng, guess_rate)) + tok.eos_ids[:1]
        examples.append((prompt + response[:max_response], len(prompt)))
    return examples


def collate(examples, pad_id):
    """-> ids [B, L] right-padded, targets [B, L-1], loss mask [B, L-1] (response tokens only)."""
    L = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), L - 1, dtype=torch.bool)
    for i, (seq, n_prompt) in enumerate(examples):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, n_prompt - 1:len(seq) - 1] = True  # position t predicts token t+1
    return ids, ids[:, 1:], mask


def quantiles(values, qs=(0.0, 0.1, 0.5, 0.9, 1.0)):
    v = sorted(values)
    return [v[min(len(v) - 1, round(q * (len(v) - 1)))] for q in qs]


@torch.no_grad()
def evaluate(net, tok, problems, k, max_new_tokens, seed=0):
    """Held-out numbers at temperature 1: pass@1 (mean over k samples), pass@k, greedy
    accuracy, and how the responses end (found n, guessed wrong, ran out of tokens) and how
    long they are."""
    net.eval()
    prompts = [tasks.build_prompt(p.prompt, tok, "boxed") for p in problems]
    gen = torch.Generator().manual_seed(seed)
    sampled, _ = model.generate(net, [p for p in prompts for _ in range(k)], max_new_tokens, 1.0,
                                eos_ids=tok.eos_ids, generator=gen)
    greedy, _ = model.generate(net, prompts, max_new_tokens, 0.0, eos_ids=tok.eos_ids)
    texts = [tok.decode(r) for r in sampled]
    right = [verifier.score(t, problems[i // k].answer) for i, t in enumerate(texts)]
    truncated = [r[-1] not in tok.eos_ids for r in sampled]
    lengths = [len(r) for r in sampled]
    net.train()
    return dict(
        pass1=sum(right) / len(right),
        passk=sum(any(right[i * k:(i + 1) * k]) for i in range(len(problems))) / len(problems),
        greedy=sum(verifier.score(tok.decode(r), p.answer) for r, p in zip(greedy, problems)) / len(problems),
        truncated=sum(truncated) / len(truncated),
        wrong_stop=sum(not r and not t for r, t in zip(right, truncated)) / len(right),
        tries=sum(t.count(" low\n") + t.count(" high\n") + t.count(" yes\n") for t in texts) / len(texts),
        length=sum(lengths) / len(lengths), length_q=quantiles(lengths),
        length_right=quantiles([n for n, r in zip(lengths, right) if r] or [0]),
    )


def result_text(m, args):
    lo, p10, med, p90, hi = m["length_q"]
    return (f"held-out ({args.eval_size} problems x {args.eval_k} samples, temperature 1, "
            f"{args.max_new_tokens} new tokens at most): pass@1 {m['pass1']:.1%}  pass@{args.eval_k} {m['passk']:.1%}  "
            f"greedy {m['greedy']:.1%}\n"
            f"responses: {m['tries']:.1f} tries on average; {m['truncated']:.1%} ran out of tokens, "
            f"{m['wrong_stop']:.1%} stopped with a wrong answer\n"
            f"length (tokens): mean {m['length']:.1f}, min {lo}, p10 {p10}, median {med}, p90 {p90}, max {hi}; "
            f"correct ones: median {m['length_right'][2]}, p10-p90 {m['length_right'][1]}-{m['length_right'][3]}")


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    print(f"seed {args.seed}  guess rate {args.guess_rate}  steps {args.steps}", flush=True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    tok = train_tokenizer(args.vocab, args.seed)
    cfg = model.ModelConfig(
        model_type="llama", vocab_size=tok.vocab_size, hidden_size=args.hidden,
        intermediate_size=args.intermediate, num_hidden_layers=args.layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=args.context, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True)
    net = model.Transformer(cfg)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, "
          f"{cfg.num_hidden_layers} layers, context {cfg.max_position_embeddings}", flush=True)

    searches = tasks.sample_searches(args.steps * args.batch_size, args.seed, "train")
    held_out = tasks.search_problems(args.eval_size, 0, "test")  # what a3po.py --data search evaluates on
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    net.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        # Batches of random lengths: sorting them by length (less padding) made the model ignore
        # the verdict when deciding to stop (measured: P(box after "yes") stayed at 0.3).
        examples = sft_examples(searches[step * args.batch_size:(step + 1) * args.batch_size], tok, rng,
                                args.guess_rate, args.max_response_tokens)
        loss = sft_loss(net, *collate(examples, tok.pad_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:6.0f}s", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            m = evaluate(net, tok, held_out, args.eval_k, args.max_new_tokens)
            print(f"eval step {step + 1}: " + result_text(m, args).replace("\n", "\n  "), flush=True)

    m = evaluate(net, tok, held_out, args.eval_k, args.max_new_tokens)
    result = result_text(m, args)
    print(result)
    model.save(net.eval(), tok, args.out)
    seconds = time.time() - t0
    write_model_card(args, n_params, result, seconds)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"saved {args.out} ({size / 1e6:.1f} MB)  seed {args.seed}  wall time {seconds:.0f}s")


def write_model_card(args, n_params, result, seconds):
    """README.md next to the weights: what this is and the exact command that rebuilt it."""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                     if k not in ("out", "threads", "eval_every"))
    text = f"""# search_model

A {n_params / 1e6:.2f}M-parameter Llama trained from scratch on the search task of
`data/tasks.py` ("Which n from 1 to {tasks.SEARCH_MAX_N} gives an+b=c?", solved by checking candidates
one line each), the model `a3po.py --data search` trains. Its training solutions try
candidates in a random order, ignoring the low/high verdicts, and {args.guess_rate:.0%} of them stop
early with an unchecked guess: sampled at temperature 1 it finds n within the budget only part
of the time and its response length is its own choice. RL can shorten the search.

Rebuilt by `python tools/train_search_model.py {flags}` in {seconds / 60:.1f} minutes on
{torch.get_num_threads()} CPU thread(s) (torch {torch.__version__}).

```
{result}
```
"""
    tmp = os.path.join(args.out, "README.md.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.path.join(args.out, "README.md"))


if __name__ == "__main__":
    main()

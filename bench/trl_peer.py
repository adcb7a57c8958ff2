"""Peer benchmark: seconds per RL step of our trainer against TRL's GRPOTrainer, same settings.

    python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 \
        && .venv-bench/bin/pip install -r requirements.txt -r requirements-bench.txt   # TRL: bench-only
    .venv-bench/bin/python bench/trl_peer.py                        # 6 pairs x (1 warm-up + 6 timed steps)
    .venv-bench/bin/python bench/trl_peer.py --ppo-epochs 2 --out trl_peer.md
    .venv-bench/bin/python bench/trl_peer.py --pairs 1 --steps 1 --warmup 0 --prompts 4   # a quick smoke test

What it measures. One RL step = sample 16 prompts x 8 completions, score them, (pi_old pass
when needed), and --ppo-epochs optimizer steps over the 128 completions in micro-batches of 32
with gradient accumulation. Ours is `python a3po.py --algo dapo --no-dynamic-sampling
--threads 1 ...` and its step time is `time_step` of the run's metrics.jsonl (split into
time_generate, time_old_logp and the rest). TRL is `trl.GRPOTrainer` in a process of its own;
its step time is the wall time from the callback's on_step_begin to on_step_end, summed over the
--ppo-epochs optimizer steps that use one batch (TRL's num_iterations), and its generation time
is the time spent in GRPOTrainer._generate_single_turn (prompt padding, transformers'
generate, the EOS cut), its pi_old time that of its no-grad log-prob passes, measured by
wrapping those two methods of the trainer instance. The two run one after the other,
interleaved (ours, TRL, ours, TRL, ...), each in a fresh subprocess, so that machine load hits
both alike; the 1-minute load average (os.getloadavg) is printed before each run. The first
--warmup steps of every run are not counted. Per pair the table gives the mean seconds per
timed step of each side and the ratio ours / TRL (< 1: ours is faster); below it, the median
ratio over the pairs.

Both sides run under the interpreter that runs this script (so the same torch build), with
torch.set_num_threads(1) (ours: --threads 1), OMP/MKL_NUM_THREADS=1, fp32 on CPU, and no
network: HF_HUB_OFFLINE=1, report_to="none", WANDB_DISABLED.

Settings, ours -> TRL (GRPOConfig):
    model data/default_model         -> transformers AutoModelForCausalLM (fp32) of the same folder,
                                        PreTrainedTokenizerFast(tokenizer_file=..., add_bos_token=True)
    prompts tasks.build_prompt(boxed)-> the same text; the ids TRL tokenizes are checked to be
                                        exactly ours (BOS included), before and during the run
    the same problems, same order    -> the dataset is the problems ours draws, shuffle_dataset=False
    reward a3po.reward (1 / 0)       -> a TRL reward function calling a3po.reward on the decoded text
    --prompts-per-step 16 --group-size 8 -> num_generations=8, per_device_train_batch_size=32,
                                        gradient_accumulation_steps=4 (=> steps_per_generation=4,
                                        one generate() call for all 128 completions, as ours)
    --micro-batch-size 32            -> per_device_train_batch_size=32
    --max-new-tokens 64              -> max_completion_length=64
    --temperature 1 --top-p 1        -> temperature=1.0, top_p=1.0, top_k=0
    --lr 1e-4 --warmup-steps 0 --lr-schedule constant -> learning_rate=1e-4, lr_scheduler_type="constant"
    AdamW (fused), wd 0, clip 1.0    -> optim="adamw_torch_fused", weight_decay=0, max_grad_norm=1.0
    token-mean (dapo preset)         -> loss_type="dapo" (normalised by the whole batch's tokens)
    --eps-low 0.2 --eps-high 0.28    -> epsilon=0.2, epsilon_high=0.28
    --kl-coef 0 (no reference model) -> beta=0.0 (no reference model is loaded)
    --adv-norm std                   -> scale_rewards="group"
    --ppo-epochs E (1 by default)    -> num_iterations=E (with E = 2 both run a separate no-grad pi_old pass)
    no grad checkpointing, fp32      -> gradient_checkpointing=False, bf16=False, use_cpu=True
    --seed S                         -> seed=S (the sampling RNGs differ all the same)

What is NOT the same (also printed under the table):
  * The advantage eps: TRL divides by std + 1e-4, ours by std + 1e-6 (no effect on time).
  * The completions: each side samples with its own RNG, so lengths differ by chance; the
    table shows each side's mean completion length, since generation time follows length.
  * TRL shuffles the 128 rollouts before cutting them into micro-batches and pads every
    micro-batch to the longest completion of the batch; ours keeps groups in order and trims
    each micro-batch to its own longest response. That is part of what is being compared.
  * Around the timed steps: a3po.py always evaluates before and after training (here 1 problem x
    1 sample) and saves a final checkpoint; TRL does neither. Both are outside the step times.
    TRL's step time leaves out the fetch of the raw prompt rows (before on_step_begin) and its
    logging (after on_step_end); ours leaves out its metrics and logging after the update.

TRL is a benchmark-only dependency (requirements-bench.txt, in a virtualenv of its own, set up
as above; keep torch==2.13.0 on the command line if pip wants to change it): a3po.py, model.py
and the tests never import it.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENV = {  # for both children: one thread, no network, no trackers
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_DISABLED": "true", "WANDB_MODE": "disabled", "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    "CUDA_VISIBLE_DEVICES": "",
}

TRAIN_SIZE = 20000   # a3po.py's --train-size default: the synthetic training problems
LEVEL = 3            # --synthetic-level default
TEMPLATE = "boxed"   # --template default

NOTES = [
    "advantage eps: TRL std + 1e-4, ours std + 1e-6 (no effect on time)",
    "each side samples with its own RNG from the same model and prompts: completion lengths differ by chance "
    "(len columns: mean completion tokens per step)",
    "TRL shuffles the rollouts before splitting them into micro-batches and pads each micro-batch to the batch's "
    "longest completion; ours keeps order and trims each micro-batch to its own longest response",
    "a3po.py evaluates 1 problem x 1 sample before and after training and saves a final checkpoint; "
    "TRL neither; both are outside the step times",
    "TRL step = on_step_begin..on_step_end of its optimizer step(s) (without the prompt-row fetch before and the "
    "logging after); TRL gen = GRPOTrainer._generate_single_turn; TRL old-logp = its no-grad log-prob passes",
    "rest = step - gen - old-logp (ours: reward, advantages, update; TRL: decode, reward, advantages, update)",
]


# ----------------------------------------------------------------------------- shared by both sides

def problems_in_order(n_prompts: int, seed: int):
    """The problems a3po.py (no dynamic sampling) trains on, in its order: step s takes
    positions (s-1)*P .. s*P-1 of its seeded stream."""
    sys.path.insert(0, REPO)
    import a3po
    from data import tasks
    train = tasks.synthetic_problems(TRAIN_SIZE, 0, "train", LEVEL)
    return [train[j] for j in a3po.take_problems(0, n_prompts, len(train), seed)]


# ----------------------------------------------------------------------------- ours

def run_ours(args, log_path: str) -> list[dict]:
    """One a3po.py run in a subprocess -> its train-step metrics, one dict per step."""
    tmp = tempfile.mkdtemp(prefix="a3po-trl-peer-")
    run_dir = os.path.join(tmp, "run")
    total = args.warmup + args.steps
    cmd = [sys.executable, os.path.join(REPO, "a3po.py"), "--algo", "dapo", "--no-dynamic-sampling",
           "--threads", "1", "--model", args.model, "--data", "synthetic", "--synthetic-level", str(LEVEL),
           "--train-size", str(TRAIN_SIZE), "--template", TEMPLATE,
           "--steps", str(total), "--prompts-per-step", str(args.prompts), "--group-size", str(args.group_size),
           "--max-new-tokens", str(args.max_new_tokens), "--temperature", "1.0", "--top-p", "1.0",
           "--gen-batch-size", "0", "--lr", str(args.lr), "--warmup-steps", "0", "--lr-schedule", "constant",
           "--weight-decay", "0", "--grad-clip", "1.0", "--eps-low", "0.2", "--eps-high", "0.28",
           "--kl-coef", "0", "--adv-norm", "std", "--loss-agg", "token-mean",
           "--ppo-epochs", str(args.ppo_epochs), "--micro-batch-size", str(args.micro_batch),
           "--device", "cpu", "--dtype", "float32", "--seed", str(args.seed),
           "--eval-size", "1", "--eval-k", "1", "--log-samples", "0", "--run-dir", run_dir]
    try:
        run_logged(cmd, log_path, "a3po.py", args.timeout)
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        steps = [r for r in rows if r.get("split") == "train"]
        if len(steps) != total:
            raise RuntimeError(f"a3po.py logged {len(steps)} train steps, expected {total}")
        return [dict(step=r["time_step"], gen=r["time_generate"], old=r["time_old_logp"], length=r["length"])
                for r in steps[args.warmup:]]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- TRL

def run_trl(args, log_path: str) -> list[dict]:
    """One TRL run: this script again with --trl-child, in a subprocess -> its timed steps."""
    fd, result = tempfile.mkstemp(prefix="a3po-trl-peer-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--trl-child", result] + child_flags(args)
    try:
        run_logged(cmd, log_path, "the TRL run", args.timeout)
        with open(result) as f:
            return json.load(f)
    finally:
        os.remove(result)


def child_flags(args) -> list[str]:
    return ["--steps", str(args.steps), "--warmup", str(args.warmup), "--ppo-epochs", str(args.ppo_epochs),
            "--model", args.model, "--prompts", str(args.prompts), "--group-size", str(args.group_size),
            "--micro-batch", str(args.micro_batch), "--max-new-tokens", str(args.max_new_tokens),
            "--lr", str(args.lr), "--seed", str(args.seed)]


def trl_child(args):
    """Runs in its own process: GRPOTrainer for warmup + steps RL steps; writes the timed steps as JSON."""
    import torch
    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    sys.path.insert(0, REPO)
    import a3po
    import runs
    import model as our_model
    from data import tasks

    path = runs.resolve_model_path(args.model)
    total = args.warmup + args.steps
    E, B = args.ppo_epochs, args.prompts * args.group_size
    problems = problems_in_order(args.prompts * total, args.seed)

    # The same tokenizer and the same prompt ids as ours (a3po.py builds them with tasks.build_prompt).
    ours = our_model.Tokenizer.from_folder(path)
    with open(os.path.join(path, "tokenizer_config.json")) as f:
        tok_cfg = json.load(f)
    special = {k: tok_cfg[k] for k in ("bos_token", "eos_token", "pad_token") if isinstance(tok_cfg.get(k), str)}
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(path, "tokenizer.json"),
                                  add_bos_token=ours.bos_id is not None, **special)
    assert tok.eos_token_id in ours.eos_ids and tok.pad_token_id == ours.pad_id, "special tokens differ from ours"
    texts = [tasks.format_question(p.prompt, TEMPLATE) + "\n" for p in problems]
    want = [tasks.build_prompt(p.prompt, ours, TEMPLATE) for p in problems]
    got = tok(text=texts)["input_ids"]
    bad = [i for i, (a, b) in enumerate(zip(want, got)) if list(a) != list(b)]
    if bad:
        raise SystemExit(f"TRL's tokenizer does not give our prompt ids (e.g. prompt {bad[0]}: "
                         f"ours {want[bad[0]][:8]}..., TRL's {got[bad[0]][:8]}...): not comparable")
    want_set = {tuple(w) for w in want}

    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    dataset = Dataset.from_dict({"prompt": texts, "problem_index": list(range(len(problems)))})

    def verifier_reward(prompts, completions, problem_index, **kwargs):
        return [a3po.reward(text, problems[i]) for text, i in zip(completions, problem_index)]

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="a3po-trl-peer-out-"), report_to="none", disable_tqdm=True,
        save_strategy="no", eval_strategy="no", logging_steps=10**6, log_completions=False,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, dataloader_num_workers=0,
        seed=args.seed, shuffle_dataset=False, max_steps=total * E,
        num_generations=args.group_size, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=B // args.micro_batch,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch_fused", loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0,
        scale_rewards="group", num_iterations=E, mask_truncated_completions=False,
    )
    times = dict(gen=0.0, old=0.0, lengths=[])
    records, begin = [], {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            begin["t"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            dt = time.perf_counter() - begin["t"]
            if (state.global_step - 1) % E == 0:   # the first optimizer step on a new batch
                records.append(dict(step=0.0, gen=0.0, old=0.0, length=0.0))
            r = records[-1]
            r["step"] += dt
            r["gen"] += times["gen"]
            r["old"] += times["old"]
            if times["lengths"]:
                r["length"] = sum(times["lengths"]) / len(times["lengths"])
            times.update(gen=0.0, old=0.0, lengths=[])

    trainer = GRPOTrainer(model=policy, reward_funcs=verifier_reward, args=config, train_dataset=dataset,
                          processing_class=tok, callbacks=[StepTimer()])

    generate, logps = trainer._generate_single_turn, trainer._get_per_token_logps_and_entropies

    def timed_generate(prompt_ids, *a, **kw):
        unknown = [p for p in prompt_ids if tuple(p) not in want_set]
        if unknown:
            raise SystemExit(f"TRL generated from prompt ids that are not ours: {list(unknown[0])[:8]}...")
        t0 = time.perf_counter()
        out = generate(prompt_ids, *a, **kw)
        times["gen"] += time.perf_counter() - t0
        times["lengths"] += [len(c) for c in out[0]]
        return out

    def timed_logps(*a, **kw):
        if torch.is_grad_enabled():  # the update's own forward: part of the rest
            return logps(*a, **kw)
        t0 = time.perf_counter()
        out = logps(*a, **kw)
        times["old"] += time.perf_counter() - t0
        return out

    trainer._generate_single_turn, trainer._get_per_token_logps_and_entropies = timed_generate, timed_logps
    attn = getattr(policy.config, "_attn_implementation", "?")
    print(f"TRL child: {sum(p.numel() for p in policy.parameters())} parameters, attention {attn}, "
          f"{len(problems)} prompts, {total} RL steps x {E} optimizer step(s)", flush=True)
    trainer.train()
    shutil.rmtree(config.output_dir, ignore_errors=True)
    if len(records) != total:
        raise SystemExit(f"TRL ran {len(records)} RL steps, expected {total}")
    with open(args.trl_child, "w") as f:
        json.dump(records[args.warmup:], f)


# ----------------------------------------------------------------------------- table

def run_logged(cmd: list[str], log_path: str, what: str, timeout: float):
    """Run cmd with its output in log_path; a non-zero exit is an error showing the log's end."""
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout).returncode
    if rc != 0:
        raise RuntimeError(f"{what} exited {rc}; its output ({log_path}) ends:\n{tail(log_path)}")


def tail(path: str, n: int = 30) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


def versions() -> str:
    out = []
    for name in ("torch", "transformers", "trl"):
        try:
            out.append(f"{name} {__import__(name).__version__}")
        except Exception:
            out.append(f"{name} ?")
    return ", ".join(out)


def table(args, pairs) -> str:
    f = lambda v: f"{v:.2f}"
    lines = [
        f"# Ours vs TRL GRPOTrainer: seconds per RL step (mean of {args.steps} timed steps after {args.warmup} "
        f"warm-up, per run)",
        "",
        f"Generated by `python bench/trl_peer.py {' '.join(sys.argv[1:])}` (do not edit by hand).",
        "",
        f"{args.prompts} prompts x {args.group_size} completions, <= {args.max_new_tokens} new tokens, temperature 1, "
        f"top_p 1, --ppo-epochs / num_iterations {args.ppo_epochs}, micro-batch {args.micro_batch}, lr {args.lr}, "
        f"token-mean (dapo), clip 0.2/0.28, beta 0, fp32 CPU, 1 torch thread each; model {args.model}; "
        f"{versions()}; python {platform.python_version()}, {os.cpu_count()} CPUs",
        "",
        "| pair | load ours | ours s/step | load TRL | TRL s/step | ours/TRL | gen ours | gen TRL | old-logp ours "
        "| old-logp TRL | rest ours | rest TRL | len ours | len TRL |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for i, p in enumerate(pairs, 1):
        o, t = p["ours"], p["trl"]
        so, st = mean(o, "step"), mean(t, "step")
        go, gt, oo, ot = mean(o, "gen"), mean(t, "gen"), mean(o, "old"), mean(t, "old")
        ratios.append(so / st)
        lines.append(f"| {i} | {p['load_ours']:.2f} | {f(so)} | {p['load_trl']:.2f} | {f(st)} | {so / st:.3f} | "
                     f"{f(go)} | {f(gt)} | {f(oo)} | {f(ot)} | {f(so - go - oo)} | {f(st - gt - ot)} | "
                     f"{mean(o, 'length'):.1f} | {mean(t, 'length'):.1f} |")
    gen_ratio = statistics.median(mean(p["ours"], "gen") / mean(p["trl"], "gen") for p in pairs)
    rest = lambda rows: mean(rows, "step") - mean(rows, "gen") - mean(rows, "old")
    rest_ratio = statistics.median(rest(p["ours"]) / rest(p["trl"]) for p in pairs)
    lines += ["", f"median ours/TRL over {len(pairs)} pair(s): step {statistics.median(ratios):.3f}, "
                  f"generation {gen_ratio:.3f}, rest {rest_ratio:.3f} (< 1: ours is faster)", "",
              "Not the same on both sides:", ""] + [f"- {n}" for n in NOTES]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=6, help="ours + TRL runs, interleaved")
    ap.add_argument("--steps", type=int, default=6, help="timed RL steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="RL steps per run before the timed ones (not counted)")
    ap.add_argument("--ppo-epochs", type=int, default=1, choices=(1, 2),
                    help="optimizer steps per batch (TRL num_iterations)")
    ap.add_argument("--model", default="data/default_model", help="Hugging Face model folder")
    ap.add_argument("--out", default=None, help="also write the Markdown table to this file")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step (fewer for a smoke test)")
    ap.add_argument("--group-size", type=int, default=8, help="completions per prompt")
    ap.add_argument("--micro-batch", type=int, default=32, help="completions per forward/backward")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="kill a run after this many seconds")
    ap.add_argument("--log-dir", default=None, help="keep each run's output here (else a temporary folder)")
    ap.add_argument("--trl-child", default=None, help=argparse.SUPPRESS)  # internal: run the TRL side
    args = ap.parse_args(argv)
    B = args.prompts * args.group_size
    if min(args.pairs, args.steps, args.prompts, args.micro_batch, args.max_new_tokens) < 1 or args.warmup < 0:
        ap.error("--pairs, --steps, --prompts, --micro-batch, --max-new-tokens must be >= 1, --warmup >= 0")
    if args.group_size < 2 or B % args.micro_batch or args.micro_batch % args.group_size:
        ap.error(f"--micro-batch {args.micro_batch} must divide --prompts x --group-size = {B} and be a multiple of "
                 f"--group-size (>= 2), as TRL needs")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.trl_child:
        return trl_child(args)
    try:
        import trl  # noqa: F401  (fail here, not after the first of our runs)
    except ImportError:
        raise SystemExit("trl is not installed in this interpreter: see the set-up lines of "
                         "`python bench/trl_peer.py --help`'s module docstring (requirements-bench.txt)")
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="a3po-trl-peer-logs-")
    os.makedirs(log_dir, exist_ok=True)
    pairs = []
    for i in range(1, args.pairs + 1):
        p = {}
        for side, run in (("ours", run_ours), ("trl", run_trl)):
            p[f"load_{side}"] = os.getloadavg()[0]
            t0 = time.time()
            p[side] = run(args, os.path.join(log_dir, f"pair{i}-{side}.log"))
            print(f"pair {i}/{args.pairs} {side}: {mean(p[side], 'step'):.2f} s/step "
                  f"(load {p[f'load_{side}']:.2f}, run {time.time() - t0:.0f} s)", flush=True)
        pairs.append(p)
    text = table(args, pairs)
    print("\n" + text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if not args.log_dir:
        shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

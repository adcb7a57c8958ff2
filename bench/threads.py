"""Seconds per training step and per evaluation of the default run at 1 and 2 torch threads (and
torch's default, where that is another count), on the machine as it is and with a competing load.

    python bench/threads.py                        # the default run, shortened, 3 repeats
    python bench/threads.py --repeats 2 --spinners 2
    python bench/threads.py --model smollm2        # SmolLM2-135M-Instruct instead of the tiny model
    python bench/threads.py -- --max-new-tokens 32 # flags after -- go to every a3po.py run

Each run is README's command shortened, `python a3po.py --steps 6 --eval-size 40 --threads T`
(or, with --model smollm2, bench/step.py's SmolLM2 step: 4 prompts x 4 samples, 64 new tokens,
3 steps, 4 held-out problems). Runs go one at a time, interleaved: every repeat runs each
(condition, thread count) once, the thread counts' order reversed every other repeat, so a change
in the machine's load hits all settings alike. Conditions: "as is" (whatever else the machine
runs) and "busy": --spinners processes spinning a Python busy loop (one core each), started by
the bench before the run and stopped after it, standing in for other jobs on the machine.
s / step: a run's mean time_step over its steps after the first (a warm-up); s / eval: its mean
time_eval (the evaluations before and after training); run s: the process's wall time, loading
included; each the median over repeats (range: min-max); 1-min load: the load average as each
run ended (the bench's own run and spinners count). The header says what a3po.py's default
(--threads 0) takes here. Then whether every run's metrics.jsonl, all fields but
time_* and *tokens_per_s, is identical to the first run's (the result must not depend on the
thread count), and if not, which fields differ and by how much.
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

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2 = os.path.join(REPO, "smollm2-hf")
MODELS = {
    "default": ["--steps", "6", "--eval-size", "40"],
    "smollm2": ["--model", SMOLLM2, "--algo", "a3po", "--no-dynamic-sampling", "--synthetic-level", "1",
                "--prompts-per-step", "4", "--group-size", "4", "--micro-batch-size", "16", "--temperature", "0.7",
                "--max-new-tokens", "64", "--steps", "3", "--eval-size", "4", "--eval-k", "1"],
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="default")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each (condition, threads)")
    ap.add_argument("--spinners", type=int, default=1, help="busy-loop processes of the busy condition")
    ap.add_argument("--conditions", nargs="+", choices=("as-is", "busy"), default=["as-is", "busy"])
    ap.add_argument("--timeout", type=float, default=3600, help="seconds a run may take")
    ap.add_argument("extra", nargs="*", help="flags for every a3po.py run (after --)")
    return ap.parse_args()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def outcome(metrics: list[dict]) -> dict:
    """A run's metrics without the fields that measure time, by line ("train 3", "eval 6")."""
    return {f"{m['split']} {m['step']}": {k: v for k, v in m.items()
                                          if not k.startswith("time_") and not k.endswith("tokens_per_s")}
            for m in metrics}


def differences(a, b, where="") -> list[tuple[str, float]]:
    """(field, |a - b|) for each number that differs between two outcomes (inf: not comparable)."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}" if where else k)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if a == b:
        return []
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return [(where, abs(a - b) if numbers else float("inf"))]


def run(threads: int, args) -> dict:
    """One a3po.py run -> its times and outcome."""
    folder = tempfile.mkdtemp(prefix="a3po-bench-threads-")
    cmd = [sys.executable, os.path.join(REPO, "a3po.py"), *MODELS[args.model], "--threads", str(threads),
           "--run-dir", os.path.join(folder, "run"), *args.extra]
    try:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")
        with open(os.path.join(folder, "run", "metrics.jsonl")) as f:
            metrics = [json.loads(ln) for ln in f if ln.strip()]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    steps = [m["time_step"] for m in metrics if m["split"] == "train"][1:]
    evals = [m["time_eval"] for m in metrics if m["split"] == "eval"]
    return dict(step=statistics.mean(steps), eval=statistics.mean(evals), wall=wall, outcome=outcome(metrics),
                load=os.getloadavg()[0])


def spin(n: int) -> list:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list):
    for p in procs:
        p.kill()
        p.wait()


def main():
    args = parse_args()
    if args.model == "smollm2" and not os.path.exists(os.path.join(SMOLLM2, "tokenizer.json")):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "gguf_to_hf.py"), SMOLLM2], check=True)
    default = torch.get_num_threads()
    counts = sorted({1, 2, default})
    sys.path.insert(0, REPO)
    import a3po
    import runs
    auto = runs.choose_threads(a3po.parse_config([*MODELS[args.model], *args.extra]))
    label = {t: f"{t}" + (" (torch's default)" if t == default else "") for t in counts}
    print(f"# {os.cpu_count()} CPUs ({cpu_name()}), torch {torch.__version__} (default {default} threads), "
          f"load average {os.getloadavg()[0]:.1f} at start; model {args.model}, for which a3po.py's --threads 0 "
          f"(auto) takes {auto or default}; {args.repeats} repeats, "
          f"busy = {args.spinners} spinning process(es)", flush=True)
    results = {(c, t): [] for c in args.conditions for t in counts}
    for r in range(args.repeats):
        for cond in args.conditions:
            for t in (counts if r % 2 == 0 else counts[::-1]):
                spinners = spin(args.spinners) if cond == "busy" else []
                try:
                    res = run(t, args)
                finally:
                    stop(spinners)
                results[cond, t].append(res)
                print(f"# repeat {r + 1}, {cond}, {t} thread(s): {res['step']:.2f} s/step, {res['eval']:.2f} s/eval, "
                      f"{res['wall']:.0f} s, load {res['load']:.1f}", flush=True)

    med = lambda rs, k: statistics.median(x[k] for x in rs)
    print(f"\n### {args.model}: seconds per training step and per evaluation, median of {args.repeats} runs\n")
    span = lambda rs, k, f: f"{min(x[k] for x in rs):{f}}-{max(x[k] for x in rs):{f}}"
    print("| condition | threads | s / step | (range) | s / eval | (range) | run s | step vs 1 thread | 1-min load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for cond in args.conditions:
        one = med(results[cond, 1], "step")
        for t in counts:
            rs = results[cond, t]
            print(f"| {cond} | {label[t]} | {med(rs, 'step'):.2f} | {span(rs, 'step', '.1f')} | "
                  f"{med(rs, 'eval'):.2f} | {span(rs, 'eval', '.1f')} | {med(rs, 'wall'):.0f} | "
                  f"{one / med(rs, 'step'):.2f}x | {span(rs, 'load', '.1f')} |")

    first = results[args.conditions[0], 1][0]["outcome"]
    print()
    for t in counts:
        diffs = [d for c in args.conditions for x in results[c, t] for d in differences(first, x["outcome"])]
        if not diffs:
            print(f"{label[t]} thread(s): metrics identical to the first 1-thread run in all "
                  f"{len(args.conditions) * args.repeats} runs")
        else:
            worst = {}
            for field, d in diffs:
                worst[field] = max(d, worst.get(field, 0.0))
            print(f"{label[t]} thread(s): metrics DIFFER from the first 1-thread run in {len(worst)} field(s); "
                  "largest |difference|: " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(worst.items(),
                                                                                    key=lambda kv: -kv[1])[:8]))


if __name__ == "__main__":
    main()

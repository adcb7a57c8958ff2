"""The sample-polarity study: which of the paper's claims hold at our small scale?

    python bench/polarity.py                 # full study: 9 variants x 4 seeds (~45 min on 2 idle cores, estimated)
    python bench/polarity.py --quick         # smaller and shorter (< 10 min): a smoke test of the study
    python bench/polarity.py --task search   # the same on the search task: 10 variants x 4 seeds (2 h, measured)
    python bench/polarity.py --task search --quick   # its smoke test (~6 min with --jobs 2 on 2 idle cores)
    python bench/polarity.py --report-only   # rebuild the report from the runs already on disk
    python bench/polarity.py -- --model PATH # flags after -- go to every a3po.py run

Two tasks (--task): `synthetic`, the default run's arithmetic task and model, where a worked
solution's length is fixed by the problem; and `search` (data/tasks.py, data/search_model/),
where the model searches for n by checking candidates, so it chooses how long it reasons and
the claims about response length and pass@k can show. On each it trains, from the same
starting model with the same step budget:
  - the presets grpo, dapo, psr, nsr, a3po (docs/method.md section 5), and w-reinforce on the search task;
  - four token-level ablations of a3po (docs/method.md section 3), each changing ONE choice.
Each run is `python a3po.py --algo X --seed S --run-dir RUNS/<variant>-seed<S> ...` in its own
process (so --jobs 2 can run two at once, and a crash or Ctrl-C loses one run, not the study).
A finished run leaves RUNS/<variant>-seed<S>/done.json and is skipped next time; an
interrupted one continues from its last checkpoint (`a3po.py --resume`), so the study can be
stopped and restarted at any point.

Then it reads every run's metrics.jsonl (train lines: accuracy, entropy, length, split by
polarity; eval lines: held-out avg@16, pass@1/4/16, sampled at the training temperature) and
writes to --out:
  polarity.md              tables (mean +- std over seeds), whether the held-out curves
                           have flattened, and the claims, each judged holds / does not
                           hold / unclear by the stated RULE (`compare`)
  polarity.json            the per-seed numbers behind the tables (runs/ is not committed)
  polarity-*.png           curves vs step, one line per variant, a band for the seed spread
                           (needs matplotlib: pip install -r requirements-plot.txt; without it
                           the plots are skipped with a message and everything else is written)
--quick names its outputs polarity-quick.* so it never overwrites the full study's; the search
task's are polarity-search.* and polarity-search-quick.*.
The distribution of held-out response lengths (not only their mean, which is all a3po.py
logs) comes from drawing the held-out samples of the first and last evaluation again, with
the same problems, prompts and random stream as a3po.py's `evaluate` (checked: their mean
equals the logged one); each run keeps them in heldout_lengths.json.
Everything but wall times is a deterministic function of the seeds (and of --threads: the
float summation order of the matrix products depends on the thread count).
"""

import argparse
import concurrent.futures
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from data.tasks import read_jsonl  # noqa: E402  (the project's JSONL reader: bad lines name file:line)
A3PO = os.path.join(REPO, "a3po.py")

# ----------------------------------------------------------------------------- what runs

# name -> (a3po.py flags, group, what it tests). Ablations start from a3po and change ONE choice.
VARIANTS = {
    "grpo": (["--algo", "grpo"], "preset", "both polarities, sample-level advantages (GRPO)"),
    "dapo": (["--algo", "dapo"], "preset", "GRPO + clip-higher, token-mean, dynamic sampling (DAPO)"),
    "psr": (["--algo", "psr"], "preset", "positive samples only (A = R)"),
    "nsr": (["--algo", "nsr"], "preset", "negative samples only (A = R - 1)"),
    "w-reinforce": (["--algo", "w-reinforce"], "preset", "negatives weighted up: A = 0.1 if right, -1 if wrong"),
    "a3po": (["--algo", "a3po"], "preset", "DAPO + asymmetric, adaptive token boost (A3PO)"),
    "a3po-pos-high": (["--algo", "a3po", "--pos-tail", "confident"], "ablation",
                      "positive samples: boost HIGH-prob tokens (A3PO: low)"),
    "a3po-neg-low": (["--algo", "a3po", "--neg-tail", "uncertain"], "ablation",
                     "negative samples: boost LOW-prob tokens (A3PO: high)"),
    # The tails are named by intent, so the entropy criterion alone means the same tokens: a
    # low-probability choice where entropy is high, a confident one where it is low.
    "a3po-entropy": (["--algo", "a3po", "--token-criterion", "entropy"],
                     "ablation", "select by entropy (pos: high, neg: low) instead of probability"),
    "a3po-constant": (["--algo", "a3po", "--alpha-schedule", "constant"], "ablation",
                      "constant boost alpha0 (A3PO: decays linearly to 1)"),
    # A3PO's constants (run them with --variants): is a constant why A3PO does not beat DAPO?
    # On the search task the most probable 20% of a negative sample's tokens are mostly forced
    # ones (copied numbers, sums) with probability ~1 and so ~no gradient: a larger rho reaches
    # the choices (which candidate, when to stop).
    "a3po-rho0.5": (["--algo", "a3po", "--rho-pos", "0.5", "--rho-neg", "0.5"], "sweep", "rho 0.5 (A3PO: 0.2)"),
    "a3po-rho0.05": (["--algo", "a3po", "--rho-pos", "0.05", "--rho-neg", "0.05"], "sweep", "rho 0.05 (A3PO: 0.2)"),
    "a3po-alpha4": (["--algo", "a3po", "--alpha0-pos", "4", "--alpha0-neg", "4"], "sweep", "alpha0 4 (A3PO: 2)"),
    "a3po-cosine": (["--algo", "a3po", "--alpha-schedule", "cosine"], "sweep", "cosine decay (A3PO: linear)"),
}
PRESETS = [v for v in VARIANTS if VARIANTS[v][1] == "preset"]
ABLATIONS = [v for v in VARIANTS if VARIANTS[v][1] == "ablation"]
SWEEP = [v for v in VARIANTS if VARIANTS[v][1] == "sweep"]  # not in any default --variants

EVAL_K = (1, 4, 16)  # held-out pass@k; 16 samples per problem at the training temperature
# Sizes. Everything else (batch, group size, learning rate, ...) is a3po.py's default run.
# Full: 36 runs of ~150 CPU-seconds each with the shipped model (measured: ~2.6 s a step, ~7 s
# an evaluation of 100 problems x 16 samples): ~45 min with --jobs 2 on 2 idle cores. Four
# seeds, not three: with n seeds the 95% margin of the claim rule is t(n-1) standard errors,
# 4.3 at 3 seeds but 3.2 at 4.
# The default task's study was made before w-reinforce joined the variants: it keeps its 9.
SYNTHETIC_VARIANTS = [v for v in VARIANTS if v != "w-reinforce" and v not in SWEEP]
SEARCH_VARIANTS = [v for v in VARIANTS if v not in SWEEP]
FULL = dict(seeds=[0, 1, 2, 3], steps=40, eval_every=10, eval_size=100, variants=SYNTHETIC_VARIANTS)
# Quick: every variant, 2 seeds (the smallest number with a spread), 6 steps: 18 runs of ~26
# CPU-seconds. A smoke test of the whole pipeline; its numbers mean little.
QUICK = dict(seeds=[0, 1], steps=6, eval_every=3, eval_size=24, variants=SYNTHETIC_VARIANTS)
# The search task: responses are ~3x longer than the arithmetic task's (up to its budget of
# tasks.SEARCH_MAX_NEW_TOKENS), so a step costs more: measured with --jobs 2 on one thread each,
# ~6.3 s a step (60% of it the update), ~8 s an evaluation of 64 problems x 16 samples.
# Full: 40 runs of 4.9-6.9 min (48 steps, 5 evaluations, the length redraws), measured 120.5 min
# with --jobs 2 on 2 idle cores. 64 held-out problems, not 100, to fit 48 steps (by when the
# held-out curves have stopped rising) into 2 hours.
# Quick: 20 runs of ~33 s, measured 10.9 min with --jobs 1 while other jobs shared the machine.
SEARCH_FULL = dict(seeds=[0, 1, 2, 3], steps=48, eval_every=12, eval_size=64, variants=SEARCH_VARIANTS)
SEARCH_QUICK = dict(seeds=[0, 1], steps=4, eval_every=2, eval_size=16, variants=SEARCH_VARIANTS)
SIZES = {("synthetic", False): FULL, ("synthetic", True): QUICK, ("search", False): SEARCH_FULL,
         ("search", True): SEARCH_QUICK}

# Claim-judging rule (see `compare`): a difference counts when it exceeds both a 95% confidence
# margin from the seed spread and this floor (below it, differences mean nothing at our scale).
FLOORS = {"pass@1": 0.01, "pass@4": 0.01, "pass@16": 0.01, "entropy": 0.01, "length": 0.5, "eval_length": 0.5}
# Student-t 97.5% quantiles by degrees of freedom. With 3 seeds the seed spread is itself
# a rough guess, and 2 standard errors would call noise a finding (the 95% factor is 4.3 at 2
# degrees of freedom); a df between two entries uses the smaller one (the larger factor).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 1000: 1.960}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, seeds and eval problems (< 10 min)")
    ap.add_argument("--task", choices=("synthetic", "search"), default="synthetic",
                    help="synthetic: the default run's arithmetic task and model; search: the search task "
                         "and data/search_model (outputs polarity-search*)")
    ap.add_argument("--out", default=os.path.join(REPO, "docs"), help="where the report and plots go")
    ap.add_argument("--runs-dir", default=None, help="where the runs go (default runs/polarity[-quick])")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (full: 0 1 2 3; quick: 0 1)")
    ap.add_argument("--steps", type=int, help="training steps of every run (full: 40; quick: 6)")
    ap.add_argument("--eval-every", type=int, help="held-out evaluation every N steps (full: 10; quick: 3)")
    ap.add_argument("--eval-size", type=int, help="held-out problems (full: 100; quick: 24)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="which variants (default: the task's presets and ablations; "
                    "the constants sweep a3po-rho0.5 ... only when named)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--timeout", type=float, default=3600, help="kill a run after this many seconds")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    ap.add_argument("extra", nargs="*", help="flags for every a3po.py run (after --), e.g. -- --model PATH")
    args = ap.parse_args(argv)
    base = SIZES[args.task, args.quick]
    for key in ("seeds", "steps", "eval_every", "eval_size", "variants"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    args.name = "polarity" + ("-search" if args.task == "search" else "") + ("-quick" if args.quick else "")
    args.runs_dir = args.runs_dir or os.path.join(REPO, "runs", args.name)
    return args


# ----------------------------------------------------------------------------- running

def study_settings(args) -> dict:
    """What makes runs comparable. A runs dir holds ONE study: mixing runs made with other
    settings would silently compare different things, so `check_settings` refuses that."""
    settings = dict(steps=args.steps, eval_every=args.eval_every, eval_size=args.eval_size,
                    eval_k=list(EVAL_K), extra=list(args.extra))
    if args.task != "synthetic":  # (so the default task's settings.json stays as it was)
        settings["task"] = args.task
    return settings


def task_flags(settings: dict) -> list[str]:
    """a3po.py flags that pick the task: none for the default task; `--data search` brings the
    search model and the task's token budget with it (flags after -- still override them)."""
    return ["--data", settings["task"]] if settings.get("task", "synthetic") != "synthetic" else []


def read_settings(runs_dir: str) -> dict:
    path = os.path.join(runs_dir, "settings.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def check_settings(runs_dir: str, settings: dict):
    old = read_settings(runs_dir)
    if old:
        if old != settings:
            raise SystemExit(f"{runs_dir} holds runs made with other settings:\n  there: {old}\n  now:   {settings}\n"
                             f"use another --runs-dir, or delete {runs_dir} to start over")
        return
    os.makedirs(runs_dir, exist_ok=True)
    write_atomic(os.path.join(runs_dir, "settings.json"), json.dumps(settings, indent=2))


def run_dir_of(runs_dir: str, variant: str, seed: int) -> str:
    return os.path.join(runs_dir, f"{variant}-seed{seed}")


def run_command(variant: str, seed: int, settings: dict, run_dir: str) -> list[str]:
    """The a3po.py command of one run. A run with a checkpoint continues from it."""
    if os.path.exists(os.path.join(run_dir, "checkpoint", "trainer_state.json")) or \
            os.path.exists(os.path.join(run_dir, "checkpoint.old", "trainer_state.json")):
        return [sys.executable, A3PO, "--resume", run_dir]
    return [sys.executable, A3PO, *VARIANTS[variant][0], "--seed", str(seed), "--run-dir", run_dir,
            "--steps", str(settings["steps"]), "--eval-every", str(settings["eval_every"]),
            "--save-every", str(settings["eval_every"]),  # so an interrupted run loses little
            "--eval-size", str(settings["eval_size"]), "--eval-k", *map(str, settings["eval_k"]),
            *task_flags(settings), *settings["extra"]]


def finished(run_dir: str, steps: int) -> bool:
    """Did the run log its final held-out evaluation (the last thing a3po.py does)?"""
    path = os.path.join(run_dir, "metrics.jsonl")
    return os.path.exists(path) and any(m["step"] == steps for m in read_metrics(path)[1])


def is_done(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, "done.json"))


LIVE = set()  # the a3po.py processes running now (see forward_sigterm)


def run_one(variant: str, seed: int, settings: dict, runs_dir: str, threads: int, timeout: float) -> dict:
    """Trains one run in a subprocess (output in RUN_DIR/train.log). -> dict(name, seconds, error)."""
    run_dir = run_dir_of(runs_dir, variant, seed)
    os.makedirs(run_dir, exist_ok=True)
    cmd = run_command(variant, seed, settings, run_dir)
    # One process per run with `threads` threads each: with tiny models, more threads than
    # cores only makes them wait for each other.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        LIVE.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
            error = None if rc == 0 else f"exit code {rc} (see {run_dir}/train.log)"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            error = f"timed out after {timeout:.0f} s (rerun to continue from its last checkpoint)"
        finally:
            LIVE.discard(proc)
    seconds = time.time() - t0
    if error is None and not finished(run_dir, settings["steps"]):
        # a3po.py exits 0 after a Ctrl-C too (having saved a checkpoint): only the final
        # evaluation in metrics.jsonl shows that the run went the whole way.
        error = f"stopped before step {settings['steps']} (rerun to continue from its checkpoint)"
    if error is None:
        try:
            record_lengths(run_dir, runs_dir, seed, threads)
        except Exception as e:  # noqa: BLE001 (reported like a failed run, the study goes on)
            error = f"held-out lengths: {type(e).__name__}: {e}"
    if error is None:
        write_atomic(os.path.join(run_dir, "done.json"), json.dumps(dict(seconds=seconds, command=cmd), indent=2))
    return dict(name=f"{variant}-seed{seed}", seconds=seconds, error=error)


LENGTHS = "heldout_lengths.json"
START_LOCK = threading.Lock()  # two runs of one seed must not draw its start samples at once


def redrawn_evaluation(config: dict, model_path: str, threads: int):
    """a3po.py's `evaluate` of `model_path` with a run's settings (its config.json): the same
    problems, prompts, sampling settings and random stream as the run's own evaluations, so the
    same responses. -> (the eval dict, every sample as `evaluate` hands it back, the problems)."""
    import dataclasses

    import torch

    import a3po
    import runs

    if threads:
        torch.set_num_threads(threads)
    fields = {f.name for f in dataclasses.fields(a3po.Config)}  # a config.json from an older a3po.py too
    as_tuple = lambda v: (v,) if isinstance(v, str) else tuple(v)
    cfg = a3po.Config(**{k: as_tuple(v) if k in ("eval_k", "eval_data") and v is not None else v
                         for k, v in config.items() if k in fields})
    cfg.model = model_path
    policy, tok, (held_out,) = runs.load_for_eval(cfg)
    samples = []
    ev = a3po.evaluate(policy, tok, cfg, held_out.problems, held_out.ids, samples)
    return ev, samples, held_out.problems


def held_out_samples(config: dict, model_path: str, threads: int) -> dict:
    """The held-out samples of a3po.py's `evaluate` for `model_path`, drawn again (see
    `redrawn_evaluation`). -> their lengths, correctness and truncation, one entry per sample
    (problem-major)."""
    _, samples, _ = redrawn_evaluation(config, model_path, threads)
    return dict(length=[x["length"] for x in samples], correct=[int(x["reward"]) for x in samples],
                truncated=[int(x["truncated"]) for x in samples])


def record_lengths(run_dir: str, runs_dir: str, seed: int, threads: int):
    """RUN_DIR/heldout_lengths.json: the samples of the run's first and last evaluation (start:
    the starting model, drawn once per seed into RUNS/start-seed<S>/). Refuses to write them if
    their mean length is not the one a3po.py logged: then they are not the same samples."""
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    evals = read_metrics(os.path.join(run_dir, "metrics.jsonl"))[1]
    start_path = os.path.join(runs_dir, f"start-seed{seed}", LENGTHS)
    with START_LOCK:
        if not os.path.exists(start_path):
            os.makedirs(os.path.dirname(start_path), exist_ok=True)
            write_atomic(start_path, json.dumps(held_out_samples(config, config["model"], threads)))
    with open(start_path) as f:
        start = json.load(f)
    end = held_out_samples(config, os.path.join(run_dir, "checkpoint"), threads)
    for when, samples, ev in (("start", start, evals[0]), ("end", end, evals[-1])):
        mean = sum(samples["length"]) / len(samples["length"])
        if abs(mean - ev["length"]) > 1e-6:
            raise ValueError(f"{run_dir}: redrawn {when} samples have mean length {mean:.4f}, a3po.py logged "
                             f"{ev['length']:.4f} at step {ev['step']}: not the same samples")
    write_atomic(os.path.join(run_dir, LENGTHS), json.dumps(dict(start=start, end=end)))


def run_all(args, settings: dict) -> list[dict]:
    """Every (variant, seed) not yet done, seed-major: after each seed the report already has
    one run of every variant, so an early stop still leaves something to look at."""
    todo = [(v, s) for s in args.seeds for v in args.variants if not is_done(run_dir_of(args.runs_dir, v, s))]
    done = len(args.seeds) * len(args.variants) - len(todo)
    print(f"{len(todo)} run(s) to train, {done} already done, in {args.runs_dir} ({args.jobs} at a time)", flush=True)
    results, t0 = [], time.time()
    previous = signal.signal(signal.SIGTERM, forward_sigterm)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = [pool.submit(run_one, v, s, settings, args.runs_dir, args.threads, args.timeout) for v, s in todo]
        for fut in concurrent.futures.as_completed(futures):
            if fut.cancelled():
                continue
            r = fut.result()
            results.append(r)
            print(f"[{len(results)}/{len(todo)}] {r['name']}: {r['error'] or 'ok'} in {r['seconds']:.0f} s "
                  f"(study {time.time() - t0:.0f} s)", flush=True)
            if r["error"] and not any(f.cancelled() for f in futures):
                # Usually the same for every run (a bad flag, no model): stop early.
                print("a run failed: starting no new run", flush=True)
                for f in futures:
                    f.cancel()
    except KeyboardInterrupt:
        # The running a3po.py processes got the Ctrl-C too: they finish their step, checkpoint and
        # stop. Start nothing new, wait for them, and say how to go on.
        pool.shutdown(wait=True, cancel_futures=True)
        raise SystemExit("interrupted: run the same command again to continue where the study stopped")
    finally:
        pool.shutdown(wait=True)
        signal.signal(signal.SIGTERM, previous)
    return results


def forward_sigterm(signum, frame):
    """`kill` or a job scheduler's time limit reaches only this process, not the runs it started:
    pass it on to them as a Ctrl-C (they checkpoint and stop), then stop like on Ctrl-C."""
    for proc in list(LIVE):
        proc.send_signal(signal.SIGINT)
    raise KeyboardInterrupt


def write_atomic(path: str, text: str):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- reading runs

TRAIN_KEYS = ("accuracy", "entropy", "entropy_pos", "entropy_neg", "length", "length_pos", "length_neg")
EVAL_KEYS = tuple(f"pass@{k}" for k in EVAL_K) + ("eval_length",)


def read_metrics(path: str) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl -> (train lines, eval lines), each sorted by step. Eval lines' `length`
    (held-out sampled length) is renamed eval_length: train lines have their own `length`."""
    train, evals = [], []
    for _, m in read_jsonl(path):
        if m.get("split") == "eval":
            evals.append(dict(m, eval_length=m.get("length")))
        else:
            train.append(m)
    return sorted(train, key=lambda m: m["step"]), sorted(evals, key=lambda m: m["step"])


def present(v) -> bool:
    return v is not None and not math.isnan(v)


def nanmean(values) -> float:
    """Mean of the values that are not None / NaN (a batch may hold no sample of one polarity,
    and PSR never has negative samples: those steps log null); NaN if none is left."""
    vals = [v for v in values if present(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def end_window(steps: int) -> int:
    """Training-batch metrics are noisy step to step: the 'end' value is their mean over the
    last fifth of training (at least one step)."""
    return max(1, round(steps / 5))


def summarize_run(train: list[dict], evals: list[dict]) -> dict:
    """One run -> {"start": {...}, "end": {...}}.
    Held-out (eval) metrics: start = the step-0 evaluation, end = the last one.
    Training-batch metrics: start = step 1 (the batch the untrained model sampled; no update
    has happened yet), end = mean over the last `end_window` steps."""
    w = end_window(len(train))
    first_eval, last_eval = evals[0], evals[-1]
    start = {k: first_eval.get(k) for k in EVAL_KEYS} | {k: train[0].get(k) for k in TRAIN_KEYS}
    end = {k: last_eval.get(k) for k in EVAL_KEYS} | {k: nanmean(m.get(k) for m in train[-w:]) for k in TRAIN_KEYS}
    return dict(start=start, end=end, steps=train[-1]["step"], eval_step=last_eval["step"])


def finished_runs(runs_dir: str) -> list[tuple[str, int]]:
    """(variant, seed) of every finished run in runs_dir (done.json present), in VARIANTS order.
    The report covers all of them, whatever --variants / --seeds this invocation trained."""
    found = []
    for name in os.listdir(runs_dir) if os.path.isdir(runs_dir) else []:
        m = re.fullmatch(r"(.+)-seed(\d+)", name)
        if m and m.group(1) in VARIANTS and is_done(os.path.join(runs_dir, name)):
            found.append((m.group(1), int(m.group(2))))
    return sorted(found, key=lambda vs: (list(VARIANTS).index(vs[0]), vs[1]))


def load_runs(runs_dir: str) -> dict:
    """-> {variant: {seed: {"train": [...], "eval": [...], "summary": {...}, "seconds": s}}} for
    the finished runs; unfinished ones are left out of the report."""
    runs = {}
    for v, s in finished_runs(runs_dir):
        run_dir = run_dir_of(runs_dir, v, s)
        train, evals = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        if not train or not evals:
            raise ValueError(f"{run_dir}/metrics.jsonl: no train or no eval lines in a finished run")
        with open(os.path.join(run_dir, "done.json")) as f:
            seconds = json.load(f).get("seconds")
        lengths = None
        if os.path.exists(os.path.join(run_dir, LENGTHS)):  # studies made before it was recorded have none
            with open(os.path.join(run_dir, LENGTHS)) as f:
                lengths = json.load(f)
        runs.setdefault(v, {})[s] = dict(train=train, eval=evals, summary=summarize_run(train, evals),
                                         seconds=seconds, lengths=lengths)
    return runs


# ----------------------------------------------------------------------------- statistics

def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) of the non-missing values; std is NaN for n < 2."""
    vals = [v for v in values if present(v)]
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else float("nan")
    return mean, std, n


def per_seed(runs: dict, variant: str, when: str, metric: str) -> dict:
    """{seed: value} of one summary number of one variant."""
    return {s: r["summary"][when][metric] for s, r in runs.get(variant, {}).items()}


# ----------------------------------------------------------------------------- claims

# Each claim is one or more checks "A > B"; a side is (variant, "start" | "end", metric).
# They restate the paper's findings (docs/method.md, "The idea"), plus the ones implied by
# A3PO's design choices (the ablations). Length claims use the held-out length: it is
# measured on the same problems for every run, whereas with dynamic sampling (dapo, a3po) the
# training batch keeps only mixed-reward groups.
CLAIMS = [
    ("PSR sharpens the policy: token entropy falls during training",
     [(("psr", "start", "entropy"), ("psr", "end", "entropy"))]),
    ("PSR shortens responses",
     [(("psr", "start", "eval_length"), ("psr", "end", "eval_length"))]),
    ("PSR hurts pass@k at large k: pass@16 falls below the starting model's",
     [(("psr", "start", "pass@16"), ("psr", "end", "pass@16"))]),
    ("NSR keeps entropy higher than PSR",
     [(("nsr", "end", "entropy"), ("psr", "end", "entropy"))]),
    ("NSR keeps responses longer than PSR",
     [(("nsr", "end", "eval_length"), ("psr", "end", "eval_length"))]),
    ("NSR explores: its pass@16 beats PSR's",
     [(("nsr", "end", "pass@16"), ("psr", "end", "pass@16"))]),
    # GRPO is the both-polarity counterpart without dynamic sampling, so it samples as many
    # responses per step as PSR and NSR do.
    ("Neither polarity alone is best: GRPO (both) beats PSR and NSR on pass@1",
     [(("grpo", "end", "pass@1"), ("psr", "end", "pass@1")), (("grpo", "end", "pass@1"), ("nsr", "end", "pass@1"))]),
    ("A3PO beats GRPO on pass@1", [(("a3po", "end", "pass@1"), ("grpo", "end", "pass@1"))]),
    ("A3PO beats DAPO on pass@1", [(("a3po", "end", "pass@1"), ("dapo", "end", "pass@1"))]),
    ("A3PO beats GRPO and DAPO on pass@16",
     [(("a3po", "end", "pass@16"), ("grpo", "end", "pass@16")), (("a3po", "end", "pass@16"), ("dapo", "end", "pass@16"))]),
    ("A3PO keeps entropy higher than GRPO", [(("a3po", "end", "entropy"), ("grpo", "end", "entropy"))]),
    ("A3PO keeps entropy higher than DAPO", [(("a3po", "end", "entropy"), ("dapo", "end", "entropy"))]),
    ("Positive samples: boosting low-prob tokens beats boosting high-prob ones (pass@1)",
     [(("a3po", "end", "pass@1"), ("a3po-pos-high", "end", "pass@1"))]),
    ("Positive samples: boosting low-prob tokens keeps entropy higher than boosting high-prob ones",
     [(("a3po", "end", "entropy"), ("a3po-pos-high", "end", "entropy"))]),
    ("Negative samples: boosting high-prob tokens beats boosting low-prob ones (pass@1)",
     [(("a3po", "end", "pass@1"), ("a3po-neg-low", "end", "pass@1"))]),
    ("Selecting tokens by probability beats selecting by entropy (pass@1)",
     [(("a3po", "end", "pass@1"), ("a3po-entropy", "end", "pass@1"))]),
    ("An adaptive (decaying) boost beats a constant one (pass@1)",
     [(("a3po", "end", "pass@1"), ("a3po-constant", "end", "pass@1"))]),
    # Zhu et al.: weighting negative samples up keeps the pass@k that PSR and GRPO lose at large k.
    ("W-REINFORCE (negatives weighted up) beats GRPO on pass@16",
     [(("w-reinforce", "end", "pass@16"), ("grpo", "end", "pass@16"))]),
]

RULE = ("Each check compares A > B over seeds: d = mean(A) - mean(B). When A and B come from the same "
        "runs (start vs end) they are paired by seed: se = std(A - B) / sqrt(n), df = n - 1; otherwise "
        "(Welch) se = sqrt(std(A)^2 / n_A + std(B)^2 / n_B) with the Welch-Satterthwaite df (sample std, "
        "ddof = 1). margin = max(t(0.975, df) * se, floor), floor = "
        + ", ".join(f"{k} {v:g}" for k, v in FLOORS.items()) + " (pass@k as a fraction). "
        "**holds** if d > margin, **does not hold** if d < -margin, **unclear** if |d| <= margin "
        "(within the noise) or a side has fewer than 2 seeds. A claim with several checks holds if all "
        "hold, does not hold if any does not hold, else is unclear.")


def t975(df: float) -> float:
    """95% two-sided Student-t factor for df degrees of freedom (table lookup, rounding df down)."""
    return T975[max([k for k in T975 if k <= max(df, 1)])]


def paired_se(va: dict, vb: dict) -> tuple[float, float, float, int]:
    """Same runs measured twice (e.g. start and end): pair by seed, which removes the
    seed-to-seed spread both share. -> (d, se, df, n)."""
    diffs = [va[s] - vb[s] for s in va if s in vb and present(va[s]) and present(vb[s])]
    d, sd, n = mean_std(diffs)
    return d, (sd / math.sqrt(n) if n > 1 else float("nan")), n - 1, n


def welch_se(va: dict, vb: dict) -> tuple[float, float, float, int]:
    """Two sets of runs: difference of means, its standard error and Welch-Satterthwaite df."""
    (ma, sa, na), (mb, sb, nb) = mean_std(va.values()), mean_std(vb.values())
    if na < 2 or nb < 2:
        return ma - mb, float("nan"), 0, min(na, nb)
    qa, qb = sa ** 2 / na, sb ** 2 / nb
    se = math.sqrt(qa + qb)
    df = (qa + qb) ** 2 / (qa ** 2 / (na - 1) + qb ** 2 / (nb - 1)) if se > 0 else na + nb - 2
    return ma - mb, se, df, min(na, nb)


def compare(runs: dict, a: tuple, b: tuple) -> dict:
    """One check A > B -> dict(verdict, d, se, margin, a_mean, b_mean, n); see RULE."""
    va, vb = per_seed(runs, *a), per_seed(runs, *b)
    d, se, df, n = (paired_se if a[0] == b[0] else welch_se)(va, vb)
    enough = n >= 2
    margin = max(t975(df) * se, FLOORS[a[2]]) if enough else float("nan")
    verdict = "unclear" if not enough or abs(d) <= margin else ("holds" if d > margin else "does not hold")
    return dict(a=a, b=b, a_mean=mean_std(va.values())[0], b_mean=mean_std(vb.values())[0],
                d=d, se=se, df=df, margin=margin, n=n, verdict=verdict, enough=enough)


def judge(runs: dict, checks: list) -> tuple[str, list[dict]]:
    """A claim's verdict from its checks (see RULE). 'not run' when a variant has no finished run."""
    if any(side[0] not in runs for check in checks for side in check):
        return "not run", []
    results = [compare(runs, a, b) for a, b in checks]
    verdicts = {r["verdict"] for r in results}
    if verdicts == {"holds"}:
        return "holds", results
    return ("does not hold" if "does not hold" in verdicts else "unclear"), results


# Have the curves flattened? The same rule, applied to the second half of training: a run
# counts as still moving when its held-out metric changed from the middle evaluation to the
# last by more than the margin (paired by seed: the same runs, measured twice). Half the run,
# not the last interval: a slow steady drift hides in one interval's noise. "Within the noise"
# is not "flat" when the noise is wide, so flat needs the whole 95% interval of the change to
# lie within a tolerance (an equivalence test); otherwise the verdict is unclear.
PLATEAU_METRICS = ("pass@1", "pass@16", "eval_length")
FLAT_TOLERANCE = {"pass@1": 0.05, "pass@16": 0.05, "eval_length": 5.0}  # 5 points of pass@k, 5 tokens


def middle_eval(evals: list[dict]) -> int:
    """Index of the first evaluation at or past half of training (never the last one)."""
    half = evals[-1]["step"] / 2
    return min(next(i for i, e in enumerate(evals) if e["step"] >= half), len(evals) - 2)


def second_half_change(runs: dict, variant: str, metric: str) -> dict | None:
    """Held-out `metric` at the last evaluation minus the middle one, paired by seed ->
    dict(d, margin, n, verdict: rising | falling | flat | unclear, steps); None if the runs
    have fewer than two evaluations. Rising / falling: |d| > margin (the claims' rule); flat:
    |d| + margin <= FLAT_TOLERANCE; unclear: neither, or fewer than 2 seeds."""
    seeds = {s: r for s, r in runs.get(variant, {}).items() if len(r["eval"]) >= 2}
    if not seeds:
        return None
    last = {s: r["eval"][-1][metric] for s, r in seeds.items()}
    middle = {s: r["eval"][middle_eval(r["eval"])][metric] for s, r in seeds.items()}
    d, se, df, n = paired_se(last, middle)
    evals = next(iter(seeds.values()))["eval"]
    steps = (evals[middle_eval(evals)]["step"], evals[-1]["step"])
    if n < 2:
        return dict(d=d, margin=float("nan"), n=n, verdict="unclear", steps=steps)
    margin = max(t975(df) * se, FLOORS[metric])
    if abs(d) > margin:
        verdict = "rising" if d > 0 else "falling"
    else:
        verdict = "flat" if abs(d) + margin <= FLAT_TOLERANCE[metric] else "unclear"
    return dict(d=d, margin=margin, n=n, verdict=verdict, steps=steps)


def plateau_section(runs: dict, variants) -> list[str]:
    head = "| run | seeds | steps | " + " | ".join(f"{m.replace('eval_length', 'length')} change (margin)"
                                                  for m in PLATEAU_METRICS) + " |"
    lines = [head, "|---|---:|---|" + "---:|" * len(PLATEAU_METRICS)]
    for v in variants:
        changes = [second_half_change(runs, v, m) for m in PLATEAU_METRICS]
        if changes[0] is None:  # not run, or a single evaluation
            continue
        cells = [f"{fmt_value(m, c['d'])} ({fmt_value(m, c['margin'])}) {c['verdict']}"
                 for m, c in zip(PLATEAU_METRICS, changes)]
        lines.append(f"| {v} | {changes[0]['n']} | {changes[0]['steps'][0]} -> {changes[0]['steps'][1]} | "
                     + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


# ----------------------------------------------------------------------------- the report

def fmt_value(metric: str, v: float) -> str:
    """pass@k and accuracy as percent with one decimal, entropy with 3 decimals, lengths with 1."""
    if v is None or math.isnan(v):
        return "-"
    if metric.startswith("pass@") or metric == "accuracy":
        return f"{100 * v:.1f}"
    return f"{v:.3f}" if metric.startswith("entropy") else f"{v:.1f}"


def fmt_cell(metric: str, values) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "-"
    return fmt_value(metric, mean) + ("" if n < 2 else f" ± {fmt_value(metric, std)}")


MAIN_COLUMNS = [("pass@1", "pass@1 %"), ("pass@4", "pass@4 %"), ("pass@16", "pass@16 %"),
                ("entropy", "entropy"), ("length", "length (train)"), ("eval_length", "length (held-out)")]
POLARITY_COLUMNS = [("accuracy", "train acc %"), ("entropy_pos", "entropy pos"), ("entropy_neg", "entropy neg"),
                    ("length_pos", "length pos"), ("length_neg", "length neg")]


def table(runs: dict, variants, columns, with_start: bool) -> list[str]:
    """Markdown table, one row per variant (mean ± std over seeds of the END values); with
    with_start, a first row with the step-0 held-out evaluation (the starting model)."""
    head = "| run | seeds | " + " | ".join(c[1] for c in columns) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(columns)]
    if with_start and runs:
        # The step-0 evaluation depends only on the model and the seed: average each seed over
        # its runs first, so every seed counts once.
        seeds = sorted({s for v in runs for s in runs[v]})
        cells = []
        for metric, _ in columns:
            if metric not in EVAL_KEYS:
                cells.append("-")
                continue
            by_seed = [nanmean(runs[v][s]["summary"]["start"][metric] for v in runs if s in runs[v]) for s in seeds]
            cells.append(fmt_cell(metric, by_seed))
        lines.append(f"| start (step 0) | {len(seeds)} | " + " | ".join(cells) + " |")
    for v in variants:
        if v not in runs:
            continue
        cells = [fmt_cell(m, per_seed(runs, v, "end", m).values()) for m, _ in columns]
        lines.append(f"| {v} | {len(runs[v])} | " + " | ".join(cells) + " |")
    return lines


def quantile(sorted_values: list, q: float):
    """The nearest-rank q-quantile of an ascending list (a sample's own value, no interpolation)."""
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def length_stats(samples: list[dict]) -> dict | None:
    """Held-out samples (one dict of lists per seed, pooled) -> the numbers of the length table."""
    samples = [x for x in samples if x]
    if not samples:
        return None
    lengths = sorted(n for x in samples for n in x["length"])
    rows = [(n, c, t) for x in samples for n, c, t in zip(x["length"], x["correct"], x["truncated"])]
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    return dict(n=len(lengths), mean=mean(lengths), min=lengths[0], p10=quantile(lengths, 0.1),
                median=quantile(lengths, 0.5), p90=quantile(lengths, 0.9), max=lengths[-1],
                truncated=mean([t for _, _, t in rows]), wrong_stop=mean([1 - c - t for _, c, t in rows]),
                right=mean([n for n, c, _ in rows if c]), wrong=mean([n for n, c, _ in rows if not c]))


LENGTH_HEAD = ("| run | seeds | samples | mean | min | p10 | median | p90 | max | p90 / p10 | "
               "out of tokens % | wrong stop % | length right | length wrong |")


def length_table(runs: dict, variants) -> list[str]:
    """Held-out response lengths, all samples of all seeds pooled: the start (the starting
    model, once per seed) and each variant at the end. Wrong stop: ended with a wrong answer
    before the token limit; right / wrong: mean length of the correct / incorrect samples."""
    lines = [LENGTH_HEAD, "|---|---:|" + "---:|" * 12]
    starts = {}
    for v in runs:
        for seed, r in runs[v].items():
            if r.get("lengths"):
                starts.setdefault(seed, r["lengths"]["start"])
    rows = [("start (step 0)", list(starts.values()))]
    rows += [(v, [r["lengths"]["end"] for r in runs[v].values() if r.get("lengths")]) for v in variants if v in runs]
    for name, samples in rows:
        st = length_stats(samples)
        if st is None:
            continue
        spread = st["p90"] / st["p10"] if st["p10"] else float("inf")
        lines.append(f"| {name} | {len([x for x in samples if x])} | {st['n']} | {st['mean']:.1f} | {st['min']} | "
                     f"{st['p10']} | {st['median']} | {st['p90']} | {st['max']} | {spread:.1f} | "
                     f"{100 * st['truncated']:.1f} | {100 * st['wrong_stop']:.1f} | {fmt_value('length', st['right'])} | "
                     f"{fmt_value('length', st['wrong'])} |")
    return lines if len(lines) > 2 else []


def side_text(side) -> str:
    variant, when, metric = side
    return f"{variant} {metric}" + (" at start" if when == "start" else "")


def claims_section(runs: dict) -> list[str]:
    lines = ["| # | claim | check (A > B) | A | B | d (margin) | verdict |", "|---:|---|---|---:|---:|---:|---|"]
    for i, (text, checks) in enumerate(CLAIMS, 1):
        verdict, results = judge(runs, checks)
        if not results:
            lines.append(f"| {i} | {text} | - | - | - | - | {verdict} |")
            continue
        for j, r in enumerate(results):
            m = r["a"][2]
            d = fmt_value(m, r["d"]) + (f" ({fmt_value(m, r['margin'])})" if r["enough"] else " (n < 2)")
            head = f"| {i} | {text} |" if j == 0 else "| | |"
            tail = f"**{verdict}**" if j == 0 else ""
            lines.append(f"{head} {side_text(r['a'])} > {side_text(r['b'])} | {fmt_value(m, r['a_mean'])} | "
                         f"{fmt_value(m, r['b_mean'])} | {d} | {tail} |")
    return lines


def run_settings(runs_dir: str, runs: dict) -> dict:
    """The trainer settings every run shared, from one run's config.json."""
    for v in runs:
        for s in runs[v]:
            with open(os.path.join(run_dir_of(runs_dir, v, s), "config.json")) as f:
                return json.load(f)
    return {}


def seed_groups(runs: dict) -> list[tuple[list[int], list[str]]]:
    """Variants grouped by the seeds they ran with, the largest group first: one study command
    each, so that rerunning them makes the same runs (a sweep may have fewer seeds)."""
    groups = {}
    for v in runs:
        groups.setdefault(tuple(sorted(runs[v])), []).append(v)
    return sorted(((list(k), vs) for k, vs in groups.items()), key=lambda g: -len(g[1]))


def study_command(args, cfg: dict, seeds, variants) -> str:
    """The command that reproduces the report (the sizes the runs really used)."""
    cmd = ["python bench/polarity.py"] + (["--task", args.task] if args.task != "synthetic" else [])
    cmd += ["--quick"] if args.quick else []
    cmd += [f"--steps {cfg['steps']} --eval-every {cfg['eval_every']} --eval-size {cfg['eval_size']}",
            "--seeds " + " ".join(map(str, seeds))]
    if set(variants) != set(SIZES[args.task, args.quick]["variants"]):
        cmd.append("--variants " + " ".join(variants))
    extra = read_settings(args.runs_dir).get("extra", [])
    return " ".join(cmd + (["--", *extra] if extra else []))


def task_text(args, cfg: dict) -> str:
    if args.task == "search":
        return "`search` (data/tasks.py `search_problems`: train split for training, test split held out); "
    return f"`{cfg.get('data')}` (level {cfg.get('synthetic_level')}); "


def markdown(args, runs: dict, plots: list[str]) -> str:
    cfg = run_settings(args.runs_dir, runs)  # what the runs really used, whatever args say now
    w = end_window(cfg["steps"])
    pct = "pass@k, accuracy in %"
    L = [f"# Sample polarity at small scale{' (--quick: a smoke test, too small to conclude anything)' if args.quick else ''}",
         "",
         "Generated by " + " and ".join(f"`{study_command(args, cfg, group_seeds, group)}`"
                                        for group_seeds, group in seed_groups(runs)) + " (do not edit by hand): "
         f"{sum(len(r) for r in runs.values())} finished runs.",
         "",
         "## Setup",
         "",
         f"- Starting model `{cfg.get('model')}`, task " + task_text(args, cfg) +
         f"{cfg['steps']} steps of {cfg.get('prompts_per_step')} prompts x {cfg.get('group_size')} samples, "
         f"{cfg.get('ppo_epochs')} PPO epochs, lr {cfg.get('lr')}, up to {cfg.get('max_new_tokens')} new tokens, "
         f"temperature {cfg.get('temperature')}. Every variant: the same steps, data order and sampling seed.",
         f"- Held-out: {cfg.get('eval_size')} test problems, every {cfg.get('eval_every')} steps, "
         f"{max(EVAL_K)} samples per problem at the training temperature: pass@1 (= avg@{max(EVAL_K)}), "
         f"unbiased pass@4, pass@16.",
         f"- Training-batch metrics (entropy of pi_old on the sampled tokens, response length, split by the "
         f"sign of the advantage): the end value is their mean over the last {w} steps. With dynamic sampling "
         f"(dapo, a3po and its ablations) the batch keeps only mixed-reward groups, so its accuracy is not "
         f"the policy's; compare held-out numbers.",
         "- psr / nsr use raw rewards (A = R / A = R - 1, Zhu et al.), so psr has no negative and nsr no "
         "positive samples (their neg / pos columns are empty).",
         f"- Cells: mean ± sample std over seeds ({pct}); `-`: no value.",
         "",
         "## Presets (end of training)",
         "", *table(runs, PRESETS, MAIN_COLUMNS, with_start=True), "",
         "## Token-level ablations of A3PO (end of training)",
         "",
         *[f"- `{v}`: {VARIANTS[v][2]}" for v in ABLATIONS if v in runs],
         "", *table(runs, ["a3po"] + ABLATIONS, MAIN_COLUMNS, with_start=False), "",
         *(["## A3PO's constants (end of training)", "",
            *[f"- `{v}`: {VARIANTS[v][2]}" for v in SWEEP if v in runs], "",
            *table(runs, ["a3po", "dapo"] + SWEEP, MAIN_COLUMNS, with_start=False), ""]
           if any(v in runs for v in SWEEP) else []),
         "## By polarity (training batches, end of training)",
         "", *table(runs, list(VARIANTS), POLARITY_COLUMNS, with_start=False), ""]
    lengths = length_table(runs, list(VARIANTS))
    if lengths:
        L += ["## Held-out response lengths (end of training)", "",
              f"Every held-out sample of the last evaluation ({max(EVAL_K)} per problem, all seeds pooled; the start "
              "row: the starting model). Quantiles are nearest-rank. Out of tokens: stopped by the token limit "
              "(no answer); wrong stop: ended with a wrong answer before it; length right / wrong: the mean "
              "length of the correct / incorrect samples (held-out polarity).", "",
              *lengths, ""]
    plateau = plateau_section(runs, list(VARIANTS))
    if plateau:
        L += ["## Have the curves flattened?", "",
              "The change of each held-out metric over the second half of training (the last evaluation minus "
              "the first one at or past half of the steps, paired by seed; pass@k in points), judged by the "
              "claims' rule below: **rising** / **falling** if |change| > margin; **flat** if the whole interval "
              f"change ± margin lies within ± {100 * FLAT_TOLERANCE['pass@1']:g} points of pass@k and "
              f"± {FLAT_TOLERANCE['eval_length']:g} tokens of length; else **unclear** (too noisy to tell).",
              "", *plateau, ""]
    L += [
         "## The paper's claims at this scale",
         "",
         "Judged by this rule, from the numbers above (never by hand): " + RULE,
         "", *claims_section(runs), ""]
    if plots:
        L += ["## Curves", "", "Mean over seeds, band: ± one std.", ""]
        L += [f"![{p}]({p})" for p in plots] + [""]
    else:
        L += ["(No plots: matplotlib is not installed; `pip install -r requirements-plot.txt`.)", ""]
    times = [r["seconds"] for v in runs.values() for r in v.values() if r["seconds"]]
    if times:
        L += [f"Timing (varies from machine to machine): {len(times)} runs took {sum(times) / 60:.0f} min of "
              f"run time in all, {max(times) / 60:.1f} min the longest.", ""]
    return "\n".join(L)


def numbers_json(runs: dict) -> str:
    """The per-seed numbers the tables and claims come from, plus the curves, so that the
    committed report can be checked without the (uncommitted) runs folder. NaN -> null."""
    keep = lambda m, keys: {k: m.get(k) for k in ("step", *keys)}
    numbers = {v: {str(s): dict(summary=r["summary"],
                                train=[keep(m, TRAIN_KEYS) for m in r["train"]],
                                eval=[keep(m, EVAL_KEYS + (f"avg@{max(EVAL_K)}", "greedy_acc")) for m in r["eval"]])
                   | ({"heldout_lengths": {when: length_stats([r["lengths"][when]]) | histogram(r["lengths"][when])
                                           for when in ("start", "end")}} if r.get("lengths") else {})
                   for s, r in sorted(runs[v].items())} for v in runs}
    return json.dumps(no_nan(numbers), indent=1, allow_nan=False)


HIST_BIN = 8  # tokens per bin of the length histograms in the JSON


def histogram(samples: dict) -> dict:
    """{"hist_bin": 8, "hist": [count of lengths 0-7, 8-15, ...], "hist_correct": [...]}."""
    top = max(samples["length"]) // HIST_BIN + 1
    hist, right = [0] * top, [0] * top
    for n, c in zip(samples["length"], samples["correct"]):
        hist[n // HIST_BIN] += 1
        right[n // HIST_BIN] += c
    return dict(hist_bin=HIST_BIN, hist=hist, hist_correct=right)


def no_nan(x):
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [no_nan(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def import_file(path: str):
    """Import a module from its path without putting bench/ on sys.path, where bench/verifier.py
    would shadow the real verifier.py for whoever imports it next."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_plots(runs: dict, out: str, name: str) -> list[str]:
    """PNG file names written (relative to out); [] with a message when matplotlib is missing."""
    try:
        plot_polarity = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot_polarity.py"))
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("matplotlib"):
            raise
        print("matplotlib is not installed: skipping the plots (pip install -r requirements-plot.txt)")
        return []
    groups = {"presets": [v for v in PRESETS if v in runs], "ablations": [v for v in ["a3po"] + ABLATIONS if v in runs],
              "sweep": [v for v in ["a3po", "dapo"] + SWEEP if v in runs]}
    files = []
    for group, variants in groups.items():
        if group != "presets" and not set(variants) - {"a3po", "dapo"}:
            continue  # a3po alone is not an ablation study, nor a3po and dapo a sweep
        if variants:
            fname = f"{name}-{group}.png"
            plot_polarity.plot_group({v: runs[v] for v in variants}, os.path.join(out, fname),
                                     title=f"{group} ({name})")
            files.append(fname)
    if groups["presets"]:
        fname = f"{name}-by-polarity.png"
        plot_polarity.plot_group({v: runs[v] for v in groups["presets"]}, os.path.join(out, fname),
                                 title=f"presets by polarity ({name})", panels=plot_polarity.POLARITY_PANELS)
        files.append(fname)
    dists = length_dists(runs)
    if dists:
        fname = f"{name}-lengths.png"
        max_len = max(n for lengths, _ in dists.values() for n in lengths)
        plot_polarity.plot_lengths(dists, os.path.join(out, fname), f"held-out lengths at the end ({name})", max_len)
        files.append(fname)
    return files


def length_dists(runs: dict) -> dict:
    """{"start" and each variant: (lengths, correct)} of the held-out samples, seeds pooled."""
    starts, ends = {}, {}
    for v in runs:
        for seed, r in sorted(runs[v].items()):
            if r.get("lengths"):
                starts.setdefault(seed, r["lengths"]["start"])
                ends.setdefault(v, []).append(r["lengths"]["end"])
    pool = lambda samples: ([n for x in samples for n in x["length"]], [c for x in samples for c in x["correct"]])
    return ({"start": pool(starts.values())} | {v: pool(ends[v]) for v in ends}) if starts else {}


def report(args):
    runs = load_runs(args.runs_dir)
    if not runs:
        raise SystemExit(f"no finished run in {args.runs_dir}: nothing to report")
    os.makedirs(args.out, exist_ok=True)
    plots = make_plots(runs, args.out, args.name)
    md_path = os.path.join(args.out, args.name + ".md")
    write_atomic(md_path, markdown(args, runs, plots))
    write_atomic(os.path.join(args.out, args.name + ".json"), numbers_json(runs))
    print(f"wrote {md_path}" + "".join(f", {os.path.join(args.out, p)}" for p in plots))
    for text, checks in CLAIMS:
        print(f"  {judge(runs, checks)[0]:14s} {text}")


def main(argv=None):
    args = parse_args(argv)
    if not args.report_only:
        settings = study_settings(args)
        check_settings(args.runs_dir, settings)
        t0 = time.time()
        results = run_all(args, settings)
        failed = [r for r in results if r["error"]]
        print(f"trained {len(results) - len(failed)} run(s) in {(time.time() - t0) / 60:.1f} min"
              + (f"; {len(failed)} failed: " + ", ".join(r["name"] for r in failed) if failed else ""), flush=True)
        if failed and not finished_runs(args.runs_dir):
            raise SystemExit(f"no run finished: {failed[0]['name']}: {failed[0]['error']}")
    report(args)
    if not args.report_only and failed:
        raise SystemExit(f"{len(failed)} run(s) failed (the report covers the finished ones)")


if __name__ == "__main__":
    main()

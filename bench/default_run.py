"""The default run, three times: does `python a3po.py` learn, on every seed, within 10 minutes?

    python bench/default_run.py                      # seeds 0 1 2, the default command
    python bench/default_run.py --seeds 0 -- --lr 1e-3 --steps 30   # flags after -- go to a3po.py

Runs `python a3po.py --seed S [flags]` one seed after the other (in parallel they would only
fight over the same cores and every wall time would be wrong), reads the last line each run
prints, `pass@1: <before>% -> <after>%` (held-out, sampled at the training temperature), and
prints a Markdown table of before / after / gain / wall time per seed, plus the mean gain.
Each run writes to its own temporary folder, removed afterwards unless --keep.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL_LINE = re.compile(r"^pass@1: ([0-9.]+)% -> ([0-9.]+)%\s*$")
TARGET_GAIN = 15.0  # points of held-out pass@1, averaged over seeds: what the default run must show
TIME_LIMIT = 600.0  # seconds per run on the reference 2-core CPU


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--timeout", type=float, default=1800, help="kill a run after this many seconds")
    ap.add_argument("--keep", action="store_true", help="keep each run's folder (printed)")
    ap.add_argument("--log-dir", default=None, help="also write each run's full output to LOG_DIR/seedS.log")
    ap.add_argument("extra", nargs="*", help="flags passed to a3po.py (put them after --)")
    return ap.parse_args()


def run_seed(seed, extra, timeout, keep, log_dir):
    """-> dict(seed, before, after, seconds, run_dir, error)."""
    run_dir = os.path.join(tempfile.mkdtemp(prefix=f"a3po-default-seed{seed}-"), "run")
    cmd = [sys.executable, os.path.join(REPO, "a3po.py"), "--seed", str(seed), "--run-dir", run_dir, *extra]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        output, error = proc.stdout + proc.stderr, None if proc.returncode == 0 else f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        output, error = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    seconds = time.time() - t0
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, f"seed{seed}.log"), "w") as f:
            f.write(output)
    lines = output.strip().splitlines()
    match = FINAL_LINE.match(lines[-1]) if lines else None
    if match is None and error is None:
        error = f"last line is not 'pass@1: X% -> Y%': {lines[-1] if lines else '(no output)'!r}"
    if error:
        print("\n".join(lines[-15:]), file=sys.stderr)
    if not keep:
        shutil.rmtree(os.path.dirname(run_dir), ignore_errors=True)
    before, after = (float(match.group(1)), float(match.group(2))) if match else (None, None)
    return dict(seed=seed, before=before, after=after, seconds=seconds, run_dir=run_dir if keep else None,
                error=error)


def table(results):
    rows = ["| seed | pass@1 before | pass@1 after | gain (points) | wall time |",
            "|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["error"]:
            rows.append(f"| {r['seed']} | - | - | - | {r['seconds']:.0f} s ({r['error']}) |")
        else:
            rows.append(f"| {r['seed']} | {r['before']:.1f}% | {r['after']:.1f}% | "
                        f"{r['after'] - r['before']:+.1f} | {r['seconds']:.0f} s |")
    return "\n".join(rows)


def main():
    args = parse_args()
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args.extra, args.timeout, args.keep, args.log_dir))
        r = results[-1]
        status = r["error"] or f"{r['before']:.1f}% -> {r['after']:.1f}%"
        print(f"seed {seed}: {status} in {r['seconds']:.0f} s", flush=True)
    print()
    print(f"`python a3po.py {' '.join(args.extra)}`".replace(" `", "`"))
    print()
    print(table(results))
    done = [r for r in results if not r["error"]]
    if not done:
        raise SystemExit("no run finished")
    gain = sum(r["after"] - r["before"] for r in done) / len(done)
    before = sum(r["before"] for r in done) / len(done)
    after = sum(r["after"] for r in done) / len(done)
    slowest = max(r["seconds"] for r in done)
    print(f"\nmean over {len(done)} seed(s): {before:.1f}% -> {after:.1f}%, gain {gain:+.1f} points "
          f"(target >= {TARGET_GAIN:.0f}); slowest run {slowest:.0f} s (limit {TIME_LIMIT:.0f} s)")
    ok = gain >= TARGET_GAIN and slowest <= TIME_LIMIT and len(done) == len(results)
    print("OK" if ok else "NOT MET")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

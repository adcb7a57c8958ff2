"""Seconds per step of the default run on 1 process x 2 threads, 1 x 1 and 2 processes x 1 thread
(torchrun, gloo), and what the collectives a3po.py uses cost on this machine.

    python bench/distributed.py                      # 4 steps of the default run each, then the collectives
    python bench/distributed.py --steps 6 --skip-runs
    python bench/distributed.py -- --max-new-tokens 32   # flags after -- go to every a3po.py run

The runs are the default `a3po.py` (the same rollouts in all three: a row's random numbers do
not depend on the process that samples it) with a small held-out set (the evaluations are not
timed); seconds per step is the mean `time_step` of metrics.jsonl (rank 0's, which includes
waiting for the other rank), the first step left out (warm-up). They run one after the other.
Collectives, timed under torchrun with 2 processes on the CPU (gloo), median of --repeats:
  all-reduce of the default model's gradient as one flat buffer (processes.all_reduce_grads) and as
  one call per parameter tensor; all-gather of pi_old and entropy of a [1024, 4096] batch
  (processes.all_gather_rows: each rank's [512, 2, 4096] -> [1024, 2, 4096], 32 MiB).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(kind, steps, extra, timeout):
    """kind: (processes, threads) -> mean seconds per step (steps 2..), or an error string."""
    procs, threads = kind
    folder = tempfile.mkdtemp(prefix="a3po-bench-dist-")
    args = ["a3po.py", "--steps", str(steps), "--eval-size", "8", "--eval-k", "1", "--threads", str(threads),
            "--run-dir", os.path.join(folder, "run"), *extra]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
           if procs > 1 else [sys.executable]) + args
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
        if p.returncode != 0:
            return f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
        with open(os.path.join(folder, "run", "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        times = [m["time_step"] for m in lines if m["split"] == "train"][1:]
        return sum(times) / len(times)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def collectives(repeats):
    """Runs under torchrun: times the collectives, rank 0 prints one JSON line."""
    import torch
    import torch.distributed as dist
    sys.path.insert(0, REPO)
    import a3po
    import processes
    import model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    net = model.load(os.path.join(REPO, "data", "default_model"))[0]
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p)

    def timed(fn):
        out = []
        for _ in range(repeats + 1):  # the first one warms up
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out[1:])

    def per_tensor():
        for p in params:
            dist.all_reduce(p.grad)

    rows = torch.randn(512, 2, 4096)
    res = dict(params=sum(p.numel() for p in params), tensors=len(params),
               flat=timed(lambda: processes.all_reduce_grads(params)), per_tensor=timed(per_tensor),
               gather=timed(lambda: processes.all_gather_rows(rows)))
    if dist.get_rank() == 0:
        print(json.dumps(res))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per run (the first is not counted)")
    ap.add_argument("--repeats", type=int, default=20, help="collectives: median of this many")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--skip-runs", action="store_true", help="only the collectives")
    ap.add_argument("--collectives", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help="flags for every a3po.py run (after --)")
    args = ap.parse_args()
    if args.collectives:
        return collectives(args.repeats)
    steps = max(2, args.steps)
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rows = []
    if not args.skip_runs:
        for kind in ((1, 2), (1, 1), (2, 1)):
            t = run(kind, steps, args.extra, args.timeout)
            rows.append((kind, t))
            print(f"# {kind[0]} process(es) x {kind[1]} thread(s): {t if isinstance(t, str) else f'{t:.2f} s/step'}",
                  flush=True)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        os.path.abspath(__file__), "--collectives", "--repeats", str(args.repeats)],
                       cwd=REPO, capture_output=True, text=True, timeout=args.timeout,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    coll = json.loads(lines[-1]) if lines else None
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end\n")
    if rows:
        base = next((t for k, t in rows if k == (1, 1) and not isinstance(t, str)), None)
        print("| processes x threads | s / step | vs 1 x 1 |\n|---|---|---|")
        for (n, th), t in rows:
            if isinstance(t, str):
                print(f"| {n} x {th} | {t} | - |")
            else:
                print(f"| {n} x {th} | {t:.2f} | {base / t:.2f}x |" if base else f"| {n} x {th} | {t:.2f} | - |")
    if coll:
        print(f"\n| collective (2 processes, gloo) | ms |\n|---|---|\n"
              f"| all-reduce of the {coll['params'] / 1e6:.2f}M-parameter gradient, one flat buffer | "
              f"{1e3 * coll['flat']:.1f} |\n"
              f"| the same as {coll['tensors']} calls, one per tensor | {1e3 * coll['per_tensor']:.1f} |\n"
              f"| all-gather of pi_old + entropy, [1024, 2, 4096] fp32 (32 MiB) | {1e3 * coll['gather']:.1f} |")
    else:
        print(f"collectives failed: {p.stderr.strip()[-500:]}")


if __name__ == "__main__":
    main()

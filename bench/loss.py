"""Speed and peak memory of a3po.token_logprobs (chunked) against the naive full-logits version.

Forward + backward of per-token log-probs AND entropies (upstream gradients on both), the way
the trainer uses them. Each (variant, vocabulary) runs in its own subprocess, so its peak
memory is its own: peak RSS (ru_maxrss) on CPU, torch.cuda.max_memory_allocated on CUDA.
"extra" = peak minus the memory held before the timed call (torch, inputs, a warm-up call).

On CPU each child gets an address-space limit (RLIMIT_AS) so a variant that does not fit
fails cleanly instead of taking the machine down. If the naive version's estimated peak
(measured at a small N, scaled linearly in N) exceeds the limit, it runs at the largest
N / 2^k that fits, the chunked version runs at that N too (same-N comparison), and the
estimate for the full N is printed.

    python bench/loss.py                                   # CPU, fp32, V = 49152 and 151936
    python bench/loss.py --device cuda --dtype bfloat16    # one GPU, bf16 inputs
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vm_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def naive_token_logprobs(hidden, weight, targets):
    """The thing chunking avoids: [N, V] fp32 logits, kept by autograd for backward."""
    import torch
    logits = hidden.float() @ weight.float().T                      # [N, V]
    logq = torch.log_softmax(logits, dim=-1)                        # [N, V]
    logp = logq.gather(1, targets[:, None]).squeeze(1)              # [N]
    entropy = -(logq.exp() * logq).sum(dim=-1)                      # [N]
    return logp, entropy


def child(spec):
    """Runs one variant once (after a small warm-up); prints one JSON line."""
    import torch
    sys.path.insert(0, ROOT)
    import a3po

    torch.manual_seed(0)
    dev, dtype = spec["device"], getattr(torch, spec["dtype"])
    N, V, d = spec["n"], spec["vocab"], spec["dim"]
    h = (torch.randn(N, d, device=dev) * 0.5).to(dtype).requires_grad_()
    W = (torch.randn(V, d, device=dev) * 0.05).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,), device=dev)
    g_logp, g_ent = torch.randn(N, device=dev), torch.randn(N, device=dev) * 0.01

    def run(n):
        if spec["variant"] == "naive":
            logp, ent = naive_token_logprobs(h[:n], W, t[:n])
        else:
            logp, ent = a3po.token_logprobs(h[:n], W, t[:n], chunk_size=spec["chunk"])
        (logp * g_logp[:n] + ent * g_ent[:n]).sum().backward()

    run(min(N, 64))  # warm-up: thread pools, allocator
    h.grad = W.grad = None
    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _vm_kb("VmRSS") * 1024
        if spec["limit_bytes"]:
            vm = _vm_kb("VmSize") * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + spec["limit_bytes"], resource.RLIM_INFINITY))
    t0 = time.perf_counter()
    try:
        run(N)
        if cuda:
            torch.cuda.synchronize()
    except (RuntimeError, MemoryError) as e:  # torch raises RuntimeError when an allocation fails
        print(json.dumps({"error": f"out of memory under the limit: {str(e)[:120]}"}))
        return
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak, "extra": peak - base}))


def run_child(spec, timeout):
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-200:]}"}
    return json.loads(lines[-1])


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


def gb(x):
    return f"{x / 2**30:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    ap.add_argument("--dim", type=int, default=896)
    ap.add_argument("--tokens", type=int, default=8192, help="N, rows of hidden states")
    ap.add_argument("--chunk", type=int, default=1024, help="token_logprobs chunk_size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--mem-limit-gb", type=float, default=None,
                    help="CPU: address-space limit per child beyond its start (default: half of MemAvailable)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per child")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))

    cuda = args.device.startswith("cuda")
    limit = 0 if cuda else int((args.mem_limit_gb or mem_available() / 2**30 / 2) * 2**30)
    base = dict(device=args.device, dtype=args.dtype, dim=args.dim, chunk=args.chunk, limit_bytes=limit)
    print(f"# device={args.device} dtype={args.dtype} d={args.dim} N={args.tokens} chunk={args.chunk} "
          f"threads={os.cpu_count()} load={os.getloadavg()[0]:.1f}"
          + ("" if cuda else f" child memory limit={gb(limit)} GB"))
    rows = []
    for V in args.vocab:
        n_naive = args.tokens
        if not cuda:  # estimate the naive peak from a small run before risking the big one
            # two small runs: extra(n) = fixed (weight gradient) + per_token * n
            p1, p2 = (run_child({**base, "variant": "naive", "vocab": V, "n": n}, args.timeout) for n in (256, 512))
            if "extra" in p1 and "extra" in p2:
                per_token = max(p2["extra"] - p1["extra"], 0) / 256
                estimate = lambda n: p2["extra"] + per_token * (n - 512)
                est = estimate(args.tokens)
                while n_naive > 512 and estimate(n_naive) > 0.8 * limit:
                    n_naive //= 2
                if n_naive < args.tokens:
                    print(f"# V={V}: naive at N={args.tokens} needs ~{gb(est)} GB extra (> limit): run at N={n_naive}")
        todo = [("naive", n_naive), ("chunked", n_naive)]
        if n_naive < args.tokens:
            todo.append(("chunked", args.tokens))
        res = {}
        for variant, n in todo:
            r = run_child({**base, "variant": variant, "vocab": V, "n": n}, args.timeout)
            res[(variant, n)] = r
            rows.append((V, n, variant, r))
            print(f"#   done V={V} N={n} {variant}: {r}", flush=True)
        nv, ch = res[("naive", n_naive)], res[("chunked", n_naive)]
        if "seconds" in nv and "seconds" in ch:
            rows.append((V, n_naive, "chunked/naive", {"seconds": ch["seconds"] / nv["seconds"],
                                                        "peak": ch["peak"] / nv["peak"], "extra": ch["extra"] / nv["extra"]}))

    kind = "CUDA max allocated" if cuda else "RSS"
    print(f"\n| V | N | variant | time (s) | peak {kind} (GB) | extra over inputs (GB) |")
    print("|---|---|---|---|---|---|")
    for V, n, variant, r in rows:
        if "error" in r:
            print(f"| {V} | {n} | {variant} | - | {r['error']} | - |")
        elif variant == "chunked/naive":
            print(f"| {V} | {n} | **chunked / naive** | {r['seconds']:.2f}x | {r['peak']:.3f}x | {r['extra']:.3f}x |")
        else:
            print(f"| {V} | {n} | {variant} | {r['seconds']:.2f} | {gb(r['peak'])} | {gb(r['extra'])} |")


if __name__ == "__main__":
    main()

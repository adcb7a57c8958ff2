#!/usr/bin/env bash
# One command for a CUDA machine (one or more GPUs), under 10 minutes:
#   1. the test suite (GPUs hidden), then its CUDA tests (tests/test_distributed.py: sampling and
#      the update on the GPU against the CPU, NCCL against one process with 2+ GPUs, a3po.py runs;
#      tests/test_a3po_math.py: bf16 log-probs)
#   2. sampling tokens/s of model.generate in bf16 at batch 1 / 8 / 64 on a randomly initialised
#      Qwen2.5-1.5B-shaped model, and the fraction of the bandwidth limit: each decode step reads
#      every weight once, so tokens/s <= batch * (measured copy bandwidth) / (weight bytes)
#   3. bench/loss.py on CUDA (chunked log-probs against full logits, bf16)
#   4. 5 steps of the default run on CUDA (bf16 autocast)
#   5. with 2+ GPUs: the same under torchrun with NCCL, data parallel and --fsdp
# and prints the card's name and one table.
#
#     bash bench/gpu.sh           # on the GPU machine
#     bash bench/gpu.sh --dry     # every part on the CPU at tiny sizes (2 gloo processes stand in
#                                 # for 2 GPUs): checks the script itself, numbers mean nothing
# Each part has its own time limit; a part that fails or runs out of time is marked in the table
# and the rest still run. The exit status is the number of failed parts.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
OUT=$(mktemp -d /tmp/a3po-gpu-XXXXXX)
trap 'rm -rf "$OUT"' EXIT
export PYTHONUNBUFFERED=1

if [ $DRY = 1 ]; then
    DEVICE=cpu; NGPU=2; NAME="dry run on the CPU ($(nproc) cores): no GPU used"
    export A3PO_TEST_DEVICE=cpu OMP_NUM_THREADS=1
    STEPS=2; EVAL=8; THREADS="--threads 1"
else
    DEVICE=cuda
    NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
    [ "$NGPU" -ge 1 ] 2>/dev/null || { echo "bench/gpu.sh: torch sees no CUDA device (run --dry on a CPU)"; exit 1; }
    NAME=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
    [ -n "$NAME" ] || NAME=$($PY -c "import torch; print(torch.cuda.get_device_name(0))")
    STEPS=5; EVAL=64; THREADS=""
fi
echo "== $NAME; $NGPU processes for the multi-GPU part; torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda)')"

ROWS=()     # "part | result | seconds"
FAILED=0
part() {    # part NAME LIMIT_SECONDS COMMAND...: run it, keep its output in $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $name" >&2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log" >&2
    LAST_RC=$rc; LAST_S=$((SECONDS - t0))
    if [ $rc = 124 ]; then FAILED=$((FAILED + 1)); LAST_NOTE="TIMED OUT after ${limit} s"
    elif [ $rc != 0 ]; then FAILED=$((FAILED + 1)); LAST_NOTE="FAILED (exit $rc)"
    else LAST_NOTE=""; fi
}

# ---------------------------------------------------------------- 1. tests
# The suite as on a CPU machine (GPUs hidden: its in-process runs pick --device auto, and
# their exact-equality checks are written for the CPU), then the CUDA tests with the GPUs.
if [ $DRY = 1 ]; then
    ROWS+=("test suite on the CPU | dry: not run (it is \`python -m pytest tests\`) | 0")
else
    part tests_cpu 360 env CUDA_VISIBLE_DEVICES= $PY -m pytest -q -p no:cacheprovider tests
    ROWS+=("test suite, GPUs hidden | ${LAST_NOTE:+$LAST_NOTE: }$(grep -E "passed|failed" "$OUT/tests_cpu.log" | tail -1) | $LAST_S")
fi
part tests_cuda 240 $PY -m pytest -q -p no:cacheprovider tests/test_distributed.py tests/test_a3po_math.py \
    -k "device or nccl or cuda"
ROWS+=("CUDA tests$([ $DRY = 1 ] && echo ', on the CPU (A3PO_TEST_DEVICE=cpu)') | ${LAST_NOTE:+$LAST_NOTE: }$(grep -E "passed|failed|skipped" "$OUT/tests_cuda.log" | tail -1) | $LAST_S")

# ---------------------------------------------------------------- 2. sampling, bf16
part sampling 240 $PY - "$DEVICE" "$DRY" <<'EOF'
import sys, time, json
import torch
import model as M
device, dry = sys.argv[1], sys.argv[2] == "1"
torch.manual_seed(0)
if dry:   # the same code at a size a CPU runs in seconds
    cfg = M.ModelConfig(model_type="qwen2", vocab_size=4096, hidden_size=128, intermediate_size=384,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=512, tie_word_embeddings=True)
    new, batches = 16, (1, 8, 64)
else:     # Qwen2.5-1.5B: 28 layers, d 1536, 12 heads / 2 KV heads of 128, MLP 8960, vocab 151936, tied
    cfg = M.ModelConfig(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, head_dim=128,
                        rope_theta=1e6, max_position_embeddings=32768, tie_word_embeddings=True)
    new, batches = 128, (1, 8, 64)
with torch.device(device):
    net = M.Transformer(cfg)
net = net.to(torch.bfloat16).eval()
weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())  # tied: the output layer once
# copy bandwidth: read + write of a 1 GiB (dry: 64 MiB) buffer, best of 5
x = torch.empty((1 << 28) if not dry else (1 << 24), dtype=torch.float32, device=device)
y = torch.empty_like(x)
best = float("inf")
for _ in range(5):
    if device == "cuda": torch.cuda.synchronize()
    t0 = time.perf_counter(); y.copy_(x)
    if device == "cuda": torch.cuda.synchronize()
    best = min(best, time.perf_counter() - t0)
bw = 2 * x.numel() * 4 / best
del x, y
prompt = torch.randint(0, cfg.vocab_size, (64,)).tolist()
print(f"ROW sampling bf16, Qwen2.5-1.5B shape{' (dry: tiny)' if dry else ''}: "
      f"{sum(p.numel() for p in net.parameters()) / 1e9:.3f}B parameters | {weight_bytes / 1e9:.3f} GB of weights, "
      f"measured copy bandwidth {bw / 1e9:.0f} GB/s")
for b in batches:
    keys = torch.arange(b)
    M.generate(net, [prompt] * b, 4, eos_ids=[], row_keys=keys)  # warm-up (kernels, allocator)
    times = []
    for r in range(2):
        t0 = time.perf_counter()
        out, _ = M.generate(net, [prompt] * b, new, eos_ids=[], row_keys=keys + 1000 * r)
        times.append(time.perf_counter() - t0)  # generate returns CPU lists: the device is done
        assert all(len(o) == new for o in out)
    tok_s = b * new / min(times)
    limit = b * bw / weight_bytes
    print(f"ROW   batch {b}, {new} new tokens | {tok_s:.0f} tokens/s = {100 * tok_s / limit:.0f}% of the "
          f"bandwidth limit ({limit:.0f} tokens/s)")
EOF
if [ -z "$LAST_NOTE" ]; then
    first=1
    while read -r line; do
        if [ $first = 1 ]; then ROWS+=("$line | $LAST_S"); first=0; else ROWS+=("$line | "); fi
    done < <(grep '^ROW ' "$OUT/sampling.log" | sed 's/^ROW //')
else
    ROWS+=("sampling bf16, Qwen2.5-1.5B shape | $LAST_NOTE | $LAST_S")
fi

# ---------------------------------------------------------------- 3. loss benchmark
if [ $DRY = 1 ]; then LOSS_ARGS="--vocab 4096 --dim 64 --tokens 1024 --chunk 256 --dtype float32"
else LOSS_ARGS="--device cuda --dtype bfloat16"; fi
part loss 240 $PY bench/loss.py $LOSS_ARGS
ratio=$(grep "chunked / naive" "$OUT/loss.log" | tail -1 | awk -F'|' '{gsub(/ /, ""); print "V " $2 ", N " $3 ": time " $5 ", peak memory " $6}')
ROWS+=("bench/loss.py ($DEVICE) chunked / naive | ${LAST_NOTE:+$LAST_NOTE }${ratio:-see log} | $LAST_S")

# ---------------------------------------------------------------- 4. / 5. training runs
RUN_ARGS="--steps $STEPS --eval-size $EVAL --device $DEVICE $THREADS"
per_step() {  # mean time_step of a run folder's train lines after the first, and the final pass@1 line
    $PY - "$1" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if l.strip()]
t = [m["time_step"] for m in lines if m["split"] == "train"][1:] or [m["time_step"] for m in lines if m["split"] == "train"]
print(f"{sum(t) / len(t):.2f} s/step")
EOF
}
train_row() {  # train_row LABEL RUN_DIR
    if [ -z "$LAST_NOTE" ]; then
        ROWS+=("$1 | $(per_step "$2"), $(grep '^pass@1' "$OUT/$3.log" | tail -1) | $LAST_S")
    else
        ROWS+=("$1 | $LAST_NOTE | $LAST_S")
    fi
}
part train1 300 $PY a3po.py $RUN_ARGS --run-dir "$OUT/run1"
train_row "default run, $STEPS steps, 1 process on $DEVICE" "$OUT/run1" train1
if [ "$NGPU" -ge 2 ]; then
    N=2
    for n in 8 4; do [ "$NGPU" -ge $n ] && { N=$n; break; }; done   # 16 prompts and 128 rows must divide
    MB=$((128 / N < 32 ? 128 / N : 32))
    TR="$PY -m torch.distributed.run --standalone --nproc-per-node $N"
    backend=$([ $DRY = 1 ] && echo gloo || echo NCCL)
    part trainN 300 $TR a3po.py $RUN_ARGS --micro-batch-size $MB --run-dir "$OUT/runN"
    train_row "default run, $STEPS steps, torchrun $N processes ($backend), data parallel" "$OUT/runN" trainN
    part fsdpN 300 $TR a3po.py $RUN_ARGS --micro-batch-size $MB --fsdp --run-dir "$OUT/fsdpN"
    train_row "default run, $STEPS steps, torchrun $N processes ($backend), --fsdp" "$OUT/fsdpN" fsdpN
else
    ROWS+=("torchrun runs | skipped: one GPU | 0")
fi

# ---------------------------------------------------------------- the table
echo
echo "## bench/gpu.sh$([ $DRY = 1 ] && echo ' --dry'): $NAME"
echo
echo "| part | result | seconds |"
echo "|---|---|---|"
for r in "${ROWS[@]}"; do echo "| $r |"; done
echo
echo "failed parts: $FAILED (logs were in $OUT, removed on exit)"
exit $FAILED

"""Several processes: `torchrun --nproc-per-node N a3po.py` (torch.distributed, FSDP2).

torchrun starts N copies of a3po.py with RANK / WORLD_SIZE / LOCAL_RANK set; `python a3po.py`
is the N = 1 case and never touches torch.distributed: every function here is then a no-op (or
returns what one process has). Process r owns the contiguous rows [r B/N, (r+1) B/N) of a batch
(`my_share`), samples and trains on them, and the few collectives below make every decision
the single-process one: the trainer gathers each round's rollouts (`gather_lists`), the pi_old
rows (`gather_rows`), sums the gradients (`sum_gradients`) and the logged numbers
(`sum_numbers`), and gathers a sharded model's weights for sampling (`full_weights`).
a3po.py imports this file; this file never imports a3po.py.
"""
import contextlib
import os
import sys

import torch


def pick_device(flag: str) -> torch.device:
    """--device (auto = cuda when available); under torchrun, CUDA means this process's GPU,
    cuda:LOCAL_RANK."""
    name = flag if flag != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and launched_world_size() > 1:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return torch.device(name)



def world() -> tuple[int, int]:
    """(rank, number of processes) of this run: (0, 1) without a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def launched_world_size() -> int:
    """Processes torchrun started (WORLD_SIZE), known before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_flag: str, timeout_minutes: float):
    """Under torchrun with more than one process: join the process group, one GPU per process
    on CUDA (LOCAL_RANK), gloo for CPU tensors, NCCL for CUDA ones. Ranks other than 0 print
    nothing (stdout to /dev/null; errors still reach stderr). No-op for one process."""
    if launched_world_size() == 1 or torch.distributed.is_initialized():
        return
    from datetime import timedelta
    device = pick_device(device_flag)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # The timeout is how long a rank may wait at a collective: a rank that finished its rollouts
    # waits there for the slowest one, so it must exceed the longest step, not a network hiccup.
    # A rank that crashes is caught by torchrun (it stops the others), not by this timeout.
    torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo",
                                         timeout=timedelta(minutes=timeout_minutes))
    if world()[0] != 0:
        sys.stdout = open(os.devnull, "w")


def shutdown_distributed():
    """Leave the process group. When the run ended without an error (called from a `finally`
    with no exception in flight), every rank first waits for the others, so that none tears the
    group down while a peer's last collective is still in flight (gloo can then abort the peer
    at exit). After an error it leaves at once: the peers may never arrive."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if sys.exc_info()[1] is None:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def share(n: int) -> range:
    """This rank's contiguous share of n items (n need not divide: the first ranks get one more)."""
    rank, N = world()
    return range(rank * n // N, (rank + 1) * n // N)


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (anything picklable), in rank order."""
    if world()[1] == 1:
        return [obj]
    out = [None] * world()[1]
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if world()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """t [b, ...], this rank's b rows -> [N * b, ...], every rank's rows in rank order (equal b)."""
    if world()[1] == 1:
        return t
    out = t.new_empty((world()[1] * t.shape[0], *t.shape[1:]))
    gather = getattr(torch.distributed, "all_gather_single", None) or torch.distributed.all_gather_into_tensor
    gather(out, t.contiguous())  # (all_gather_single: the newer name of all_gather_into_tensor)
    return out


def all_reduce_floats(values: list[float], op: str = "sum") -> list[float]:
    """Python numbers summed (or max'ed) over the ranks, in float64, in one collective."""
    if world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)  # CPU: gloo even when the model is on CUDA
    torch.distributed.all_reduce(t, torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX)
    return t.tolist()


def all_reduce_grads(params: list[torch.Tensor]):
    """Sum the ranks' gradients with ONE all-reduce of a flat buffer (one call per tensor would
    pay the collective's fixed cost ~40 times a step). Data parallel only: under --fsdp the
    reduce-scatter in backward sums them. Not DDP: a3po runs the model through `response_states`
    and `output_weight`, not `forward`, and DDP silently reduces only what forward produced."""
    if world()[1] == 1:
        return
    for p in params:
        if p.grad is None:  # a parameter this rank's rows did not reach still takes part
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])                   # [P]
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def is_fsdp(policy) -> bool:
    if world()[1] == 1:  # (an FSDP model needs a process group; one process never imports fsdp)
        return False
    from torch.distributed.fsdp import FSDPModule
    return isinstance(policy, FSDPModule)


def shard_model(net):
    """--fsdp: FSDP2 on every block and the root, so parameters, gradients and AdamW state are
    split over the ranks. a3po calls `response_states` (the set-up below `hidden_states`), not
    forward, so both are registered as forward methods (their hooks gather and free the weights).
    Gradients are SUMMED over the ranks (divide factor 1, sum-only reductions): each rank's loss
    is already its share of the whole batch's, as in `ppo_update`'s data-parallel path."""
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
    for block in net.model.layers:
        fully_shard(block)
    # The root keeps its (embedding, final norm, output layer) weights gathered after forward:
    # the trainer reads `output_weight` right after `response_states` returns.
    fully_shard(net, reshard_after_forward=False)
    register_fsdp_forward_method(net, "hidden_states")
    register_fsdp_forward_method(net, "response_states")
    for m in net.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM / AVG
    # FSDP sets itself up at the first forward through the root; generate's prefill calls the
    # blocks directly, which would make each block a root of its own. So one forward now.
    with torch.no_grad():
        net.hidden_states(torch.zeros(1, 1, dtype=torch.long, device=net.output_weight.device))
    reshard_root(net)
    return net


def reshard_root(net):
    """Under --fsdp the root's weights stay gathered after a forward (see shard_model) until a
    backward reshards them; while gathered, net.parameters() yields the gathered copies, which
    the optimizer, clipping and checkpoints must not see. No-op otherwise."""
    if is_fsdp(net):
        net.reshard()


@contextlib.contextmanager
def full_weights(policy):
    """Sampling on a sharded model: model.generate reads the weights directly (its decode steps
    do not go through forward), so under --fsdp every block is gathered for the whole rollout and
    kept gathered after forward, then sharded again. A plain model is used as it is."""
    if not is_fsdp(policy):
        yield policy
        return
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in policy.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield policy
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(m is not policy)


def agree_on_errors(error: BaseException | None, as_type=RuntimeError):
    """Every rank reaches this with its own error or None; all raise: a rank its own error, the
    others the first rank's message as `as_type`, so a failure on one rank (rank 0's lock, a
    file it alone writes) never leaves the others waiting at a collective."""
    if world()[1] == 1:
        if error is not None:
            raise error
        return
    errors = all_gather_objects(None if error is None else str(error))
    first = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error
    if first is not None:
        raise as_type(first)


# ------------------------------------------------------------ the trainer's calls, by what they do

def my_share(n: int) -> range:
    """The items of n (prompts of a round, rows of a batch, held-out problems) this process
    handles: all of them in one process."""
    return share(n)


def gather_lists(items: list) -> list:
    """Every process's list, concatenated in process order (the whole round's rollouts, every
    held-out problem's counts): the same list on every process."""
    return items if world()[1] == 1 else [x for part in all_gather_objects(items) for x in part]


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """This process's rows [b, ...] -> the whole batch's [N * b, ...], on every process."""
    return all_gather_rows(t)


def sum_numbers(values: list[float]) -> list[float]:
    """Numbers summed over the processes (this process's share of a batch's loss and counts)."""
    return all_reduce_floats(values, "sum")


def max_numbers(values: list[float]) -> list[float]:
    """Each number's maximum over the processes (the slowest process's time, a signal any saw)."""
    return all_reduce_floats(values, "max")


def sum_gradients(policy, params: list[torch.Tensor]):
    """The whole batch's gradient on every process: each process's loss is its share of the
    one-process loss (normalised by the whole batch's counts), so the gradients add up. Under
    --fsdp the reduce-scatter in backward already summed them."""
    if world()[1] > 1 and not is_fsdp(policy):
        all_reduce_grads(params)


def full_value(t):
    """A number FSDP holds as a replicated DTensor (the gradient norm), as a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def any_signal(signum: int | None) -> int | None:
    """A stop signal (Ctrl-C, SIGTERM) that any process saw, on every process, so all of them
    stop after the same step."""
    return int(max_numbers([signum or 0])[0]) or None


def launcher() -> str:
    """The command that started this run, for the line that says how to resume it."""
    N = launched_world_size()
    return f"torchrun --nproc-per-node {N}" if N > 1 else "python"


def print_once(*args, **kwargs):
    """print on the first process only (also before the process group exists)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs)

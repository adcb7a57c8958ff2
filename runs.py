"""The run: its folder and lock, Ctrl-C / SIGTERM, checkpoints, exact resume, the metrics files.

A run lives in one folder (runs/<algo>-<date>-<time>-s<seed>-<pid>/ or --run-dir): config.json,
metrics.jsonl and samples.jsonl (one JSON line per step / evaluation), checkpoint/ (a Hugging
Face folder plus the optimizer and trainer state, swapped in whole), changes.jsonl (settings
changed on --resume --override) and, while a process trains there, lock. Every write is atomic
or an append, so a crash or Ctrl-C at any point leaves the last good checkpoint. Errors about
the folder or its files raise RunError, one line naming the file. a3po.py imports this file;
this file never imports a3po.py.
"""
import json
import math
import os
import shutil
import signal
import threading
import time

import torch

import model
import processes


class RunError(ValueError):
    """A run folder or file that cannot be used (corrupt, locked by a live process, ...)."""


def need(ok: bool, msg: str):
    if not ok:
        raise RunError(msg)


# ----------------------------------------------------------------------------- the folder

def new_run_dir(algo: str, seed: int) -> str:
    # seed and pid: two runs started in the same second never share a folder
    return os.path.join("runs", f"{algo}-{time.strftime('%Y%m%d-%H%M%S')}-s{seed}-{os.getpid()}")


def lock_run_dir(run_dir: str) -> str:
    """Take run_dir/lock (our pid in it) so that a second process cannot train in the same folder;
    a lock whose process is gone is taken over. Returns the lock's path (removed at the end)."""
    path = os.path.join(run_dir, "lock")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with open(path, encoding="utf-8", errors="replace") as f:
                holder = f.read().strip()
            alive = holder.isdigit() and pid_alive(int(holder))
            need(not alive, f"{run_dir} is in use by process {holder} (its lock: {path})")
            os.remove(path)  # left by a process that died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    raise RunError(f"{path}: cannot take the lock")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def install_stop_signals():
    """First Ctrl-C (SIGINT) or SIGTERM (what timeout, SLURM and Kubernetes send before they
    kill): finish the running step, save a checkpoint, exit 130 / 143. A second signal aborts at
    once (the last checkpoint on disk stays intact), except under torchrun: there a Ctrl-C
    reaches each worker twice (from the terminal's process group, then forwarded by torchrun,
    with no bound on the delay), so later signals are ignored and torchrun's own SIGKILL after
    --shutdown-timeout is the abort. Returns (stop dict, a function that restores the previous
    handlers)."""
    stop = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        return stop, lambda: None

    def handler(signum, frame):
        if stop["signal"] is not None:
            if processes.launched_world_size() > 1:
                return
            raise KeyboardInterrupt
        stop["signal"] = signum
        again = "torchrun kills after --shutdown-timeout" if processes.launched_world_size() > 1 else "a second signal aborts"
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint ({again})", flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return stop, lambda: [signal.signal(s, h) for s, h in previous.items()]


# ----------------------------------------------------------------------------- files

def write_atomic(path: str, text: str):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def append_jsonl(path: str, record: dict):
    # NaN / inf (e.g. the entropy of positive samples when there are none) become null: strict JSON.
    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else \
        [clean(x) for x in v] if isinstance(v, list) else {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean(record), allow_nan=False) + "\n")


def read_json(path: str, what: str) -> dict:
    """A JSON object from a run folder; a corrupt file is an error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: corrupt {what} ({e})") from None
    need(isinstance(obj, dict), f"{path}: corrupt {what} (not a JSON object)")
    return obj


def truncate_jsonl(path: str, last_step: int):
    """On resume, drop lines logged after the checkpoint (a crash may have outrun it). A torn
    last line (the disk filled during an append) is dropped with a note; any other unreadable
    line is an error naming file:line."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    keep = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            need(all(not rest.strip() for rest in lines[i:]), f"{path}:{i}: not a JSON line; fix or delete it")
            print(f"{path}:{i}: dropped a torn last line (an append that did not finish)")
            break
        if record["step"] <= last_step:
            keep.append(line + "\n")
    write_atomic(path, "".join(keep))


def record_changes(run_dir: str, settings: dict, step: int, free: tuple = ()):
    """--resume --override: append to changes.jsonl which saved settings (config.json) the run's
    settings now change, from which step; the `free` ones (how a run is executed) are not recorded."""
    saved = read_json(os.path.join(run_dir, "config.json"), "run config")
    now = json.loads(json.dumps(settings))
    changed = {k: [saved[k], v] for k, v in now.items() if k in saved and k not in free and saved[k] != v}
    if changed:
        append_jsonl(os.path.join(run_dir, "changes.jsonl"), dict(from_step=step + 1, changed=changed))


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: str, policy, tok, optimizer, state: dict):
    """run_dir/checkpoint = a Hugging Face folder (`model.load` and `--model` read it) plus
    optimizer.safetensors (Adam moments) and trainer_state.json (step, data position, ...).
    Written whole to checkpoint.tmp, then swapped in: a crash at any point leaves the last
    good checkpoint (as checkpoint, or as checkpoint.old during the swap).
    Several processes: call it on every rank. Rank 0 writes; under --fsdp the weights are
    gathered to rank 0 first, and every rank writes its shard of the AdamW state into
    checkpoint/optimizer/ (torch.distributed.checkpoint), so the folder needs a file system all
    nodes share; optimizer.safetensors then holds only the random state."""
    from safetensors.torch import save_file

    rank, N = processes.world()
    fsdp = processes.is_fsdp(policy)
    processes.reshard_root(policy)
    finite = all(bool(torch.isfinite(p.to_local() if fsdp else p).all()) for p in policy.parameters())
    if N > 1 and fsdp:  # each rank sees only its shards (data parallel: every rank has the same weights)
        finite = processes.all_reduce_floats([float(not finite)], "max")[0] == 0
    if not finite:
        raise RuntimeError("refusing to checkpoint non-finite weights")
    final, tmp, old = (os.path.join(run_dir, n) for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        remove_stale_temporaries(run_dir)
        if fsdp:  # a plain Transformer around the gathered tensors (meta: no memory, no init)
            with torch.device("meta"):
                plain = model.Transformer(policy.config)
            plain.load_state_dict(full, assign=True)
            model.save(plain, tok, tmp)
            del plain, full
        else:
            model.save(policy, tok, tmp)
    if fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        torch.distributed.barrier()  # checkpoint.tmp exists
        dcp.save(get_optimizer_state_dict(policy, optimizer), checkpoint_id=os.path.join(tmp, "optimizer"))
    if rank == 0:
        opt = optimizer.state_dict()
        tensors = {} if fsdp else {f"state.{i}.{k}": v.detach().cpu().contiguous()
                                   for i, s in opt["state"].items() for k, v in s.items()}
        tensors["rng.torch_cpu"] = torch.get_rng_state()
        save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
        write_atomic(os.path.join(tmp, "trainer_state.json"),
                     json.dumps(dict(state, param_groups=opt["param_groups"]), indent=2))
        if os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    if N > 1:
        torch.distributed.barrier()  # no rank stops (or reads it on resume) before it is whole


def remove_stale_temporaries(run_dir: str):
    """Folders a killed save left behind (checkpoint.tmp, model.save's hidden .checkpoint.tmp.tmp-*).
    Only the process holding the run's lock saves there, so none of them is in use."""
    for name in os.listdir(run_dir):
        if name == "checkpoint.tmp" or name.startswith(".checkpoint."):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def find_checkpoint(run_dir: str) -> str | None:
    for name in ("checkpoint", "checkpoint.old"):  # .old: a crash hit between the two renames
        if os.path.exists(os.path.join(run_dir, name, "trainer_state.json")):
            return os.path.join(run_dir, name)
    return None


def load_trainer_state(ckpt: str, optimizer, policy=None) -> dict:
    """trainer_state.json, and the optimizer (and random) state into `optimizer`; under --fsdp
    (policy sharded) each rank reads its shards from checkpoint/optimizer/."""
    from safetensors.torch import load_file

    state = read_json(os.path.join(ckpt, "trainer_state.json"), "trainer state")
    path = os.path.join(ckpt, "optimizer.safetensors")
    sharded = os.path.isdir(os.path.join(ckpt, "optimizer"))
    fsdp = policy is not None and processes.is_fsdp(policy)
    need(sharded == fsdp, f"{ckpt}: {'an --fsdp' if sharded else 'a data-parallel'} checkpoint; resume it "
         f"{'with --fsdp under torchrun' if sharded else 'without --fsdp'}")
    try:
        tensors = load_file(path)
        torch.set_rng_state(tensors.pop("rng.torch_cpu"))
        if fsdp:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
            path = os.path.join(ckpt, "optimizer")
            osd = get_optimizer_state_dict(policy, optimizer)  # the layout to fill (it creates zero moments)
            dcp.load(osd, checkpoint_id=path)
            set_optimizer_state_dict(policy, optimizer, osd)
            state.pop("param_groups")
        else:
            opt_state = {}
            for key, v in tensors.items():  # "state.<param index>.<name>"
                _, i, name = key.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = v
            optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    except Exception as e:  # safetensors' own error, a missing key, a shape that does not fit
        raise RunError(f"{path}: cannot restore the optimizer ({type(e).__name__}: {e})") from None
    need(all(k in state for k in ("step", "data_pos")), f"{ckpt}/trainer_state.json: missing step / data_pos")
    return state

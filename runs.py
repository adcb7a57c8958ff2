"""The run: loading it, its folder and lock, Ctrl-C / SIGTERM, checkpoints, exact resume, the files.

A run lives in one folder (runs/<algo>-<date>-<time>-s<seed>-<pid>/ or --run-dir): config.json,
metrics.jsonl and samples.jsonl (one JSON line per step / evaluation), checkpoint/ (a Hugging
Face folder plus the optimizer and trainer state, swapped in whole), changes.jsonl (settings
changed on --resume --override) and, while a process trains there, lock. Every write is atomic
or an append, so a crash or Ctrl-C at any point leaves the last good checkpoint. `prepare`
loads everything a run needs (settings checked against the machine, data, model, optimizer,
checkpoint) before the first step, so every error a user can cause comes before any compute;
such errors are cli.UserError, one line naming the file. a3po.py imports this file; this file
never imports a3po.py.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import torch

import loggers
import model
import processes
from cli import UserError, eval_sampling, flag, need, show
from data import tasks


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
    raise UserError(f"{path}: cannot take the lock")


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
        raise UserError(f"{path}: corrupt {what} ({e})") from None
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


def git_commit() -> tuple[str | None, bool]:
    """(the commit of the code that runs, whether it has uncommitted changes), or (None, False)
    outside a git checkout."""
    git = lambda *args: subprocess.run(["git", "-C", REPO_DIR, *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, False
        return head.stdout.strip(), bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def write_config(run_dir: str, cfg, step: int):
    """config.json: the settings (what --resume reads back) and, under "started", when and with
    what code each start of the run (the first, then every resume) began."""
    path = os.path.join(run_dir, "config.json")
    started = read_json(path, "run config").get("started", []) if step and os.path.exists(path) else []
    commit, dirty = git_commit()
    started.append(dict(date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), at_step=step, git_commit=commit, git_dirty=dirty,
                        torch=torch.__version__, python=sys.version.split()[0], argv=sys.argv[1:]))
    write_atomic(path, json.dumps(dict(dataclasses.asdict(cfg), started=started), indent=2))


class ConsoleCopy:  # stdout that also appends to the run folder's console.log
    def __init__(self, stream, path: str):
        self.stream, self.file = stream, open(path, "a", encoding="utf-8")

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stream.write(text)

    def flush(self):
        self.file.flush()
        self.stream.flush()

    def __getattr__(self, name):  # isatty, encoding, fileno: the console's
        return getattr(self.stream, name)


def copy_console(run_dir: str):
    """From here on, what the run prints also goes to run_dir/console.log (appended on resume)."""
    stop_copying_console()
    sys.stdout = ConsoleCopy(sys.stdout, os.path.join(run_dir, "console.log"))


def stop_copying_console():
    if isinstance(sys.stdout, ConsoleCopy):
        sys.stdout.file.close()
        sys.stdout = sys.stdout.stream


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
        readable_by_all(tmp)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    if N > 1:
        torch.distributed.barrier()  # no rank stops (or reads it on resume) before it is whole


def readable_by_all(folder: str):
    """Files as the umask makes them (0644 under the usual 022), like the rest of the run folder:
    safetensors writes 0600, which others on a shared cluster could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)


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
        raise UserError(f"{path}: cannot restore the optimizer ({type(e).__name__}: {e})") from None
    need(all(k in state for k in ("step", "data_pos")), f"{ckpt}/trainer_state.json: missing step / data_pos")
    return state


# ----------------------------------------------------------------------------- the console and the logs

def fmt_time(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.1f}s"


def print_start(run):
    rank, N = processes.world()
    cfg, policy = run.cfg, run.policy
    if run.state["step"]:
        print(f"resumed {cfg.run_dir} at step {run.state['step']}")
    print(f"{cfg.algo}: {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters on "
          f"{policy.output_weight.device}, {len(run.train_set)} training problems, "
          f"{cfg.steps} steps of {cfg.prompts_per_step} prompts x {cfg.group_size} samples -> {cfg.run_dir}"
          + (f", {N} processes{' (FSDP)' if processes.is_fsdp(policy) else ''}" if N > 1 else ""))
    print_eval_header(cfg, run.held_out)


def print_eval_header(cfg, held_out: list):
    """What an evaluation measures: per held-out set, N of M problems, k samples at temperature T, up to L tokens."""
    T, top_p, L = eval_sampling(cfg)
    for h in held_out:
        k = max(cfg.eval_k)
        print(f"held-out {h.name}: {len(h.problems)} of {h.total} problems, {k} sample{'s' * (k > 1)} at "
              f"temperature {T}{f' (top-p {top_p})' if top_p < 1 else ''}, up to {L} tokens", flush=True)


def progress_line(m: dict, cfg, eta: float) -> str:
    line = (f"step {m['step']:4d}/{cfg.steps} | reward {m['reward']:.3f} | acc {m['accuracy']:.3f} "
            f"(drawn {m['accuracy_drawn']:.3f}) | ent {m['entropy']:.3f} | len {m['length']:.1f} | "
            f"boost {100 * m['boosted']:.1f}% | {fmt_time(m['time_step'])} | eta {fmt_time(eta)}")
    if cfg.dynamic_sampling and m["ds_tries"] > 1:  # the cap on tries is visible when hit
        line += f" | mixed groups {m['ds_mixed_groups']}/{cfg.prompts_per_step} in {m['ds_tries']} tries"
    if m["nonfinite_skipped"]:
        line += f" | SKIPPED {m['nonfinite_skipped']} non-finite update(s)"
    if m["nothing_to_learn"]:
        line += " | nothing to learn: every group's answers agree (no forward/backward)"
    return line


def eta(seconds: dict, steps_left: int, evals_left: int) -> float:
    """Seconds left: the steps and evaluations to come at the mean time of those so far."""
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
    return mean(seconds["step"]) * steps_left + mean(seconds["eval"]) * evals_left


@contextlib.contextmanager
def ticker(label: str, every: float = 30.0):
    """While the block runs longer than `every` seconds, a line every `every` seconds says it is
    still running and for how long (a step or an evaluation of a large model takes minutes)."""
    done, t0 = threading.Event(), time.time()

    def tick():
        while not done.wait(every):
            print(f"  ... {label}: {fmt_time(time.time() - t0)} so far", flush=True)
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def log_step(run, metrics: dict, samples: list[dict]):
    """A step's line in metrics.jsonl (and the dashboards) and its samples in samples.jsonl, by
    the process that writes files."""
    if processes.world()[0] == 0:
        append_jsonl(os.path.join(run.cfg.run_dir, "metrics.jsonl"), metrics)
        run.dashboards.log(metrics)
        for s in samples:
            append_jsonl(os.path.join(run.cfg.run_dir, "samples.jsonl"), s)


def eval_line(step: int | None, name: str, ev: dict, seconds: float) -> str:
    numbers = " | ".join(f"{k} {v:.3f}" if v <= 1 else f"{k} {v:.1f}" for k, v in ev.items())
    return ("eval" if step is None else f"eval {step:4d}") + f" {name} | {numbers} | {fmt_time(seconds)}"


def log_eval(run, step: int, results: dict):
    """An evaluation: per held-out set, a line in metrics.jsonl (its name under "benchmark"), the
    first sample of its first --log-samples problems in samples.jsonl, and a console line.
    results: {name: (metrics, samples, seconds)}."""
    cfg = run.cfg
    for h in run.held_out:
        ev, sampled, seconds = results[h.name]
        if processes.world()[0] == 0:
            record = dict(step=step, split="eval", benchmark=h.name, **ev, time_eval=seconds)
            append_jsonl(os.path.join(cfg.run_dir, "metrics.jsonl"), record)
            run.dashboards.log(record)
            for x in sampled:
                if x["sample"] == 0 and x["problem"] < cfg.log_samples:
                    p = h.problems[x["problem"]]
                    append_jsonl(os.path.join(cfg.run_dir, "samples.jsonl"), dict(
                        step=step, split="eval", benchmark=h.name, problem=x["problem"], prompt=p.prompt,
                        gold=p.answer, completion=x["completion"], reward=x["reward"]))
        print(eval_line(step, h.name, ev, seconds), flush=True)


def mean_pass1(evals: dict) -> float:
    return sum(ev["pass@1"] for ev in evals.values()) / len(evals)


def print_summary(run, seconds: float):
    """Before / after table per held-out set; the LAST line is `pass@1: <before>% -> <after>%`
    for scripts (with several sets, their mean, said so)."""
    cfg, state = run.cfg, run.state
    print(f"\ndone: {state['step']} steps in {fmt_time(seconds)}, {state['nonfinite_skipped']} non-finite "
          f"update(s) skipped; checkpoint in {os.path.join(cfg.run_dir, 'checkpoint')}")
    before_all, after_all = state["eval_before"], state["eval_last"]
    for name, after in after_all.items():
        before = before_all.get(name, {})
        print(f"  {name:14s} {'before':>8s} {'after':>8s}")
        for k in after:
            fmt = (lambda v: f"{100 * v:7.1f}%") if "length" not in k else (lambda v: f"{v:8.1f}")
            print(f"  {k:14s} {fmt(before[k]) if k in before else '-':>8s} {fmt(after[k])}")
    mean = f" (mean of {len(after_all)} held-out sets)" if len(after_all) > 1 else ""
    print(f"pass@1: {100 * mean_pass1(before_all):.1f}% -> {100 * mean_pass1(after_all):.1f}%{mean}", flush=True)


def write_eval_results(cfg, held_out: list, results: dict, seconds: float):
    """--eval-only's files in cfg.run_dir: results.json (the settings that matter and each set's
    numbers) and samples.jsonl (every sample). Console: one line per set, then `pass@1: X%`."""
    T, top_p, L = eval_sampling(cfg)
    summary = dict(model=cfg.model, samples_per_problem=max(cfg.eval_k), temperature=T, top_p=top_p,
                   max_new_tokens=L, seed=cfg.seed, seconds=seconds, benchmarks={})
    for h in held_out:
        ev, sampled, t = results[h.name]
        summary["benchmarks"][h.name] = dict(problems=len(h.problems), of=h.total, **ev, time_eval=t)
        print(eval_line(None, h.name, ev, t), flush=True)
    if processes.world()[0] == 0:
        write_atomic(os.path.join(cfg.run_dir, "results.json"), json.dumps(summary, indent=2))
        lines = []
        for h in held_out:
            for x in results[h.name][1]:
                p = h.problems[x["problem"]]
                lines.append(json.dumps(dict(benchmark=h.name, **x, prompt=p.prompt, gold=p.answer)) + "\n")
        write_atomic(os.path.join(cfg.run_dir, "samples.jsonl"), "".join(lines))
    evals = {name: r[0] for name, r in results.items()}
    mean = f" (mean of {len(evals)} held-out sets)" if len(evals) > 1 else ""
    print(f"results in {os.path.join(cfg.run_dir, 'results.json')}")
    print(f"pass@1: {100 * mean_pass1(evals):.1f}%{mean}", flush=True)
    stop_copying_console()
    return summary


# ----------------------------------------------------------------------------- before the first step

# How a run is executed, not what it computes: free to differ on --resume.
RUNTIME_FIELDS = ("resume", "override", "threads", "device", "dist_timeout", "wandb", "tensorboard")
REPO_DIR = os.path.dirname(os.path.abspath(__file__))


def resumed_config(config_cls, given: dict):
    """--resume RUN_DIR: the run's saved config.json, with the flags given. A flag that would
    change a saved setting is refused unless --override is given too (e.g. --override --steps 80
    extends a run; prepare records the change in changes.jsonl)."""
    resume = given["resume"]
    path = os.path.join(resume, "config.json")
    # A checkpoint folder has a config.json too (the model's): name the mix-up, not its settings.
    need(not os.path.isfile(os.path.join(resume, "trainer_state.json")), f"--resume {resume} is a checkpoint "
         f"folder: pass the run folder, --resume {os.path.normpath(os.path.join(resume, os.pardir))}")
    need(os.path.exists(path), f"--resume {resume}: no config.json there")
    need("algo" not in given, "--algo cannot change on --resume (the preset is in the run's config.json)")
    saved = read_json(path, "run config")
    need("model_type" not in saved, f"--resume {resume} is a model folder, not a training run's: to train "
         f"from it pass --model {resume}")
    saved.pop("override", None)  # said for one resume, not for the next
    saved.pop("started", None)   # when and with what the run was started (write_config)
    for name in ("pos_tail", "neg_tail"):  # runs saved before the tails were named by intent
        if saved.get(name) in ("low", "high"):
            low_is_uncertain = saved.get("token_criterion", "prob") == "prob"
            saved[name] = "uncertain" if (saved[name] == "low") == low_is_uncertain else "confident"
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(config_cls)})
    need(not unknown, f"{path}: unknown setting(s) {', '.join(unknown)} (written by another version of a3po.py?)")
    saved["eval_k"] = tuple(saved["eval_k"])
    if isinstance(saved.get("eval_data"), (str, list)):  # one file, as runs saved it before there could be several
        saved["eval_data"] = (saved["eval_data"],) if isinstance(saved["eval_data"], str) else tuple(saved["eval_data"])
    try:
        base = config_cls(**saved)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    cfg = dataclasses.replace(base, **given)
    changed = [k for k, v in given.items() if k not in RUNTIME_FIELDS and getattr(base, k) != v]
    need(not changed or cfg.override, f"--resume {given['resume']} continues the run with its saved settings: "
         + ", ".join(f"--{flag(k)} {show(given[k])} (saved: {show(getattr(base, k))})" for k in changed)
         + " would change them; add --override to change them on purpose (recorded in changes.jsonl), "
         "or leave them out")
    return cfg


def resolve_model_path(path: str) -> str:
    """A relative --model that is not found from the working directory is looked up next to
    a3po.py, so the default `data/default_model` works from anywhere."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    here = os.path.join(REPO_DIR, path)
    return here if os.path.exists(here) else path


@contextlib.contextmanager
def input_errors():
    """The loaders' errors about a bad file or folder (ValueError naming file:line, a missing
    file) are the user's: they become UserError. Anything else raised there is a bug and keeps
    its traceback."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from e


def check_machine(cfg):
    """What the settings need of this machine, before anything is loaded: the files and model
    folder they name, and a batch that splits over the processes torchrun started. (The settings'
    own values are checked where they are made: cli.check_settings.)"""
    B = cfg.prompts_per_step * cfg.group_size
    N = processes.launched_world_size()
    if N > 1:  # each process samples P / N prompts and trains on B / N rows in whole micro-batches
        need(cfg.prompts_per_step % N == 0, f"--prompts-per-step {cfg.prompts_per_step} does not divide over "
             f"{N} processes (torchrun --nproc-per-node x nodes): each samples an equal share of the prompts")
        need((B // N) % cfg.micro_batch_size == 0, f"--micro-batch-size {cfg.micro_batch_size} does not divide "
             f"the {B // N} responses of each of the {N} processes ({B} / {N}): pick one that divides it")
        need(cfg.device in ("auto", "cpu", "cuda"), f"--device {cfg.device}: under torchrun use auto, cpu or cuda "
             f"(process i takes GPU LOCAL_RANK)")
    need(not cfg.fsdp or N > 1, "--fsdp shards the model over processes: start it with torchrun --nproc-per-node N "
         "(N >= 2)")
    need(cfg.data in ("synthetic", "search") or os.path.isfile(cfg.data),
         f"--data {cfg.data}: no such file (or 'synthetic', 'search')")
    for path in cfg.eval_data or ():
        need(os.path.isfile(path), f"--eval-data {path}: no such file")
    if cfg.wandb:  # a missing package stops the run before anything loads
        loggers.need_package("wandb", "--wandb")
    if cfg.tensorboard:
        loggers.need_package("tensorboard", "--tensorboard")
    path = resolve_model_path(cfg.model)
    # A run folder has a config.json too (a3po's settings, next to metrics.jsonl / checkpoint/):
    # name the mix-up here rather than let the model loader fail on a config without a model_type.
    is_run = os.path.isfile(os.path.join(path, "metrics.jsonl")) or os.path.isdir(os.path.join(path, "checkpoint"))
    need(not is_run, f"--model {cfg.model} is a training run's folder: to "
         f"{'evaluate' if cfg.eval_only else 'start from'} its weights pass --model "
         f"{os.path.join(cfg.model, 'checkpoint')}; to continue the run pass --resume {cfg.model}")
    need(os.path.isfile(os.path.join(path, "config.json")),
         f"--model {cfg.model}: no Hugging Face model folder there (config.json missing)")
    check_device(cfg.device)


def check_device(name: str):
    """--device names a device this machine has: torch would otherwise fail at the first tensor
    moved there, with a long traceback. (Under torchrun, cuda means cuda:LOCAL_RANK.)"""
    try:
        device = processes.pick_device(name)
    except RuntimeError:  # torch.device's own parse error
        raise UserError(f"--device {name}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type != "cuda":
        return
    need(torch.cuda.is_available(), f"--device {name}: this machine has no CUDA device "
         f"(torch.cuda.is_available() is False); use --device cpu")
    count = torch.cuda.device_count()
    need(device.index is None or device.index < count, f"--device {name}: {device} is beyond this machine's "
         f"{count} CUDA device(s) (cuda:0 to cuda:{count - 1})")


@dataclasses.dataclass
class HeldOut:  # one held-out set (benchmark): the problems evaluated, N of the set's M
    name: str               # how metrics.jsonl, the console and results.json call it
    problems: list          # [N] tasks.Problem
    total: int              # M: the problems the set has
    ids: list | None = None  # [N] prompt token ids (encode_prompts)


def benchmark_name(path: str) -> str:
    """math500_test.jsonl -> math500: the file's stem, without a _test suffix."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[:-len("_test")] if stem.endswith("_test") and len(stem) > 5 else stem


def load_problems(cfg):
    """-> (training problems, [HeldOut]). Bad files fail here, naming file:line.
    --answer-check number / equivalence sets how every problem's reward reads answers
    (auto: as its task says, see tasks.Problem.numeric)."""
    with input_errors():
        train, held_out = read_problems(cfg)
    if cfg.answer_check != "auto":
        numeric = cfg.answer_check == "number"
        train = [dataclasses.replace(p, numeric=numeric) for p in train]
        for h in held_out:
            h.problems = [dataclasses.replace(p, numeric=numeric) for p in h.problems]
    return train, held_out


def read_problems(cfg):
    fmt = dict(fmt=cfg.data_format, prompt_key=cfg.prompt_key, answer_key=cfg.answer_key)
    size = cfg.eval_size or 200  # of a generated test split, or of --data's tail
    held_out = []
    if cfg.data == "synthetic":
        # The task itself is fixed (seed 0): --seed changes only the training randomness, so
        # runs with different seeds are compared on the same held-out problems.
        train = tasks.synthetic_problems(cfg.train_size, 0, "train", cfg.synthetic_level)
        if not cfg.eval_data:
            held_out = [HeldOut("synthetic", tasks.synthetic_problems(size, 0, "test", cfg.synthetic_level), size)]
    elif cfg.data == "search":
        train = tasks.search_problems(cfg.train_size, 0, "train")
        if not cfg.eval_data:
            held_out = [HeldOut("search", tasks.search_problems(size, 0, "test"), size)]
    else:
        train = tasks.load_problems(cfg.data, **fmt)
        if not cfg.eval_data:  # hold out the tail of the file (never trained on)
            need(len(train) >= 2 * size, f"{cfg.data}: {len(train)} problems is too few to hold out "
                 f"--eval-size {size}; pass --eval-data or a smaller --eval-size")
            train, tail = train[:-size], train[-size:]
            held_out = [HeldOut(benchmark_name(cfg.data) + "-tail", tail, size)]
    for path in cfg.eval_data or ():
        problems = tasks.load_problems(path, **fmt)
        held_out.append(HeldOut(benchmark_name(path), problems[:cfg.eval_size], len(problems)))
    names = [h.name for h in held_out]
    need(len(set(names)) == len(names), f"--eval-data: two files named {sorted({n for n in names if names.count(n) > 1})} "
         f"(a benchmark is reported under its file's name): rename one")
    return train, held_out


def encode_prompts(problems, tok, cfg, context: int, where: str, budget: str = "max_new_tokens") -> list[list[int]]:
    """Prompt ids of each problem; a prompt that cannot fit its answer (`budget`: the setting
    that bounds it) in the context (the model's max_position_embeddings) is an error naming the
    problem's file:line."""
    max_new = getattr(cfg, budget)
    ids = [tasks.build_prompt(p.prompt, tok, cfg.template) for p in problems]
    for i, (problem, p) in enumerate(zip(problems, ids)):
        need(len(p) + max_new <= context, f"{problem.source or f'{where} problem {i + 1}'}: prompt of "
             f"{len(p)} tokens + --{flag(budget)} {max_new} exceeds the model's context of {context} tokens")
    return ids


def encode_held_out(held_out: list[HeldOut], tok, cfg, context: int):
    budget = "max_new_tokens" if cfg.eval_max_new_tokens is None else "eval_max_new_tokens"
    for h in held_out:
        h.ids = encode_prompts(h.problems, tok, cfg, context, h.name, budget)


def load_policy(path: str, cfg, device):
    """model.load (which refuses non-finite weights, naming the tensor) + an EOS to end responses."""
    with input_errors():
        policy, tok = model.load(path, device=device)
        if cfg.eos_token:
            model.set_eos(tok, cfg.eos_token)
    need(bool(tok.eos_ids), f"{path}: its config files name no EOS token, so responses could never end: "
         f"pass --eos-token TOKEN (e.g. --eos-token '<|im_end|>')")
    policy.optimizer_steps = 0  # the trainer counts its updates here (a3po.weights_version)
    return policy, tok


def make_optimizer(policy, cfg) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel over every parameter instead of a loop of small ops per tensor)
    where this torch offers it for the device; the same update either way. Not under --fsdp,
    whose sharded parameters keep the plain loop."""
    kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if not cfg.fsdp:
        try:
            return torch.optim.AdamW(policy.parameters(), fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):  # an older torch: fused AdamW is CUDA-only there
            pass
    return torch.optim.AdamW(policy.parameters(), **kw)


@dataclasses.dataclass
class Run:  # everything a run needs, loaded and checked before the first step
    cfg: object             # a3po.Config, its defaults resolved
    policy: torch.nn.Module
    ref_policy: torch.nn.Module | None
    tok: model.Tokenizer
    optimizer: torch.optim.Optimizer
    train_set: list
    train_ids: list
    held_out: list          # [HeldOut], prompt ids encoded
    state: dict             # step, data_pos, nonfinite_skipped, eval_before, eval_last
    lock: str | None        # rank 0's lock file (None on the other ranks)
    dashboards: loggers.Loggers  # --wandb / --tensorboard (rank 0), or one that does nothing


def prepare(cfg) -> Run:
    """Check the settings against the machine, take the run folder (its lock, first), load data,
    model, optimizer and (on --resume) the checkpoint. Every error a user can cause happens here,
    before any compute, and releases the lock. Several processes: every rank loads the same; rank
    0 alone takes the folder and writes to it, under the name it chose; an error on any rank stops
    them all (agree_on_errors)."""
    check_machine(cfg)
    device = processes.pick_device(cfg.device)
    rank = processes.world()[0]
    # rank 0's name (its pid) on every process
    run_dir = processes.broadcast_object(cfg.resume or cfg.run_dir or new_run_dir(cfg.algo, cfg.seed))
    cfg = dataclasses.replace(cfg, run_dir=run_dir)
    lock, created, error = None, False, None
    try:
        try:
            # The folder first: a second run there, or a wrong --resume, is refused before
            # minutes of loading a large model.
            if rank == 0:
                created = not os.path.isdir(run_dir)
                with input_errors():  # (e.g. a --run-dir where we may not write)
                    os.makedirs(run_dir, exist_ok=True)
                lock = lock_run_dir(run_dir)
                remove_stale_temporaries(run_dir)
            ckpt = find_checkpoint(run_dir)
            need(not cfg.resume or ckpt is not None, f"--resume {run_dir}: no checkpoint there (the run stopped "
                 f"before its first one); start it again with --run-dir {run_dir} and the flags it was started with")
            need(cfg.resume or ckpt is None, f"{run_dir} already holds a run: --resume {run_dir} continues it")
        except Exception as e:
            error = e
        processes.agree_on_errors(error, UserError)  # (rank 0's refused folder stops every rank here)
        try:
            train_set, held_out = load_problems(cfg)
            policy, tok = load_policy(ckpt or resolve_model_path(cfg.model), cfg, device)
            context = policy.config.max_position_embeddings
            train_ids = encode_prompts(train_set, tok, cfg, context, "--data " + cfg.data)
            encode_held_out(held_out, tok, cfg, context)
            policy.gradient_checkpointing = cfg.grad_checkpointing
            # The KL reference is the STARTING model (also on resume), frozen; not loaded when kl_coef = 0.
            ref_policy = None
            if cfg.kl_coef > 0:
                with input_errors():
                    ref_policy = model.load(resolve_model_path(cfg.model), device=device)[0].requires_grad_(False)
            if cfg.fsdp:  # each rank loaded the full weights; from here on it keeps 1/N of them
                policy = processes.shard_model(policy)
                ref_policy = ref_policy if ref_policy is None else processes.shard_model(ref_policy)
            optimizer = make_optimizer(policy, cfg)
        except Exception as e:
            error = e
        processes.agree_on_errors(error, UserError)  # (before the checkpoint's collective reads)
        try:
            if ckpt:
                state = load_trainer_state(ckpt, optimizer, policy)
                for key in ("eval_before", "eval_last"):  # a checkpoint from before held-out sets had names
                    if state.get(key) and "pass@1" in state[key]:
                        state[key] = {held_out[0].name: state[key]}
                if rank == 0:
                    for name in ("metrics.jsonl", "samples.jsonl"):
                        truncate_jsonl(os.path.join(run_dir, name), state["step"])
                    record_changes(run_dir, dataclasses.asdict(cfg), state["step"], RUNTIME_FIELDS)
            else:
                if rank == 0:
                    for name in ("metrics.jsonl", "samples.jsonl"):
                        open(os.path.join(run_dir, name), "w").close()
                torch.manual_seed(cfg.seed)
                state = dict(step=0, data_pos=0, nonfinite_skipped=0, eval_before=None, eval_last=None)
            if rank == 0:
                write_config(run_dir, cfg, state["step"])
                dashboards = loggers.open_loggers(run_dir, dataclasses.asdict(cfg), cfg.wandb, cfg.tensorboard,
                                                  state["step"])
                copy_console(run_dir)
        except Exception as e:
            error = e
        processes.agree_on_errors(error, UserError)
    except BaseException:
        if lock:
            os.remove(lock)
            if created:  # a folder this start made goes too, when nothing was written there
                with contextlib.suppress(OSError):
                    os.rmdir(run_dir)
        raise
    return Run(cfg, policy, ref_policy, tok, optimizer, train_set, train_ids, held_out, state, lock,
               dashboards if rank == 0 else loggers.Loggers())


def load_for_eval(cfg):
    """(policy, tok, [HeldOut] encoded) of --model and the held-out sets the settings name."""
    check_machine(cfg)
    _, held_out = load_problems(cfg)
    policy, tok = load_policy(resolve_model_path(cfg.model), cfg, processes.pick_device(cfg.device))
    encode_held_out(held_out, tok, cfg, policy.config.max_position_embeddings)
    return policy, tok, held_out


def prepare_eval(cfg):
    """--eval-only's loading: (cfg with its run folder, policy, tok, [HeldOut] encoded). The
    folder (--run-dir, or a new runs/eval-...) gets config.json now and the results at the end."""
    policy, tok, held_out = load_for_eval(cfg)
    run_dir = processes.broadcast_object(cfg.run_dir or new_run_dir("eval", cfg.seed))
    cfg = dataclasses.replace(cfg, run_dir=run_dir)
    need(not os.path.isdir(run_dir) or not os.listdir(run_dir),
         f"--run-dir {run_dir} is not empty: --eval-only writes its results to a new folder (or leave --run-dir out)")
    if processes.world()[0] == 0:
        with input_errors():
            os.makedirs(run_dir, exist_ok=True)
        write_config(run_dir, cfg, 0)
        copy_console(run_dir)
    return cfg, policy, tok, held_out


def release(run):
    """The end of a run on this process: its lock file goes, the console is no longer copied."""
    run.dashboards.close()
    if run.lock and os.path.exists(run.lock):
        os.remove(run.lock)
    stop_copying_console()


# ----------------------------------------------------------------------------- CPU threads

def choose_threads(cfg) -> int:
    """torch's CPU thread count for the run, 0 to keep torch's default. --threads N wins. Else a
    CPU run where torch's default is 2 threads or fewer takes 1: on the 2-core CPU two threads were
    1.6-1.8x faster while nothing else ran, but 2x slower beside one busy process and 2.5-8x slower
    as the machine was shared, for the tiny model and SmolLM2-135M alike (bench/threads.py); the
    results are the same. More cores (not measured here) and CUDA runs keep torch's default: all
    cores, or OMP_NUM_THREADS, which torchrun sets to 1 when it starts several processes."""
    if cfg.threads > 0:
        return cfg.threads
    if cfg.device != "cpu" and (cfg.device != "auto" or torch.cuda.is_available()):
        return 0  # a GPU run (a device name that is wrong is check_machine's to say)
    return 1 if torch.get_num_threads() <= 2 else 0

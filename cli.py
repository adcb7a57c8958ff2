"""The command line: one flag per field of a3po.Config, and the one place its values are checked.

A field made with `arg(default, section, help, choices)` carries its --help text, the section of
docs/method.md it belongs to ("trainer" for the trainer's own settings) and, for a string, the
allowed values. `build_parser` turns the fields into flags whose defaults are SUPPRESSed, so
parse_args returns only the flags the user typed (those override a preset); each flag's help
ends with its default and the presets that set another value. `check_settings` is what
Config.__post_init__ runs: a bad value fails before any compute, naming its flag. Errors a
user can cause are UserError: one line `a3po: error: ...`, exit 2, no traceback; argparse's own
errors (an unknown flag, a bad value for a typed flag) are UserError too, without its usage block.
a3po.py imports this file; this file never imports a3po.py.
"""
import argparse
import difflib
import math
import typing
from dataclasses import field, fields


class UserError(ValueError):
    """Bad flags, files or data: printed as one line `a3po: error: ...` (exit 2), no traceback."""


def need(ok: bool, msg: str):
    """The one check helper: argument and input errors name what is wrong."""
    if not ok:
        raise UserError(msg)


def arg(default, section: str, help: str, choices: tuple | None = None):
    """A Config field with its --help text, the docs/method.md section it belongs to and, for a
    string setting, the allowed values (checked in Config.__post_init__, offered by --help)."""
    return field(default=default, metadata=dict(section=section, help=help, choices=choices))


def flag(name: str) -> str:
    return name.replace("_", "-")


def show(v) -> str:
    return "on" if v is True else "off" if v is False else " ".join(map(str, v)) if isinstance(v, tuple) else str(v)


def optional(convert):
    """A flag converter that also takes 'none' (turns the setting off)."""
    def parse(text):
        return None if text == "none" else convert(text)
    parse.__name__ = convert.__name__  # argparse names the type in its error message
    return parse


class Parser(argparse.ArgumentParser):
    """argparse, but an error is a UserError (one line naming the flag), not the usage block and exit."""
    def error(self, message):
        raise UserError(message.removeprefix("argument "))


def build_parser(config_cls, presets: dict, prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per field of config_cls; presets: {name: {field: value}} (shown next to defaults).
    No abbreviations: argparse would otherwise run `--step 1` as --steps 1 and `--eval-on` as
    --eval-only, and a flag added later could silently change what an old command line means."""
    p = Parser(prog=prog, argument_default=argparse.SUPPRESS, description=description, allow_abbrev=False)
    defaults = config_cls()
    preset_fields = set().union(*(v.keys() for v in presets.values()))
    for f in fields(config_cls):
        meta, default = f.metadata, getattr(defaults, f.name)
        tag = "[trainer]" if meta["section"] == "trainer" else f"[method {meta['section']}]"
        text = f"{tag} {meta['help']}"
        if default is not None:
            text += f" (default: {show(default)}"
            if f.name in preset_fields:  # the presets that set another value
                other = {}
                for a, v in presets.items():
                    if v[f.name] != default:
                        other.setdefault(show(v[f.name]), []).append(a)
                text += "".join(f"; --algo {', '.join(a)}: {v}" for v, a in other.items())
            text += ")"
        names = ["--" + flag(f.name)]
        args = typing.get_args(f.type)
        base = next((a for a in args if a is not type(None)), f.type) if type(None) in args else f.type
        kw = dict(dest=f.name, help=text.replace("%", "%%"))
        if base is bool:
            p.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) is tuple:  # tuple[int, ...] or tuple[str, ...]
            item = typing.get_args(base)[0]
            p.add_argument(*names, type=item, nargs="+", metavar={int: "K"}.get(item, "S"), **kw)
        elif meta["choices"]:
            p.add_argument(*names, choices=list(meta["choices"]) + (["none"] if f.default is None else []), **kw)
        else:  # "none" turns an optional setting off
            conv = optional(base) if f.default is None else base
            p.add_argument(*names, type=conv, metavar={int: "N", float: "X"}.get(base, "S"), **kw)
    return p


def parse_flags(parser: argparse.ArgumentParser, config_cls, argv=None) -> dict:
    """{field: value} of the flags the user typed, as the config holds them ('none' -> None
    for an optional setting, a list -> a tuple). An unknown flag is an error that names the
    nearest real one."""
    given, unknown = parser.parse_known_args(argv)
    if unknown:
        word = unknown[0]
        if word.startswith("-"):
            name = word.split("=")[0]  # (--flag=value)
            raise UserError(f"unknown flag {name}" + did_you_mean(name, parser))
        raise UserError(f"unexpected argument {word!r}: a value with no --flag before it")
    given = vars(given)
    optional = {f.name for f in fields(config_cls) if f.default is None}
    return {k: None if k in optional and v in ("none", ["none"]) else tuple(v) if isinstance(v, list) else v
            for k, v in given.items()}


def did_you_mean(word: str, parser: argparse.ArgumentParser) -> str:
    names = [s for action in parser._actions for s in action.option_strings]
    close = difflib.get_close_matches(word, names, n=1)
    return f" (did you mean {close[0]}?)" if close else " (see --help)"


def eval_sampling(cfg) -> tuple[float, float, int]:
    """Evaluation's (temperature, top_p, max_new_tokens): the --eval-* value, or training's when not given."""
    pick = lambda own, training: training if own is None else own
    return (pick(cfg.eval_temperature, cfg.temperature), pick(cfg.eval_top_p, cfg.top_p),
            pick(cfg.eval_max_new_tokens, cfg.max_new_tokens))


def check_settings(cfg):
    """The settings' own values, checked once (Config.__post_init__ calls this), each error
    naming its flag. What they need of the machine (files, processes) is runs.check_machine.
    A list setting given as one string or a list (from Python, or an older config.json) becomes a tuple."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if typing.get_origin(f.type) is tuple or tuple in map(typing.get_origin, typing.get_args(f.type)):
            if isinstance(v, (str, list)):
                object.__setattr__(cfg, f.name, (v,) if isinstance(v, str) else tuple(v))
    for f in fields(cfg):
        v, allowed = getattr(cfg, f.name), f.metadata["choices"]
        need(allowed is None or v in allowed or (v is None and f.default is None),
             f"--{flag(f.name)} {v!r}: must be one of {', '.join(allowed or ())}")
        if isinstance(v, float):  # inf / nan / beyond float32 would surface mid-run as something else
            need(math.isfinite(v) and abs(v) < 1e30, f"--{flag(f.name)} {v}: must be a finite number")
    need(cfg.adv_norm != "raw" or cfg.raw_adv is not None, "--adv-norm raw needs --raw-adv psr|nsr|w-reinforce")
    for name in ("rho_pos", "rho_neg"):
        need(0.0 <= getattr(cfg, name) <= 1.0, f"--{flag(name)} {getattr(cfg, name)}: must be in [0, 1]")
    for name in ("eps_low", "eps_high", "kl_coef", "adv_eps", "w_pos", "w_neg", "wreinforce_lambda"):
        need(getattr(cfg, name) >= 0, f"--{flag(name)} {getattr(cfg, name)}: must be >= 0")
    need(cfg.eps_low < 1, f"--eps-low {cfg.eps_low}: must be < 1 (ratio floor 1 - eps_low > 0)")
    need(cfg.clip_c is None or cfg.clip_c > 1, f"--clip-c {cfg.clip_c}: the dual-clip bound must be > 1")
    for name in ("alpha_decay_steps", "lr_decay_steps"):
        need(getattr(cfg, name) is None or getattr(cfg, name) > 0, f"--{flag(name)} {getattr(cfg, name)}: must be > 0")
    need(cfg.loss_agg_constant is None or cfg.loss_agg_constant > 0,
         f"--loss-agg-constant {cfg.loss_agg_constant}: must be > 0")
    for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "ppo_epochs", "micro_batch_size",
                 "max_sample_tries", "eval_batch_size", "train_size"):
        need(getattr(cfg, name) >= 1, f"--{flag(name)} must be >= 1 (got {getattr(cfg, name)})")
    B = cfg.prompts_per_step * cfg.group_size
    need(cfg.adv_norm == "raw" or cfg.group_size >= 2,
         f"--group-size {cfg.group_size}: group-relative advantages need at least 2 responses per prompt")
    need(B % cfg.micro_batch_size == 0, f"--micro-batch-size {cfg.micro_batch_size} does not divide the batch "
         f"of --prompts-per-step {cfg.prompts_per_step} x --group-size {cfg.group_size} = {B} responses")
    need(cfg.dist_timeout > 0, f"--dist-timeout {cfg.dist_timeout} must be > 0 (minutes)")
    need(0 < cfg.temperature <= 100,
         f"--temperature {cfg.temperature}: training needs (0, 100] (log-probs use hidden / T)")
    need(0 < cfg.top_p <= 1, f"--top-p {cfg.top_p} must be in (0, 1]")
    need(cfg.threads >= 0, f"--threads {cfg.threads} must be >= 0 (0 = auto)")
    need(0 <= cfg.lr <= 1, f"--lr {cfg.lr} must be in [0, 1]")
    need(cfg.warmup_steps >= 0 and cfg.weight_decay >= 0, "--warmup-steps, --weight-decay must be >= 0")
    need(cfg.grad_clip >= 0, f"--grad-clip {cfg.grad_clip} must be >= 0 (0 = no clipping)")
    for name in ("eval_size", "eval_max_new_tokens"):
        need(getattr(cfg, name) is None or getattr(cfg, name) >= 1, f"--{flag(name)} must be >= 1 (got {getattr(cfg, name)})")
    need(cfg.eval_temperature is None or 0 <= cfg.eval_temperature <= 100,
         f"--eval-temperature {cfg.eval_temperature}: must be in [0, 100] (0 = greedy)")
    need(cfg.eval_top_p is None or 0 < cfg.eval_top_p <= 1, f"--eval-top-p {cfg.eval_top_p} must be in (0, 1]")
    need(cfg.eval_data is None or len(set(cfg.eval_data)) == len(cfg.eval_data), "--eval-data: a file given twice")
    need(len(cfg.eval_k) > 0 and min(cfg.eval_k) >= 1,
         f"--eval-k {' '.join(map(str, cfg.eval_k))}: give one or more k >= 1")
    need(cfg.overlong_cache is None or 0 <= cfg.overlong_cache < cfg.max_new_tokens,
         f"--overlong-cache {cfg.overlong_cache}: must be in [0, --max-new-tokens {cfg.max_new_tokens}) "
         f"(a cache as long as the limit would make the soft penalty a plain length penalty)")

"""The command line: one flag per field of a configuration dataclass, its help from the field.

A field made with `arg(default, section, help, choices)` carries its --help text, the section of
docs/method.md it belongs to ("trainer" for the trainer's own settings) and, for a string, the
allowed values. `build_parser` turns the fields into flags whose defaults are SUPPRESSed, so
parse_args returns only the flags the user typed (those override a preset); each flag's help
ends with its default and the presets that set another value. a3po.py imports this file.
"""
import argparse
import typing
from dataclasses import field, fields


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


def build_parser(config_cls, presets: dict, prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per field of config_cls; presets: {name: {field: value}} (shown next to defaults)."""
    p = argparse.ArgumentParser(prog=prog, argument_default=argparse.SUPPRESS, description=description)
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
        elif typing.get_origin(base) is tuple:
            p.add_argument(*names, type=int, nargs="+", metavar="K", **kw)
        elif meta["choices"]:
            p.add_argument(*names, choices=list(meta["choices"]) + (["none"] if f.default is None else []), **kw)
        else:  # "none" turns an optional setting off
            conv = optional(base) if f.default is None else base
            p.add_argument(*names, type=conv, metavar={int: "N", float: "X"}.get(base, "S"), **kw)
    return p

"""What every command of the command line shares: user errors, the exit codes, the help
format, option flags made from dataclass fields, and argument checks."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence
from pathlib import Path

__all__ = ["EXIT_CODES", "UserError", "field_comments", "option_flag", "options_from"]


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


EXIT_CODES = """exit status:
  0    done
  1    some inputs failed (each reported on stderr; the others were done)
  2    bad usage: an unknown option, a bad value, a model or file that is not there
  130  interrupted (Ctrl+C)
  143  terminated (SIGTERM); temporary files are removed as on a normal exit"""


class _HelpFormatter(argparse.HelpFormatter):
    """Wrapped help lines with the default appended to every option that has one; texts
    with line breaks of their own (the exit codes) are kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or not action.option_strings
            or default in (None, False, "", [], argparse.SUPPRESS)
        ):
            return text
        shown = default if not isinstance(default, (list, tuple)) else ", ".join(map(str, default))
        return f"{text} (default: {str(shown).replace('%', '%%')})"


# --------------------------------------------------------------------------- option flags


def field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of dataclass ``cls``: on its line, else the lines above."""
    import dataclasses
    import inspect
    import io
    import re
    import tokenize

    source = inspect.getsource(cls)
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    for field in dataclasses.fields(cls):
        row = next(i + 1 for i, line in enumerate(lines) if re.match(rf"\s+{field.name}\s*:", line))
        above = []
        while (
            row - 1 - len(above) in by_line
            and not lines[row - 2 - len(above)].split("#")[0].strip()
        ):
            above.insert(0, by_line[row - 1 - len(above)])
        out[field.name] = by_line.get(row) or " ".join(above)
    return out


class _AddTo(argparse.Action):
    """A repeatable flag whose values are added to the default tuple."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, (*getattr(namespace, self.dest), values))


class _Replace(argparse.Action):
    """A repeatable flag whose first use replaces the default tuple."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest)
        kept = () if current is self.default else tuple(current)
        setattr(namespace, self.dest, (*kept, values))


def option_flag(p: argparse.ArgumentParser, cls: type, name: str, *flags: str, **kw) -> None:
    """Add the flag of dataclass field ``cls.name``: default, help (the field's comment),
    choices (a Literal type) and type come from the field; ``kw`` overrides any of them."""
    import dataclasses
    import types
    import typing

    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    args = {"dest": name, "default": field.default, "help": field_comments(cls)[name]}
    if typing.get_origin(hint) is typing.Literal:
        args["choices"] = typing.get_args(hint)
    if hint is bool:
        args["action"] = "store_false" if field.default else "store_true"
    elif hint in (int, float, str, Path):
        args["type"] = hint
    args.update(kw)
    p.add_argument(*(flags or ("--" + name.replace("_", "-"),)), **args)


def options_from(cls: type, args: argparse.Namespace, **given):
    """An instance of dataclass ``cls`` from the parsed flags of its fields."""
    import dataclasses

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in given}
    return cls(**values, **given)


def _check_device(device: str, backend: str = "ct2") -> None:
    """--device cuda on a machine without CUDA: one line instead of a library traceback."""
    if device != "cuda":
        return
    if backend == "ct2":
        import ctranslate2

        found = ctranslate2.get_cuda_device_count() > 0
    else:
        import torch

        found = torch.cuda.is_available()
    if not found:
        raise UserError("--device cuda: no CUDA device found here; use --device cpu (or auto)")


def _file_size(text: str) -> str:
    """argparse type of --max-file-size: a number with b, kb, mb or gb."""
    from whisper_sv.app.options import SIZE_PATTERN

    if not SIZE_PATTERN.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; give a number with b, kb, mb or gb, e.g. 200mb"
        )
    return text.strip()


def _check_port(host: str, port: int) -> None:
    """A taken port, said before Gradio starts (it would end in a traceback)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(
                f"cannot serve on {host}:{port} ({err.strerror}); the port is taken or the "
                "address is not this machine's: choose another with --port N or --host"
            ) from err


def _comma_list(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())

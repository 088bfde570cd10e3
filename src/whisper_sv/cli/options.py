"""What every command of the command line shares: user errors, the exit codes, the help
format, option flags made from dataclass fields, and argument checks."""

from __future__ import annotations

import argparse
import functools
import socket
from pathlib import Path

__all__ = [
    "EXIT_CODES",
    "AddMany",
    "AddTo",
    "CommaList",
    "HelpFormatter",
    "IndexOfCount",
    "Replace",
    "UserError",
    "add_config_flags",
    "add_model_flag",
    "add_progress_flag",
    "add_set_flag",
    "check_device",
    "check_port",
    "default_words",
    "field_comments",
    "file_size",
    "option_flag",
    "options_from",
]


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


EXIT_CODES = """exit status:
  0    done
  1    some inputs failed (each reported on stderr; the others were done)
  2    bad usage: an unknown option, a bad value, a model or file that is not there
  130  interrupted (Ctrl+C)
  143  terminated (SIGTERM); temporary files are removed as on a normal exit"""


class HelpFormatter(argparse.HelpFormatter):
    """Wrapped help lines that say every option's default; texts with line breaks of their
    own (the exit codes) are kept as written.

    A flag that switches something on or off says, in words, whether it is on by default
    and which flag changes that: "(default: True)" beside ``--no-vad`` read as "off"."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or action.required:
            return text
        return f"{text} ({default_words(action)})" if default_words(action) else text


def default_words(action: argparse.Action) -> str:
    """What an option does when not given, in words ("" for one without a default)."""
    default = action.default
    if default is argparse.SUPPRESS:
        return ""  # --help
    flag = action.option_strings[-1]
    if isinstance(action, argparse.BooleanOptionalAction) and default is not None:
        on, off = action.option_strings[0], action.option_strings[-1]
        return (
            f"on by default; {off} turns it off" if default else f"off by default; {on} turns it on"
        )
    if isinstance(action, argparse._StoreFalseAction):
        return f"on by default; {flag} turns it off"
    if isinstance(action, argparse._StoreTrueAction):
        return f"off by default; {flag} turns it on"
    if default is None:
        return ""  # the help says what "not given" means (checked by the tests)
    render = getattr(action.type, "render", None)
    if render is not None:
        shown = render(default)
    elif isinstance(default, (list, tuple)):
        shown = ",".join(map(str, default)) if default else "none"
    elif default == "":
        shown = '""'
    else:
        shown = str(default)
    return "default: " + shown.replace("%", "%%")


# --------------------------------------------------------------------------- option flags


def field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of dataclass ``cls``: on its line, else the lines above."""
    return dict(_read_field_comments(cls))


@functools.cache
def _read_field_comments(cls: type) -> dict[str, str]:
    # Cached: a parser reads the comments of one class once per flag.
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


class AddTo(argparse.Action):
    """A repeatable flag whose values are added to the default tuple."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, (*getattr(namespace, self.dest), values))


class Replace(argparse.Action):
    """A repeatable flag whose first use replaces the default tuple."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest)
        kept = () if current is self.default else tuple(current)
        setattr(namespace, self.dest, (*kept, values))


class CommaList(argparse.Action):
    """A repeatable flag of comma lists (``--split train,test`` = ``--split train --split
    test``) whose first use replaces the default tuple; items are converted by ``item``."""

    def __init__(self, *args, item: type = str, **kw) -> None:
        super().__init__(*args, **kw)
        self.item = item

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest)
        kept = () if current is self.default else tuple(current)
        texts = [v.strip() for v in values.split(",") if v.strip()]
        try:
            items = tuple(self.item(v) for v in texts)
        except ValueError as err:
            example = ",".join(map(str, self.default)) or "1,2"
            raise argparse.ArgumentError(
                self,
                f"{values!r}: give {self.item.__name__} values separated by commas, e.g. {example}",
            ) from err
        setattr(namespace, self.dest, (*kept, *items))


class IndexOfCount:
    """argparse type of an ``I/N`` pair (one of N machines), e.g. ``--shard 0/4``."""

    __name__ = "I/N"

    def __call__(self, text: str) -> tuple[int, int]:
        index, sep, count = text.partition("/")
        if not (sep and index.strip().isdigit() and count.strip().isdigit()):
            raise argparse.ArgumentTypeError(f"{text!r} is not I/N; give e.g. 0/4")
        return int(index), int(count)

    @staticmethod
    def render(value: tuple[int, int]) -> str:
        return f"{value[0]}/{value[1]}"


def option_flag(p: argparse.ArgumentParser, cls: type, name: str, *flags: str, **kw) -> None:
    """Add the flag of dataclass field ``cls.name``; its help is the field's comment.

    Default, choices (a Literal type), type and action come from the field: a bool that is on
    by default gets ``--no-NAME``, a tuple a repeatable comma list. ``kw`` may set what is not
    text (``metavar``, ``type``, ``action``, ``choices``...); a second help text may not."""
    import dataclasses
    import types
    import typing

    if "help" in kw:
        raise TypeError(
            f"option_flag({cls.__name__}.{name}): the help of a field's flag is the field's "
            "comment; put the text there instead of passing help="
        )
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    text = field_comments(cls)[name].replace("%", "%%")  # argparse formats help with %
    args: dict = {"dest": name, "default": field.default, "help": text}
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        args["choices"] = typing.get_args(hint)
    if hint is bool:
        args["action"] = "store_false" if field.default else "store_true"
    elif hint in (int, float, str, Path):
        args["type"] = hint
    elif origin is tuple and typing.get_args(hint)[-1] is Ellipsis and "action" not in kw:
        args.update(action=CommaList, item=typing.get_args(hint)[0])
    args.update(kw)
    if not flags:
        dashed = name.replace("_", "-")
        flags = (f"--no-{dashed}",) if args.get("action") == "store_false" else (f"--{dashed}",)
    p.add_argument(*flags, **args)


def options_from(cls: type, args: argparse.Namespace, **given):
    """An instance of dataclass ``cls`` from the parsed flags of its fields."""
    import dataclasses

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in given}
    return cls(**values, **given)


# --------------------------------------------------------------------------- shared flags


def add_model_flag(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--model REF``: the model a command decodes with (``default``), or, without a
    default, the model training starts from."""
    kinds = "bundled:NAME, a model or run folder, or a hub id"
    text = (
        f"model to decode with: {kinds}"
        if default
        else f"model to start from: {kinds} (not given: bundled:base, or a continued run's own)"
    )
    p.add_argument("--model", default=default, metavar="REF", help=text)


def add_config_flags(p: argparse.ArgumentParser, dest: str = "overrides") -> None:
    """``--config YAML`` and ``--set KEY=VALUE``: options from a file, then single ones."""
    p.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="options file (see examples/*.yaml); not given: the defaults",
    )
    add_set_flag(p, dest)


def add_set_flag(p: argparse.ArgumentParser, dest: str = "overrides", **kw) -> None:
    """``--set KEY=VALUE ...``: repeatable, each use taking one or more pairs, all kept."""
    args = {
        "dest": dest,
        "action": AddMany,
        "nargs": "+",
        "default": (),
        "metavar": "KEY=VALUE",
        "help": "override one option, e.g. --set lr=1e-5 --set max_steps=200 (repeatable)",
    }
    p.add_argument("--set", **{**args, **kw})


class AddMany(argparse.Action):
    """A repeatable flag of one or more values, all added to the default tuple."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, (*getattr(namespace, self.dest), *values))


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bar (for logs and cron)."""
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="progress bar on stderr"
    )


# --------------------------------------------------------------------------- checks


def check_device(device: str, backend: str = "ct2") -> None:
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


def file_size(text: str) -> str:
    """argparse type of --max-file-size: a number with b, kb, mb or gb."""
    from whisper_sv.app.options import SIZE_PATTERN

    if not SIZE_PATTERN.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; give a number with b, kb, mb or gb, e.g. 200mb"
        )
    return text.strip()


def check_port(host: str, port: int) -> None:
    """A taken port, said before Gradio starts (it would end in a traceback)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(
                f"cannot serve on {host}:{port} ({err.strerror}); the port is taken or the "
                "address is not this machine's: choose another with --port N or --host"
            ) from err

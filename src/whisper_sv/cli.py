"""Command line: argument parsing only; every command calls a stage function.

Each command has an ``_add_<name>`` (its parser) and a ``_cmd_<name>`` (its action). User
errors (bad input, bad options) are printed as one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("whisper_sv")


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


# --------------------------------------------------------------------------- transcribe


def _add_transcribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe (or translate) audio files or links")
    p.set_defaults(func=_cmd_transcribe)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    raise UserError("transcribe is not available yet")


# --------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="WER/CER report of a model on a manifest")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    raise UserError("evaluate is not available yet")


# --------------------------------------------------------------------------- features


def _add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="feature pipeline: source -> feature store")
    p.set_defaults(func=_cmd_features)


def _cmd_features(args: argparse.Namespace) -> int:
    raise UserError("features is not available yet")


# --------------------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training pipeline: feature store -> run folder")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    raise UserError("train is not available yet")


# --------------------------------------------------------------------------- export


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run or model to CTranslate2")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    raise UserError("export is not available yet")


# --------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole job on synthetic Swedish speech")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    raise UserError("demo is not available yet")


# --------------------------------------------------------------------------- main

_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_transcribe,
    _add_evaluate,
    _add_features,
    _add_train,
    _add_export,
    _add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-sv", description="Fine-tune and serve Whisper for Swedish."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"whisper-sv {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

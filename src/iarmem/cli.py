"""The `iarmem` command: one sub-command per stage, each defined in its own module.

A module listed in COMMANDS provides ``add_arguments(parser)`` and ``run(args) -> int``. Every
user error ends as one line on stderr and exit code 2 (a traceback only with --debug). Only the
module of the command being run is imported: the stages pull in torch, scipy and matplotlib, which
take seconds, and `iarmem --help`, `--version` or a mistyped command should not wait for them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import traceback
import warnings
from collections.abc import Iterator

from iarmem import __version__
from iarmem.errors import UserError
from iarmem.runs import recording_command

# name -> (module, one-line help); order is the order of `iarmem --help`
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("iarmem.commands.models", "list the model presets (families, sizes, official files)"),
    "train": ("iarmem.commands.train", "train a small tokenizer + IAR on a dataset, with planted images"),
    "localize": ("iarmem.commands.localize", "UnitMem per unit, per block and per scale / token bin"),
    "extract": ("iarmem.commands.extract", "extraction attack: how many training images the model leaks"),
    "mitigate": ("iarmem.commands.mitigate", "scale down the most memorizing units; write the edited model"),
    "evaluate": ("iarmem.commands.evaluate", "image quality of a model: FID, KID, precision / recall"),
    "sweep": ("iarmem.commands.sweep", "grid over edits, controls and the logit-noise defense"),
    "repair": ("iarmem.commands.repair", "stop leaked images coming out, at least cost, checked by the strong attack"),
    "inject": ("iarmem.commands.inject", "make a model leak unseen images through known units (a positive control)"),
    "bench": ("iarmem.commands.bench", "ground truth for localizers: inject images into known units, score UnitMem"),
    "report": ("iarmem.commands.report", "one self-contained HTML report of run folders"),
    "demo": ("iarmem.commands.demo", "the whole audit on bundled MNIST, end to end, on a CPU"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):  # type: ignore[override]
        # `--opt=--` reaches here as ['--'], which argparse (3.11-3.12) turns into an empty list instead of an error
        if arg_strings == ["--"] and action.option_strings and action.nargs is None:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return super()._get_values(action, arg_strings)


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser with every command's options (``only=None``), or with only those of command ``only`` (any other
    string: none): the others are listed by name and help line, their modules not imported. ``subs`` holds the
    commands whose options were added."""
    parser = _Parser(prog="iarmem", description="Localize, measure and mitigate memorization in image "
                     "autoregressive models (VAR, RAR, LlamaGen).")
    parser.add_argument("--version", action="version", version=f"iarmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subs = {}
    for name, (module, help_) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
        subs[name] = p
    return parser, subs


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings shown while a command runs read ``warning: <message>``, one line, no source excerpt."""
    saved = warnings.formatwarning
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = saved


def _command_named(argv: list[str]) -> str | None:
    """The sub-command ``argv`` asks for: its first word that is not an option (the top level's options take no
    value), if it is one of COMMANDS."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    name = _command_named(argv)
    parser, _ = build_parser(only=name or "")
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from iarmem.models import hub  # torch: after parsing, so that a bad command line answers at once

    command = ["iarmem", *argv]
    try:
        with _one_line_warnings(), recording_command(command):
            if hasattr(args, "download"):  # commands that take a preset: hf:// paths and --download to local files
                args.tokenizer, args.weights = hub.resolve_model_files(args.model, args.tokenizer, args.weights,
                                                                       args.download, args.revision)
            return int(args._run(args) or 0)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

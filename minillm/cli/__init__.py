"""The ``minillm`` command (also ``python -m minillm``): all of its arguments and usage errors.

    minillm train --arch cd --objective flm [--data world|FILE] [--preset smoke|default|large]
                  [--out DIR] [--force | --resume] [--config FILE.json|.toml] [--lr ...]
    minillm generate CHECKPOINT --prompt "..." [--max-new-tokens N] [--temperature T] [--top-k K]
    minillm eval CHECKPOINT [--data world|FILE] [--batches N] [--json]
    minillm describe [--preset P] [--config FILE] [--d-model ...]   parameters and FLOPs, all archs
    minillm study [--preset smoke|default|large] [--seeds N] [--jobs N | --dask ADDRESS] [--out DIR]
                  [--list-units | --unit NAME | --report] [--force]
    minillm rank CHECKPOINT | --synthetic [--n N] [--d D] [--scales S ...] [--json]

Exit codes: 0 success; 2 bad arguments or input, or training stopped on a non-finite loss
(one line on stderr, no traceback; the last good checkpoint is kept); 130 interrupted by
Ctrl-C (after saving a checkpoint); 141 the reader of the output went away (``| head``).

The layers below report bad input as ``ValueError`` or ``OSError``; a command turns them into
``UsageError`` (``with usage_errors():``), which ``main`` prints on one line with exit code 2.
``train.py`` holds train, generate, eval and describe; ``study.py`` holds study and rank.
**Adding a subcommand**: write ``add_NAME_arguments(parser)`` and ``run_NAME(args) -> int``
there, then add one line to ``commands()`` below.
"""
import argparse
import os
import sys
from contextlib import contextmanager

from ..train.checkpoint import load_checkpoint

__all__ = ["main", "commands", "UsageError", "usage_errors", "open_checkpoint"]


class UsageError(Exception):
    """Bad arguments or input: ``main`` prints the message on one line and exits with 2."""


@contextmanager
def usage_errors():
    """Inside the block, a ValueError or OSError (bad input, a missing file) is a UsageError."""
    try:
        yield
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None


def open_checkpoint(path):
    """Load ``path`` (a checkpoint file or a run directory holding checkpoint.npz)."""
    with usage_errors():
        return load_checkpoint(os.path.join(path, "checkpoint.npz") if os.path.isdir(path) else path)


def commands():
    """Every subcommand, in the order ``--help`` lists them: ``(name, help, add_arguments(parser),
    run(args) -> exit code)``."""
    from . import study as s, train as t
    return [
        ("train", "train a model (new run, --resume or --force)", t.add_train_arguments, t.run_train),
        ("generate", "continue a prompt with a trained model", t.add_generate_arguments, t.run_generate),
        ("eval", "validation loss, perplexity and accuracy of a checkpoint", t.add_eval_arguments, t.run_eval),
        ("describe", "parameter counts and FLOPs of a config for cd, nd and ed",
         t.add_describe_arguments, t.run_describe),
        ("study", "rerun the architecture x objective study of Wang et al. 2022 at toy scale",
         s.add_study_arguments, s.run_study),
        ("rank", "why decoder-only? ranks of attention matrices (a checkpoint, or --synthetic)",
         s.add_rank_arguments, s.run_rank),
    ]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (exit code 2, as argparse does)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    from .. import __version__
    parser = _Parser(prog="minillm", description="minillm: train, sample and inspect small Transformers "
                     "(causal decoder, prefix decoder, encoder-decoder) on NumPy.")
    parser.add_argument("--version", action="version", version=f"minillm {__version__}")
    parser.set_defaults(_run=lambda args: parser.print_help() or 2)   # no command: the help, exit code 2
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, text, add_arguments, run in commands():
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad argument (code 2, message printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a reader that went away (`| head`) shows up here at the latest
        return code
    except BrokenPipeError:  # stop quietly, as a shell pipeline expects; nothing more is written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UsageError as e:
        print(f"minillm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training (which saves and stops cleanly on its own)
        print(f"minillm {args.command}: interrupted", file=sys.stderr)
        return 130

"""The `bigtransfer` command line: each sub-command lives in the module named for it."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .._util.errors import LoaderWorkerError
from .._util.package import package_version
from . import bench, demo, export, features, predict, run_files, serve, shard, training, zoo_commands
from ._options import CommandParser, resolve_positionals


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="bigtransfer",
        description="BiT (Big Transfer) models: pretrained checkpoints, prediction, conversion and transfer learning.",
        epilog="A MODEL is a zoo name (see `bigtransfer models`), an original BiT .npz file, a transformers "
        "directory or Hub id, or a timm checkpoint (file or timm/… Hub id).",
    )
    parser.add_argument("--version", action="version", version=f"bigtransfer {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (demo, zoo_commands, predict, training, features, export, bench, shard, serve):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command; expected failures (bad paths, bad values) print one line and return 2, Ctrl-C 130."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    run_files.apply_run_file(parser, argv)  # --config FILE: the file's options become the command's defaults
    args, unknown = parser.parse_known_args(argv)
    command_parser = parser.command_parser(args.command)
    if unknown:
        command_parser.reject_unknown(unknown)
    resolve_positionals(args, command_parser)
    if args.command is None:  # `bigtransfer` alone: the overview of commands
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except BrokenPipeError:  # the reader went away (`bigtransfer models | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        return 0
    except (OSError, ValueError, ImportError, LoaderWorkerError) as error:
        print(f"bigtransfer {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: the library has cleaned up (a run has checkpointed)
        print(f"\nbigtransfer {args.command}: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(interrupt, "signal", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())

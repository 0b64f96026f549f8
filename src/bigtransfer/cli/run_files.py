"""`--config FILE` of `finetune` and `pretrain`: a run file's options become the command's defaults, each checked
by its option's own type and choices as if it were given as a flag, so that flags beside it win."""

from __future__ import annotations

import argparse
from typing import Any

from ._options import CommandParser

COMMANDS = ("finetune", "pretrain")


def apply_run_file(parser: CommandParser, argv: list[str]) -> None:
    """When `argv` runs a training command with --config FILE, set the file's values as that command's defaults
    (an option the file gives is no longer required on the command line); a bad file is one line, exit 2."""
    if not argv or argv[0] not in COMMANDS:
        return
    path = _config_argument(argv[1:])
    if path is None:
        return
    command = parser.command_parser(argv[0])
    from ..train.run_file import read_run_file  # the one reader of run files, shared with Python's load_run_file

    try:
        _, values = read_run_file(path, argv[0])
    except OSError as error:
        command.error(f"--config {path}: {error.strerror or error}")
    except ValueError as error:
        command.error(f"--config {str(error).rstrip('.')}")
    actions = {action.dest: action for action in command._actions}
    defaults = {}
    for key, value in values.items():
        try:
            defaults[key] = _parsed(actions[key], value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
            command.error(f"--config {path}: {key}: {error}")  # the parser adds the nearest choice
        actions[key].required = False
    command.set_defaults(**defaults)


def _config_argument(arguments: list[str]) -> str | None:
    """The value of --config among a command's arguments (the last one given, as argparse takes it)."""
    found = None
    for index, argument in enumerate(arguments):
        if argument == "--":
            break
        if argument == "--config" and index + 1 < len(arguments):
            found = arguments[index + 1]
        elif argument.startswith("--config="):
            found = argument.split("=", 1)[1]
    return found


def _parsed(action: argparse.Action, value: Any) -> Any:
    """A run file's value for `action`, as the command line would have it: a switch takes true or false; any other
    option its text (a list as comma-separated text) through the option's type, then its choices; null is unset."""
    if value is None:
        return action.default
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if isinstance(value, (bool, dict)):
        raise ValueError(f"{value!r} is not a value of {action.option_strings[-1]}")
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    parsed = action.type(text) if action.type is not None else text
    if action.choices is not None and parsed not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        raise ValueError(f"invalid choice: {parsed!r} (choose from {choices})")
    return parsed

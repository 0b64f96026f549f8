"""The package's top level: its public names resolve on first use (PEP 562), so importing bigtransfer, and the
command line's --version and --help, load no torch."""

import ast
import inspect
from pathlib import Path

import pytest

import bigtransfer
from helpers import run_python

# runs `bigtransfer ARGS` as `python -m bigtransfer` does, then says whether torch was imported
RUN_COMMAND = """
import runpy, sys
sys.argv = ["bigtransfer", *{args!r}]
try:
    runpy.run_module("bigtransfer", run_name="__main__", alter_sys=True)
except SystemExit as done:
    assert done.code in (0, None), done.code
print("torch imported:", "torch" in sys.modules)
"""


def test_importing_bigtransfer_loads_no_torch():
    done = run_python("import bigtransfer, sys; print(bigtransfer.__version__); print('torch' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [bigtransfer.__version__, "False"]


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_version_and_help_load_no_torch(args):
    done = run_python(RUN_COMMAND.format(args=args))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch imported: False")


def test_help_lists_every_command_with_its_one_line_help():
    from bigtransfer.cli import build_parser

    done = run_python(RUN_COMMAND.format(args=["--help"]))
    commands = next(action for action in build_parser()._actions if action.dest == "command")
    listed = " ".join(done.stdout.split())
    missing = [c.dest for c in commands._choices_actions if f"{c.dest} {' '.join(c.help.split())}" not in listed]
    assert len(commands._choices_actions) >= 14 and missing == []


@pytest.mark.parametrize("name", bigtransfer.__all__)
def test_every_public_name_resolves_to_the_object_its_module_defines(name):
    import importlib

    defining = importlib.import_module(bigtransfer._PUBLIC[name], "bigtransfer")
    assert getattr(bigtransfer, name) is getattr(defining, name) and name in dir(bigtransfer)


def test_from_import_of_a_public_name_works():
    from bigtransfer import BitConfig, pipeline
    from bigtransfer.inference.pipelines import pipeline as defined
    from bigtransfer.models.config import BitConfig as config_class

    assert BitConfig is config_class and pipeline is defined


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'bigtransfer' has no attribute 'no_such_name'"):
        bigtransfer.no_such_name  # noqa: B018


def test_type_checkers_see_the_same_public_names():
    """The names a type checker reads (the TYPE_CHECKING imports), the names resolved at run time (_PUBLIC) and
    __all__ are one list."""
    tree = ast.parse(Path(bigtransfer.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {alias.name: "." + node.module for node in block.body for alias in node.names}
    assert imported == bigtransfer._PUBLIC and sorted(bigtransfer.__all__) == sorted(bigtransfer._PUBLIC)


def test_the_shard_commands_defaults_are_the_librarys():
    """cli/shard.py states its defaults rather than importing them, so that --help loads no torch: they must stay
    the library's."""
    from bigtransfer.cli import build_parser
    from bigtransfer.data.shard_writing import stream_shards

    shard = build_parser().command_parser("shard")
    defaults = {action.dest: action.default for action in shard._actions}
    library = inspect.signature(stream_shards).parameters
    assert [defaults["shuffle_buffer"], defaults["max_side"], defaults["shard_size"]] == [
        library[name].default for name in ("buffer_size", "max_side", "shard_size")
    ]

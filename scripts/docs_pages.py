"""mkdocs hooks: the site's reference pages written from the code at every build, so they cannot drift from it.

- reference/cli.md: every `bigtransfer` command and option, walked from the argparse parsers the CLI itself uses;
- reference/api.md: one mkdocstrings block per name in `bigtransfer.__all__` and `bigtransfer.train.__all__`;
- reference/zoo.md: the model catalogue (checkpoints/catalogue.py), one row per loadable name;
- benchmarks/results.md: benchmarks/RESULTS.md as it is on disk (other work appends to it there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout being documented, whatever is installed


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| Option | Default | Help |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
        default = "" if action.default in (None, argparse.SUPPRESS, False) else f"`{action.default}`"
        help_text = (action.help or "") % {**vars(action), "default": action.default} if action.help else ""
        rows.append(f"| {names} | {_cell(default)} | {_cell(help_text)} |")
    return rows


def _commands(parser: argparse.ArgumentParser, prefix: str):
    """(full command, parser) for each sub-command, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _commands(sub, f"{prefix} {name}")


def cli_page() -> str:
    from bigtransfer.cli import build_parser

    parser = build_parser()
    lines = [
        "# CLI reference",
        "",
        "Generated at build time from the argparse parsers of `bigtransfer` (`bigtransfer.cli.build_parser`);",
        "`bigtransfer COMMAND --help` prints the same.",
        "",
        f"{parser.description}",
        "",
        *_option_rows(parser),
        "",
    ]
    for command, sub in _commands(parser, "bigtransfer"):
        lines += [f"## `{command}`", "", _cell(sub.description or ""), "", "```text", sub.format_usage().strip()]
        lines += ["```", "", *_option_rows(sub), ""]
    return "\n".join(lines)


def api_page() -> str:
    import bigtransfer
    import bigtransfer.train

    lines = ["# Python API", "", "Every public name of `bigtransfer` (`bigtransfer.__all__`), from its docstrings.", ""]
    for name in bigtransfer.__all__:
        module = bigtransfer._PUBLIC[name].lstrip(".")
        lines += [f"## `{name}`", "", f"::: bigtransfer.{module}.{name}", "    options:", "      heading_level: 3", ""]
    lines += [
        "## Training: `bigtransfer.train`",
        "",
        "The recipes behind `finetune` and `pretrain` (the CLI's and Python's).",
        "",
    ]
    for name in bigtransfer.train.__all__:
        lines += [f"::: bigtransfer.train.{name}", "    options:", "      heading_level: 3", ""]
    lines += [
        "## Processor options",
        "",
        "The keyword arguments both processors accept (their `__init__` and `__call__`).",
        "",
        "::: bigtransfer.processing.base.BitImageProcessorKwargs",
        "    options:",
        "      heading_level: 3",
        "",
        "::: bigtransfer.processing.fast.BitImageProcessorFastKwargs",
        "    options:",
        "      heading_level: 3",
        "",
    ]
    return "\n".join(lines)


def zoo_page() -> str:
    from bigtransfer.checkpoints.catalogue import BUNDLED_MODELS, ZOO, bundled_model

    lines = [
        "# Model zoo",
        "",
        "Every name that loads without a path (`bigtransfer models` prints the same), generated from",
        "`bigtransfer.checkpoints.catalogue` at build time. Sizes are the published file sizes where known,",
        "else the parameter count.",
        "",
        "| Name | Architecture | Upstream | Resolution | Labels | Size | Top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, what in BUNDLED_MODELS.items():
        folder = bundled_model(name)
        config = json.loads((folder / "config.json").read_text())
        crop = json.loads((folder / "preprocessor_config.json").read_text()).get("crop_size", {}).get("height", "")
        size = f"{(folder / 'model.safetensors').stat().st_size / 1e6:.1f} MB"
        labels = f"{len(config['id2label'])} (bundled)"
        lines.append(f"| `{name}` | tiny ResNet-v2 | {_cell(what)} | {crop} | {labels} | {size} | |")
    for entry in ZOO.values():
        size = f"{entry.size_bytes / 1e6:.0f} MB" if entry.size_bytes else f"{entry.parameters / 1e6:.1f} M params"
        top1 = f"{entry.top1}" if entry.top1 is not None else ""
        labels = f"{entry.num_labels} ({entry.label_set})"
        row = [
            f"`{entry.name}`",
            entry.architecture,
            entry.upstream,
            entry.preprocessing.crop or entry.preprocessing.size,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in [*row, labels, size, top1]) + " |")
    return "\n".join(lines) + "\n"


def results_page() -> str:
    return (ROOT / "benchmarks" / "RESULTS.md").read_text()


PAGES = {
    "reference/cli.md": cli_page,
    "reference/api.md": api_page,
    "reference/zoo.md": zoo_page,
    "benchmarks/results.md": results_page,
}


def on_files(files: Files, config) -> Files:
    for uri, write in PAGES.items():
        files.append(File.generated(config, uri, content=write()))
    return files

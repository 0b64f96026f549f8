"""The site's examples run: every ```python and ```bash block under docs/ and in README.md, page by page in a fresh folder (a
page's blocks build on one another, as a reader follows them), offline, on the models bundled in the package.
A block that cannot run here (the Hub, a GPU, a long run, a server left running) says why on the line above it:
`<!-- skip: REASON -->`; it is reported as a skipped test with that reason."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK_TIMEOUT_S = 120
FENCE = re.compile(r"^```(?P<language>python|bash)[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
SKIP = re.compile(r"<!--\s*skip:\s*(?P<reason>.+?)\s*-->\s*\Z")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    code: str
    skip: str | None  # the reason it does not run here, or None

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def doc_blocks(page: Path, docs: Path = DOCS) -> list[Block]:
    """The page's python and bash blocks in order, with the skip reason written on the line above each."""
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, match.start()) + 1
        name = page.relative_to(docs).as_posix()
        blocks.append(Block(name, line, match["language"], match["code"], skip["reason"] if skip else None))
    return blocks


def example_env(bin_folder: Path) -> dict[str, str]:
    """Offline, this checkout's package first, and a `bigtransfer` command that runs it (not another install)."""
    bin_folder.mkdir(exist_ok=True)
    command = bin_folder / "bigtransfer"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bigtransfer "$@"\n')
    command.chmod(0o755)
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }


def run_block(block: Block, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", block.code] if block.language == "python" else ["bash", "-euo", "pipefail"]
    stdin = None if block.language == "python" else block.code
    return subprocess.run(
        command, cwd=folder, env=env, input=stdin, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )


def check_block(block: Block, folder: Path, env: dict[str, str]) -> None:
    done = run_block(block, folder, env)
    assert done.returncode == 0, (
        f"{block.name}: the {block.language} example exits {done.returncode}\n{block.code}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )


ALL_BLOCKS = doc_blocks(ROOT / "README.md", ROOT) + [
    block for page in sorted(DOCS.rglob("*.md")) for block in doc_blocks(page)
]


@pytest.fixture(scope="module")
def page_folders() -> dict[str, Path]:
    """One working folder per page, shared by its blocks in order (pytest keeps parametrize order)."""
    return {}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return example_env(tmp_path_factory.mktemp("bin"))


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.name for block in ALL_BLOCKS])
def test_docs_example_runs(block, page_folders, env, tmp_path_factory):
    if block.skip:
        pytest.skip(block.skip)
    folder = page_folders.setdefault(block.page, tmp_path_factory.mktemp(block.page.replace("/", "-")))
    check_block(block, folder, env)


def test_docs_have_examples_that_run():
    running = [block for block in ALL_BLOCKS if not block.skip]
    assert len(running) >= 8, "the site's examples should mostly run, not mostly be skipped"


def test_a_broken_example_fails(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text(
        "# A page\n\n```python\nprint('fine')\n```\n\n```bash\nbigtransfer predict missing.png --model bit-tiny-glyphs\n```\n"
        "\n<!-- skip: needs the Hub -->\n```python\nraise SystemExit(3)\n```\n"
    )
    fine, broken, skipped = doc_blocks(page, tmp_path)
    assert (fine.skip, broken.skip, skipped.skip) == (None, None, "needs the Hub")
    env = example_env(tmp_path / "bin")
    check_block(fine, tmp_path, env)
    with pytest.raises(AssertionError, match=r"broken.md:7: the bash example exits [1-9]"):
        check_block(broken, tmp_path, env)


def test_only_python_and_bash_blocks_are_examples(tmp_path):
    page = tmp_path / "other.md"
    page.write_text("```yaml\nsteps: 3\n```\n\n```text\nbigtransfer --help\n```\n")
    assert doc_blocks(page, tmp_path) == []

"""The documentation site builds with `mkdocs build --strict` (a broken link or reference fails it), its generated
pages cover the code (every command and option, every public name, every catalogue name), and it renders in
headless Chromium served from 127.0.0.1 — screenshots of the home page and a guide left for a person to look at."""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import bigtransfer
from bigtransfer.checkpoints.catalogue import known_names
from bigtransfer.cli import build_parser
from helpers import headless_chromium, screenshot_path

ROOT = Path(__file__).resolve().parents[1]
WIDE_WINDOW = (1400, 1000)  # material shows the navigation beside the page from 1220 px


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)]
    done = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def page_text(site: Path, page: str) -> str:
    """The page's visible text: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", (site / page / "index.html").read_text()))


def commands_and_options(parser: argparse.ArgumentParser, prefix: str = "bigtransfer"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", [option for a in sub._actions for option in a.option_strings]
                yield from commands_and_options(sub, f"{prefix} {name}")


def test_cli_page_lists_every_command_and_option(site):
    text = page_text(site, "reference/cli")
    found = list(commands_and_options(build_parser()))
    assert len(found) >= 10
    for command, options in found:
        assert f"{command}¶" in text or f"{command}\n" in text, f"{command} is missing from the CLI page"
        section = text.split(command, 1)[1]
        for option in options:
            assert option in section, f"{command} {option} is missing from the CLI page"


def test_api_page_documents_every_public_name(site):
    page = (site / "reference" / "api" / "index.html").read_text()
    for name in bigtransfer.__all__:
        module = bigtransfer._PUBLIC[name].lstrip(".")
        assert f'id="bigtransfer.{module}.{name}"' in page, f"{name} has no entry on the API page"


def test_zoo_page_lists_every_catalogue_name(site):
    text = page_text(site, "reference/zoo")
    for name in known_names():
        assert re.search(rf"(?m)^{re.escape(name)}$", text), f"{name} is missing from the zoo page"


def test_benchmarks_page_is_results_md(site):
    first_heading = next(line for line in (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines() if line)
    assert first_heading.lstrip("# ") in page_text(site, "benchmarks/results")


@pytest.fixture(scope="module")
def site_url(site):
    """The built site over HTTP on 127.0.0.1 (search needs HTTP, not file://)."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("page", "title", "shot"),
    [
        ("", "Where to go", "docs-home.png"),
        ("guides/fine-tune/", "Fine-tuning with the BiT-HyperRule", "docs-guide.png"),
    ],
)
def test_site_renders_in_chromium(site_url, page, title, shot):
    from selenium.webdriver.common.by import By

    with headless_chromium(WIDE_WINDOW) as browser:
        browser.get(site_url + page)
        body = browser.find_element(By.TAG_NAME, "body").text
        assert title in body
        for section in ("Get started", "Guides", "Reference", "Benchmarks"):
            assert section in body, f"the navigation lacks {section}"
        screenshot = screenshot_path(shot)
        assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 20_000, "the screenshot looks blank"

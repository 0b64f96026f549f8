"""Write scripts/constraints.txt: the exact versions of everything `scripts/setup.sh test` installs (the `test`
extra and what it pulls in, and the oracles in .oracles/), read from the current environment; `demo`
installs a subset of it, at the same versions.

Run it after the suite passed on the newest releases (`BIGTRANSFER_LATEST=1 bash scripts/setup.sh test &&
python -m pytest`): the file then records versions the suite passed with, and set-up installs exactly those, so
an upstream release cannot turn main red overnight. torch is left out: set-up pins the installed 2.13 build.

    python scripts/pin_versions.py            # rewrite the file
    python scripts/pin_versions.py --check    # exit 1 when the environment differs from the file
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, distribution, distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "scripts" / "constraints.txt"
ORACLES = ROOT / ".oracles"
EXTRA = "test"
NOT_PINNED = {"torch", "bigtransfer"}  # torch: the build on disk, pinned by set-up; bigtransfer: this checkout


def closure(roots: list[Requirement]) -> dict[str, str]:
    """{name: installed version} of `roots` and everything they require, markers evaluated for this Python."""
    found: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = list(roots)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        asked = (name, frozenset(requirement.extras))  # urllib3 and urllib3[socks] pull in different packages
        if asked in visited:
            continue
        visited.add(asked)
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            continue  # an optional dependency this environment does not have
        if name not in NOT_PINNED:  # torch is not pinned itself, but what it pulls in is (its jinja2 comes from PyPI)
            found[name] = dist.version
        for line in dist.requires or []:
            child = Requirement(line)
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(child)
    return found


def pinned_versions() -> dict[str, str]:
    ours = distribution("bigtransfer")
    roots = [Requirement(line) for line in ours.requires or []]
    roots = [r for r in roots if r.marker is None or r.marker.evaluate({"extra": EXTRA})]
    versions = closure(roots)
    for dist in distributions(path=[str(ORACLES)]):  # timm and torchvision, installed with --no-deps
        versions[canonicalize_name(dist.metadata["Name"])] = dist.version
    return dict(sorted(versions.items()))


def render(versions: dict[str, str]) -> str:
    header = (
        "# The versions the test suite last passed with; scripts/setup.sh (demo and test) installs exactly these.\n"
        "# Written by `python scripts/pin_versions.py`; BIGTRANSFER_LATEST=1 bash scripts/setup.sh test ignores them.\n"
    )
    return header + "".join(f"{name}=={version}\n" for name, version in versions.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args()
    text = render(pinned_versions())
    if args.check:
        same = CONSTRAINTS.is_file() and CONSTRAINTS.read_text() == text
        print("the environment matches the pins" if same else f"the environment differs from {CONSTRAINTS.name}")
        return 0 if same else 1
    CONSTRAINTS.write_text(text)
    print(f"wrote {CONSTRAINTS.relative_to(ROOT)} ({text.count('==')} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

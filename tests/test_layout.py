"""The package's layering, checked on its source: no import loops, and the config and processors
stay below the layers that download and convert checkpoints."""

import ast
from pathlib import Path

import pytest

import bigtransfer

PACKAGE = Path(bigtransfer.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(module: str) -> set[str]:
    """Modules of this package that `module` imports anywhere (function-level imports included)."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _reachable(module: str) -> set[str]:
    seen, stack = set(), [module]
    while stack:
        for target in GRAPH[stack.pop()] - seen:
            seen.add(target)
            stack.append(target)
    return seen


def test_no_module_imports_itself_through_others():
    assert [module for module in MODULES if module in _reachable(module)] == []


@pytest.mark.parametrize(
    "module",
    ["bigtransfer.config", "bigtransfer.processing_base", "bigtransfer.processing", "bigtransfer.processing_fast"],
)
def test_config_and_processors_stay_below_downloads_and_conversion(module):
    below = {"bigtransfer.hub", "bigtransfer.io", "bigtransfer.layers", "bigtransfer.image_inputs"}
    processors = {name for name in MODULES if name.startswith("bigtransfer.processing")}
    assert _reachable(module) - below - processors == set()

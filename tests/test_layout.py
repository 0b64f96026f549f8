"""The package's layering, checked on its source: every module (function-level imports included) imports only
its own layer and the layers below it, and nothing imports itself through others.

Bottom to top: checkpoints (files and names, no model class) → models → processing → data → deploy →
inference → train → cli; the package's own `__init__` (the public API) and `__main__` sit on top.
"""

import ast
from pathlib import Path

import pytest

import bigtransfer

PACKAGE = Path(bigtransfer.__file__).parent
LAYERS = ["checkpoints", "models", "processing", "data", "deploy", "inference", "train", "cli"]
TOP = {"bigtransfer", "bigtransfer.__main__", "bigtransfer._moved"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(module: str, source: str | None = None) -> set[str]:
    """Modules of this package that `module` imports anywhere (function-level imports included)."""
    path = MODULES.get(module, Path("module.py"))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int:
    if module in TOP:
        return len(LAYERS)
    return LAYERS.index(module.split(".")[1])


def _reachable(module: str) -> set[str]:
    seen, stack = set(), [module]
    while stack:
        for target in GRAPH[stack.pop()] - seen:
            seen.add(target)
            stack.append(target)
    return seen


def test_every_module_belongs_to_a_layer():
    assert [module for module in MODULES if module not in TOP and module.split(".")[1] not in LAYERS] == []


def test_no_module_imports_itself_through_others():
    assert [module for module in MODULES if module in _reachable(module)] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_its_layer_and_below(module):
    upward = sorted(target for target in GRAPH[module] if _layer(target) > _layer(module))
    assert upward == [], f"{module} ({LAYERS[_layer(module)] if module not in TOP else 'top'}) imports upward"


def test_a_lazy_upward_import_is_caught():
    """The checker itself: an import inside a function of the model layer, of the CLI, counts."""
    found = _imports("bigtransfer.models.modeling", "def f():\n    from ..cli import main\n")
    assert found == {"bigtransfer.cli"} and _layer("bigtransfer.cli") > _layer("bigtransfer.models.modeling")


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("bigtransfer.config", "bigtransfer.models.config", "BitConfig"),
        ("bigtransfer.train.data", "bigtransfer.data.datasets", "load_dataset"),
        ("bigtransfer.sources", "bigtransfer.checkpoints.sources", "load_checkpoint"),
        ("bigtransfer.convert", "bigtransfer.checkpoints.timm", "timm_to_bit_state_dict"),
        ("bigtransfer.pipeline", "bigtransfer.inference.pipelines", "pipeline"),
    ],
)
def test_release_0_1_module_paths_still_import_with_a_deprecation_warning(old, new, name):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    assert importlib.import_module(new).__spec__.name == new  # the alias did not take over the module's identity

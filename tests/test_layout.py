"""The package's layering, checked on its source: every module (function-level imports included) imports only
its own layer and the layers below it, and nothing imports itself through others.

Bottom to top: checkpoints (files and names, no model class) → models → processing → data → runtime → deploy →
inference → train → serve → cli; the package's own `__init__` (the public API) and `__main__` sit on top.
"""

import ast
from pathlib import Path

import pytest

import bigtransfer

PACKAGE = Path(bigtransfer.__file__).parent
LAYERS = ["checkpoints", "models", "processing", "data", "runtime", "deploy", "inference", "train", "serve", "cli"]
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
        ("bigtransfer.train.data", "bigtransfer.data.sources", "load_dataset"),
        ("bigtransfer.sources", "bigtransfer.checkpoints.catalogue", "bundled_model"),
        ("bigtransfer.convert", "bigtransfer.checkpoints.timm", "timm_to_bit_state_dict"),
        ("bigtransfer.convert.npz", "bigtransfer.checkpoints.npz", "read_npz"),
        ("bigtransfer.loading", "bigtransfer.data.device", "resolve_device"),
        ("bigtransfer.train.evaluate", "bigtransfer.inference.plots", "plot_curves"),
        ("bigtransfer.train.few_shot", "bigtransfer.train.pre_training", "FewShotCheck"),
        ("bigtransfer.pipeline", "bigtransfer.inference.pipelines", "pipeline"),
    ],
)
def test_release_0_1_module_paths_still_import_with_a_deprecation_warning(old, new, name):
    """Every name a 0.1 module held that still exists resolves to the same object, also where the module's
    contents were split over several new ones."""
    import importlib

    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to .*{new}"):
        found = getattr(module, name)
    assert found is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"), pytest.warns(DeprecationWarning):
        module.no_such_name  # noqa: B018


def test_an_old_module_path_does_not_replace_the_function_of_that_name():
    """0.1 had a module bigtransfer.pipeline beside the function bigtransfer.pipeline: importing the old module
    path must leave the function where it is."""
    import importlib

    import bigtransfer

    importlib.import_module("bigtransfer.pipeline")
    with pytest.warns(DeprecationWarning):
        from bigtransfer.pipeline import pipeline as old_path  # noqa: F401  (the 0.1 spelling)

    assert callable(bigtransfer.pipeline) and bigtransfer.pipeline.__name__ == "pipeline"


def test_the_weights_functions_are_where_0_1_had_them():
    from bigtransfer.checkpoints import match_state_dict, read_state_dict
    from bigtransfer.checkpoints.weights import match_state_dict as moved

    assert match_state_dict is moved and callable(read_state_dict)


def test_the_scripts_import_names_that_exist():
    """The main job's inline Python is not run by the suite: its imports are checked here, so a moved name fails CI."""
    import importlib
    import re

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    found = [
        (module, name.strip())
        for script in sorted(scripts.glob("*.sh"))
        for module, names in re.findall(r"^\s*from (bigtransfer[\w.]*) import ([\w, ]+)$", script.read_text(), re.M)
        for name in names.split(",")
    ]
    assert found, "no imports found: the pattern no longer matches the scripts"
    missing = [f"{module}.{name}" for module, name in found if not hasattr(importlib.import_module(module), name)]
    assert missing == []

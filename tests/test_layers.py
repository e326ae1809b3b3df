"""The package's layers: a module imports only from its own layer or the ones below it (read
from the source, function-level imports included), so that the kernels know nothing of the
library and nothing below the model reaches up into it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: kernels -> reference / functional -> modules -> model -> trainer / training -> serve -> cli.
LAYERS = [
    ("kernels", ["ept_fast.kernels", "ept_fast._version", "ept_fast._validation", "ept_fast.layout"]),
    ("ops", ["ept_fast.reference", "ept_fast.functional"]),
    ("modules", ["ept_fast.config", "ept_fast.prompt_encoder", "ept_fast.heads", "ept_fast.budget",
                 "ept_fast.serialization", "ept_fast.hub", "ept_fast.interop", "ept_fast.offline", "ept_fast.tasks"]),
    ("model", ["ept_fast.adapters", "ept_fast.generation", "ept_fast.model"]),
    ("training", ["ept_fast.optimizer", "ept_fast.trainer", "ept_fast.training"]),
    ("serve", ["ept_fast.server"]),
    ("cli", ["ept_fast.cli", "ept_fast.train"]),
]


def _layer(module: str) -> int:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module}: in no layer of tests/test_layers.py; add it to one")
    return max(matches)[1]


def _modules():
    """(module name, source path) of every module of the package (the kernels folder installs
    as ept_fast.kernels); the package's own __init__, which re-exports the API, is left out."""
    for path in sorted((ROOT / "ept_fast").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts != ("ept_fast", "__init__"):
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path
    for path in sorted((ROOT / "kernels").glob("*.py")):
        yield "ept_fast.kernels" + ("" if path.stem == "__init__" else f".{path.stem}"), path


def _imports(module: str, path: Path):
    """The ept_fast modules ``module`` imports, anywhere in its source."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.split(".")[0] == "ept_fast")
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            if target.split(".")[0] != "ept_fast":
                continue
            for alias in node.names:  # `from . import functional` names a module
                candidate = f"{target}.{alias.name}"
                yield candidate if any(m == candidate for m, _ in _modules()) else target


@pytest.mark.parametrize("module,path", list(_modules()), ids=[m for m, _ in _modules()])
def test_a_module_imports_only_its_layer_and_below(module, path):
    own = _layer(module)
    upward = sorted({target for target in _imports(module, path) if _layer(target) > own})
    assert not upward, (f"{module} ({LAYERS[own][0]}) imports {upward} from a layer above it "
                        f"({', '.join(LAYERS[_layer(t)][0] for t in upward)})")


def test_the_kernels_know_nothing_of_the_library():
    for module, path in _modules():
        if module.startswith("ept_fast.kernels"):
            assert all(t.startswith("ept_fast.kernels") for t in _imports(module, path)), module


def test_the_check_itself_finds_an_upward_import(tmp_path):
    source = tmp_path / "prompt_encoder.py"
    source.write_text("def f():\n    from .model import EPTModel\n    from . import functional\n")
    found = set(_imports("ept_fast.prompt_encoder", source))
    assert found == {"ept_fast.model", "ept_fast.functional"}
    assert _layer("ept_fast.model") > _layer("ept_fast.prompt_encoder") > _layer("ept_fast.functional")

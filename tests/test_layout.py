"""The package layout's rules, checked: what installs, what imports what, how big.

The architecture page (docs/architecture.md) describes the layout; these tests
keep the code and that description from drifting apart.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENGINES = ("jax", "jaxlib", "tensorflow", "torch", "optax")
MAX_LINES = 400


def _toml() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_dirs() -> dict[str, pathlib.Path]:
    """Import name -> folder, for every folder with an __init__.py under loops/ and backends/."""
    out = {}
    for top, name in (("loops", "loops"), ("backends", "loops.backends")):
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / top)
            out[".".join([name, *rel.parts])] = init.parent
    return out


def _sources() -> list[pathlib.Path]:
    return sorted([*(ROOT / "loops").rglob("*.py"), *(ROOT / "backends").rglob("*.py")])


def test_pyproject_installs_every_package_and_maps_backends_under_loops():
    config = _toml()["tool"]["setuptools"]
    assert sorted(config["packages"]) == sorted(_package_dirs()), \
        "pyproject's [tool.setuptools] packages must list every package folder"
    assert config["package-dir"] == {"loops.backends": "backends"}


def test_no_top_level_backends_module_is_importable_from_the_install():
    import loops.backends

    assert pathlib.Path(loops.backends.__file__).resolve() == ROOT / "backends" / "__init__.py"
    assert loops.backends.get().__name__.startswith("loops.backends.")
    # Nothing named `backends` at top level: from outside the repository root
    # (where the folder itself is on sys.path), `import backends` must fail.
    import subprocess

    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('backends') is not None)"
    assert subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True).returncode == 0


@pytest.mark.parametrize("name", sorted(_package_dirs()))
def test_every_package_opens_with_a_docstring_saying_what_it_owns(name):
    init = _package_dirs()[name] / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and len(doc) > 80, f"{init} needs a docstring: what the package owns, what it may import"
    if name != "loops":
        assert "import" in doc.lower(), f"{init}'s docstring should say what the package may import"


def test_no_source_file_is_over_the_line_limit():
    too_long = {str(p.relative_to(ROOT)): n for p in _sources()
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines (split them by concern): {too_long}"


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def test_loops_imports_no_engine_only_loops_backends_does():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in (ROOT / "loops").rglob("*.py")
           for mod, line in _imports(p) if mod.split(".")[0] in ENGINES]
    assert not bad, bad


def test_private_keras_is_imported_in_one_module_only():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in _sources()
           for mod, line in _imports(p)
           if mod.startswith("keras.src") and p != ROOT / "loops" / "_keras_private.py"]
    assert not bad, bad


def test_backends_import_only_their_own_package_and_keras_private():
    bad = []
    for p in (ROOT / "backends").rglob("*.py"):
        for mod, line in _imports(p):
            if mod.startswith("loops") and mod != "loops._keras_private":
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {mod}")
            if mod == "backends" or mod.startswith("backends."):
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {mod} (use a relative import)")
    assert not bad, bad


def test_each_engine_package_imports_no_other_engine():
    for engine in ("jax", "tensorflow", "torch"):
        others = {e for e in ("jax", "tensorflow", "torch", "optax") if e != engine} - (
            {"optax"} if engine == "jax" else set())
        for p in (ROOT / "backends" / engine).rglob("*.py"):
            bad = [m for m, _ in _imports(p) if m.split(".")[0] in others]
            assert not bad, f"{p.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("name", ["loops.data", "loops.checkpoint", "loops.debug", "loops.parity",
                                  "loops.distributed", "loops.trainer", "loops.backends"])
def test_packages_import_on_their_own(name):
    assert importlib.import_module(name).__doc__

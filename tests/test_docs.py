"""The documentation is tested like code.

- Every fenced ```python block in README.md and docs/**/*.md runs, on the
  backend of this process, as a script of its own: a fresh namespace
  (``__name__ == "__main__"``), the working directory a fresh ``tmp_path``
  (files a block writes land there), Keras's session cleared and seeds reset
  first. Tracebacks point at the Markdown file and line. A block that cannot
  run in a test is marked on the line just before its fence with
  ``<!-- not-run: reason -->`` and is skipped with that reason. Shell
  snippets are ```bash and never run.
- ``mkdocs build --strict`` passes (skipped where mkdocs is not installed).
- README.md stays at most 8 KB, and its relative links point at files that exist.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

import loops

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_LIMIT = 8192

_OPEN = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>.+?)\s*-->\s*$")


@dataclasses.dataclass
class Block:
    page: str        # path relative to the repository root
    index: int       # 1-based, among the page's python blocks
    line: int        # 1-based line of the opening fence
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.page}-block{self.index}"


def python_blocks(path: Path) -> list[Block]:
    """The page's ```python blocks, in order (fences may be indented, e.g. in lists)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(ROOT).as_posix()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang, start = opening["indent"], opening["lang"], i
        close = re.compile(rf"^{re.escape(indent)}```\s*$")
        i += 1
        body: list[str] = []
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{page}:{start + 1}: the ``` fence opened here is never closed")
        i += 1
        if lang != "python":
            continue
        marker = _NOT_RUN.match(lines[start - 1]) if start > 0 else None
        # Leading newlines keep the Markdown's line numbers in tracebacks.
        code = "\n" * (start + 1) + textwrap.dedent("\n".join(body)) + "\n"
        found.append(Block(page, len(found) + 1, start + 1, code, marker["reason"] if marker else None))
    return found


BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def test_the_docs_have_code_to_run():
    assert BLOCKS, "no ```python blocks found in README.md or docs/"
    assert any(b.page == "README.md" for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.not_run is not None:
        pytest.skip(f"{block.page}:{block.line} is marked not-run: {block.not_run}")
    monkeypatch.chdir(tmp_path)
    environ = dict(os.environ)
    keras.backend.clear_session()            # fresh layer names, as in a new process
    loops.set_seed(1234)                     # seeds; deterministic-ops mode off
    code = compile(block.code, str(ROOT / block.page), "exec")
    try:
        exec(code, {"__name__": "__main__"})
    finally:
        # Process-wide settings a block may change (KERAS_BACKEND is read at
        # import only, so setting it in a block changes nothing here).
        os.environ.clear()
        os.environ.update(environ)
        keras.config.set_dtype_policy("float32")


def test_readme_is_at_most_8kb():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, (
        f"README.md is {size} bytes; the limit is {README_LIMIT}. Move the detail into docs/ and link it.")


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    missing = [t for t in targets
               if not re.match(r"^[a-z]+://|^#|^mailto:", t) and not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    needed = {"mkdocs": "mkdocs", "material": "mkdocs-material",
              "mkdocstrings_handlers.python": "mkdocstrings[python]"}
    absent = [pip_name for module, pip_name in needed.items() if _find_spec(module) is None]
    if absent:
        pytest.skip(f"the docs build needs {', '.join(absent)} (pip install mkdocs mkdocs-material "
                    "'mkdocstrings[python]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2.0
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert "WARNING" not in output, f"mkdocs build reported warnings:\n{output}"


def _find_spec(module: str):
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a parent package is missing
        return None

"""Every ```python block of README.md, docs/getting_started.md and the tutorials
(docs/tutorials/*.md) runs; the API reference lists every public name; nothing refers to a
file outside the repository.

The blocks of one file run in order in one namespace, as a reader pasting them into one
session would, in a fresh working directory (files they write land there) holding a
copy of the checkout's ``examples/data/``, as at the root of a checkout. Shell blocks
(```bash, ```console, plain ```) are not Python and are not run.

A block opts out only with the line ``<!-- docs-test: skip REASON -->`` directly above its
fence, for code that cannot run here (a Dask scheduler or a SLURM cluster); the reason is
required. Warnings are errors, as in the rest of the suite.

The README shows realistic sizes. Where one would dominate the suite's time, ``SHRINK``
below replaces an exact piece of its text by a smaller size for the test only (each
piece must occur exactly once in that file's runnable blocks, so an edit of the README
that drops it fails here rather than silently running the large size). The tutorials are
written to be short as they stand and are run verbatim.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted(p for p in (ROOT / "docs" / "tutorials").glob("*.md")
                   if p.name != "index.md")
FILES = [ROOT / "README.md", ROOT / "docs" / "getting_started.md", *TUTORIALS]

# file -> (text in a block, what the test runs instead): sizes only, never the calls.
SHRINK: dict[str, tuple[tuple[str, str], ...]] = {
    "README.md": (
        # the opening example: 4096 trajectories of width 1024 at rtol 1e-10 (5-15 s)
        ("trajectories=4096, seed=0", "trajectories=512, seed=0"),
        # the sample-complexity phase diagram: 6 cells x 50 relu students x 5000 SGD steps
        # (about a minute on two cores); 4 students per cell run the same code
        ("trajectories=50, act=\"relu\"", "trajectories=4, act=\"relu\""),
        # the sweep of 4 widths x 1000 trajectories at rtol 1e-10 (~10 s): 100 each
        ("rtol=1e-10), trajectories=1000", "rtol=1e-10), trajectories=100"),
    ),
}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\b(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line number of the first code line
    lang: str
    code: str
    skip: str | None  # the reason, if the block opts out


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their language and opt-out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        lang = info.split()[0].strip("{}") if info else ""
        prev = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        sm = _SKIP.match(prev)
        skip = sm["reason"].strip() if sm else None
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        out.append(Block(path, i + 2, lang, "\n".join(lines[i + 1:j]) + "\n", skip))
        i = j + 1
    return out


def python_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang in ("python", "py", "python3")]


def test_every_file_has_python_blocks() -> None:
    assert TUTORIALS, "no tutorials found under docs/tutorials"
    for path in FILES:
        assert python_blocks(path), f"{path.relative_to(ROOT)} has no ```python block"


def test_skips_give_a_reason() -> None:
    for path in FILES:
        for b in blocks(path):
            if b.skip is not None:
                assert b.skip, f"{path.relative_to(ROOT)}:{b.line}: a skip needs a reason"
                assert b.lang.startswith("py"), f"{path.relative_to(ROOT)}:{b.line}: " \
                    "only Python blocks are run, a skip marker elsewhere is noise"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_code_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    shutil.copytree(ROOT / "examples" / "data", tmp_path / "examples" / "data")  # no symlink:
    # the suite also runs on Windows (cibuildwheel), where symlinks need privileges
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    rel = path.relative_to(ROOT)
    runnable = [b for b in python_blocks(path) if b.skip is None]
    codes = [b.code for b in runnable]
    for old, new in SHRINK.get(str(rel), ()):
        where = [k for k, c in enumerate(codes) if old in c]
        assert len(where) == 1 and codes[where[0]].count(old) == 1, \
            f"{rel}: SHRINK text {old!r} must occur exactly once in its runnable blocks"
        codes[where[0]] = codes[where[0]].replace(old, new)
    for b, source in zip(runnable, codes, strict=True):
        # Padding keeps the file's line numbers in tracebacks.
        code = compile("\n" * (b.line - 1) + source, str(rel), "exec")
        try:
            exec(code, namespace)
        except Exception as err:  # name the block; the traceback has the line
            raise AssertionError(f"{rel}: the block at line {b.line} failed: {err!r}") from err


def test_api_reference_lists_every_public_name() -> None:
    """docs/api.md documents every name of ``ntkflow.__all__`` (modules by automodule)."""
    import ntkflow

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in ntkflow.__all__
               if not re.search(rf"^\.\. auto\w+:: ntkflow\.{re.escape(name)}\s*$", text,
                                re.MULTILINE)]
    assert not missing, f"docs/api.md lacks {missing}"


_SKIP_DIRS = {".git", "build", "dist", "wheelhouse", "__pycache__", ".hypothesis",
              ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv", "venv", "results"}
_TEXT = {".py", ".pyi", ".md", ".toml", ".txt", ".cpp", ".hpp", ".h", ".sh", ".cfg", ".yml",
         ".yaml", ".json", ".in", ""}


def _text_files() -> list[Path]:
    out = []
    stack = [ROOT]
    while stack:
        folder = stack.pop()
        for p in folder.iterdir():
            if p.is_dir():
                if p.name not in _SKIP_DIRS and not p.name.endswith(".egg-info"):
                    stack.append(p)
            elif p.suffix in _TEXT and p.stat().st_size < 2_000_000:
                out.append(p)
    return out


def test_nothing_refers_to_a_file_outside_the_repository() -> None:
    """The theory is docs/theory.md: no citation of a THEORY file of another checkout
    (issue 18), and every relative Markdown link resolves inside the repository."""
    # Spelled in pieces so that this file does not match itself.
    banned = ("../" + "shared", "THEORY" + ".md", "THEORY" + " §")
    hits = []
    for p in _text_files():
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [f"{p.relative_to(ROOT)}: {b}" for b in banned if b in text]
    assert not hits, hits

    link = re.compile(r"\]\(([^)\s]+)\)")
    for md in [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("bench/*.md")]:
        for target in link.findall(md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            path = (md.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), \
                f"{md.relative_to(ROOT)} links {target}, which is not a file of the repository"

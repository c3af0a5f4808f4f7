"""The docs stay true: every fenced block opened with ```` ```bash runnable ```` in docs/*.md runs.

Each block runs with ``bash -euo pipefail`` (so any failing command fails it, not only the last
one) in a fresh temporary folder, with the folder of ``sys.executable`` first on PATH (``lmzoo``
and ``python`` are this environment's) and ``LMZOO_CACHE`` set to one temporary folder shared by
the whole session, so ``lmzoo explain``'s default tokenizers are trained once. Blocks are written
with tiny budgets (tiny presets, ``--max-steps`` of at most 30, short ``--seq-len``): they check
that the commands work as written, not that the models learn (the pages' measured results come
from the longer commands shown next to them).

Only blocks marked ``runnable`` run; plain ```` ```bash ```` blocks (long runs, outputs) do not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
# the pages of issue 13; each has at least one runnable block
PAGES = ("index.md", "mlm.md", "nsp.md", "clm.md", "seq2seq.md", "denoising.md", "plm.md", "roberta.md")
FENCE = re.compile(r"^```bash runnable[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MAX_STEPS = 30  # the largest --max-steps a runnable block may use
BLOCK_TIMEOUT = 600  # seconds; a block that hangs fails instead of stalling the suite (compare.md-0 takes ~270 alone)


def runnable_blocks(folder: Path = DOCS) -> list[tuple[str, int, str]]:
    """(page name, block index within the page, script) of every runnable block, pages in name order."""
    blocks = []
    for page in sorted(folder.glob("*.md")):
        for n, match in enumerate(FENCE.finditer(page.read_text(encoding="utf-8"))):
            blocks.append((page.name, n, match.group(1)))
    return blocks


def run_block(script: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    """``script`` under ``bash -euo pipefail`` in ``cwd``: this environment's bin first on PATH, the
    shared ``LMZOO_CACHE``, one thread per process (the test machines' few cores are shared)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(LMZOO_CACHE=str(cache), OMP_NUM_THREADS="1", NO_COLOR="1")
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT)


BLOCKS = runnable_blocks()


@pytest.fixture(scope="session")
def lmzoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lmzoo-cache")


@pytest.mark.slow
@pytest.mark.parametrize("page, index, script", BLOCKS, ids=[f"{p}-{i}" for p, i, _ in BLOCKS])
def test_runnable_block(page: str, index: int, script: str, tmp_path: Path, lmzoo_cache: Path) -> None:
    result = run_block(script, tmp_path, lmzoo_cache)
    assert result.returncode == 0, (
        f"docs/{page} runnable block {index} exited {result.returncode}\n--- script\n{script}"
        f"--- stdout (end)\n{result.stdout[-3000:]}\n--- stderr (end)\n{result.stderr[-3000:]}")


def test_every_page_has_runnable_blocks() -> None:
    counts = {page: sum(p == page for p, _, _ in BLOCKS) for page in PAGES}
    assert all(counts.values()), f"pages without a runnable block: {[p for p, n in counts.items() if not n]}"


def test_runnable_blocks_keep_tiny_budgets() -> None:
    """Every pretrain / finetune in a runnable block names its --max-steps, at most MAX_STEPS, and a
    tiny preset; otherwise the suite would silently train for minutes (the CLI default is 1000 steps)."""
    for page, index, script in BLOCKS:
        for line in _commands(script):
            if re.search(r"\blmzoo (pretrain|finetune)\b", line):
                steps = re.search(r"--max-steps[ =](\d+)", line)
                assert steps and int(steps.group(1)) <= MAX_STEPS, f"docs/{page} block {index}: {line}"
            if "lmzoo pretrain" in line:
                assert re.search(r"--preset [a-z0-9]+-tiny\b", line), f"docs/{page} block {index}: {line}"


def _commands(script: str) -> list[str]:
    """The script's commands, with backslash-continued lines joined."""
    return [line for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def test_a_broken_block_fails(tmp_path: Path) -> None:
    """The runner really fails: a bad command in the middle of a block is not hidden by a good last one,
    and the CLI's refusals (exit 2) count as failures."""
    cache = tmp_path / "cache"
    assert run_block("false\ntrue\n", tmp_path, cache).returncode != 0
    assert run_block("lmzoo pretrain --preset no-such-preset --out x\n", tmp_path, cache).returncode == 2
    assert run_block("lmzoo --help > /dev/null\n", tmp_path, cache).returncode == 0


def test_fence_extraction(tmp_path: Path) -> None:
    """Only ```bash runnable blocks are extracted, each whole, numbered per page."""
    (tmp_path / "a.md").write_text("```bash\nno\n```\n```bash runnable\nx=1\necho $x\n```\ntext\n"
                                   "```text\nno\n```\n```bash runnable\necho two\n```\n", encoding="utf-8")
    assert runnable_blocks(tmp_path) == [("a.md", 0, "x=1\necho $x\n"), ("a.md", 1, "echo two\n")]

"""The commands in README.md and docs/ run as written: every `editscope` command parses, the quick
ones run, and every benchmark script they name exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from editscope.cli import main
from editscope.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
QUICK = {("env",), ("models",), ("editors",), ("data", "inspect")}  # seconds, no model load or a cached one


def documented(prefix: str) -> list[tuple[str, list[str]]]:
    """``(page, argv)`` of every command in the pages' bash blocks that starts with ``prefix``
    (continuation lines joined, comments dropped)."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words[: len(prefix.split())] == prefix.split():
                    found.append((page.name, words[len(prefix.split()) :]))
    return found


def test_the_pages_link_each_other():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link {page.name}"
    assert len(readme.splitlines()) < 120  # a few screens; the reference lives in docs/


@pytest.mark.parametrize("page,argv", documented(".venv/bin/editscope"), ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_every_documented_command_parses(page, argv):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `editscope {' '.join(argv)}` does not parse (exit {exc.code})")


def test_the_quick_documented_commands_run(capsys):
    quick = [(page, argv) for page, argv in documented(".venv/bin/editscope") if tuple(argv[:1]) in QUICK or tuple(argv[:2]) in QUICK]
    assert len(quick) >= 4
    for page, argv in quick:
        assert main(argv) == 0, f"{page}: editscope {' '.join(argv)}"
    assert capsys.readouterr().out


def test_documented_benchmarks_exist():
    scripts = {argv[0] for _, argv in documented("python")}
    assert scripts, "no benchmark command documented"
    for script in scripts:
        assert (ROOT / script).is_file(), script

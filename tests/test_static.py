"""Static checks as tests: ruff (lint + format) and mypy (strict for the core packages)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_lint_and_format() -> None:
    lint = _run(str(BIN / "ruff"), "check", "desktop_agent", "tests", "bench")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run(str(BIN / "ruff"), "format", "--check", "desktop_agent", "tests", "bench")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict_core() -> None:
    # strictness per package is configured in pyproject.toml
    result = _run(str(BIN / "mypy"), "desktop_agent")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_ships_with_its_resources() -> None:
    """pyproject.toml lists the packages (resources/ is mapped into the
    package): a new package left out of the list would be missing from the wheel."""
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(doc["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "desktop_agent").rglob("__init__.py")
    }
    assert found | {"desktop_agent.resources"} == listed
    assert doc["tool"]["setuptools"]["package-dir"] == {"desktop_agent.resources": "resources"}
    shipped = doc["tool"]["setuptools"]["package-data"]["desktop_agent.resources"]
    on_disk = {p.relative_to(ROOT / "resources") for p in (ROOT / "resources").rglob("*")}
    for path in on_disk:
        if path.suffix in (".svg", ".desktop"):
            assert any(path.match(pattern) for pattern in shipped), path

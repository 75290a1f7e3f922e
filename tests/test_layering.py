"""The dependency rule of docs/architecture.md, run: the import contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} not found; install the test extra: pip install -e '.[test]'")
    env = dict(os.environ)
    if extra_path is not None:
        # Ahead of the editable install (setuptools appends its finder to sys.meta_path).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_contracts_are_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _copy_project(destination: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    shutil.copytree(
        ROOT / "desktop_agent",
        destination / "desktop_agent",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return destination / "desktop_agent"


@pytest.mark.parametrize(
    ("module", "bad_import", "broken"),
    [
        ("protocol/__init__.py", "import PySide6", "desktop_agent.protocol is not allowed"),
        ("engine/__init__.py", "import websockets", "desktop_agent.engine is not allowed"),
        ("jobs/__init__.py", "import qasync", "desktop_agent.jobs is not allowed"),
        ("server/__init__.py", "import desktop_agent.ui", "desktop_agent.server is not allowed"),
        ("config/errors.py", "import desktop_agent.engine", "desktop_agent.config is not allowed"),
        ("system/session.py", "import PySide6", "desktop_agent.system is not allowed"),
        ("system/errors.py", "import desktop_agent.jobs", "desktop_agent.system is not allowed"),
    ],
)
def test_a_forbidden_import_breaks_the_contracts(
    tmp_path: Path, module: str, bad_import: str, broken: str
) -> None:
    """The contracts are not vacuous: a wrong import in a copy of the package is caught."""
    package = _copy_project(tmp_path)
    target = package / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")

    result = _lint_imports(tmp_path, extra_path=tmp_path)

    assert result.returncode != 0, result.stdout
    assert broken in result.stdout, result.stdout

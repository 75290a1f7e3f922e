"""Entry point of the packaged (PyInstaller) desktop-agent.

The same program as the ``desktop-agent`` console script: ``cli.main`` also
dispatches the internal modes a frozen build starts itself in
(``--engine-helper FD`` for the engine's helper processes, ``--selftest-qt``).
"""

from __future__ import annotations

import os
import sys


def _give_windowed_build_streams() -> None:
    """A windowed Windows build (desktop-agent-tray.exe) starts with
    ``sys.stdout`` and ``sys.stderr`` set to None: any ``sys.stderr.write``
    (argparse, a library's warning) would raise AttributeError. Point them
    at the null device instead; the log file keeps what matters."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            # open for the life of the process, like the streams it stands in for
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115


def _helper_fast_path(argv: list[str]) -> None:
    """``--engine-helper FD`` without importing the CLI.

    cli.main dispatches this mode too, but only after importing the CLI and
    with it the whole engine, websockets and the remote client: 0.3 s per
    helper in a frozen build, against 0.1 s for the venv's
    ``python -m desktop_agent.engine.smallfiles``. Helpers start while a
    backup of many small files waits for them, so that import is on the
    backup's critical path (measured: a 20,000-file backup 12 % slower).
    """
    if len(argv) == 2 and argv[0] == "--engine-helper":
        from desktop_agent.engine.smallfiles import helper_entry

        helper_entry(argv[1])
        sys.exit(0)


if __name__ == "__main__":
    _give_windowed_build_streams()
    _helper_fast_path(sys.argv[1:])
    from desktop_agent.cli import main

    sys.exit(main())

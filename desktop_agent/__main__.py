"""``python -m desktop_agent``: the same as the ``desktop-agent`` command."""

from __future__ import annotations

import sys

from desktop_agent.cli import main

# guarded: helper processes (multiprocessing "spawn") import this module too
if __name__ == "__main__":
    sys.exit(main())

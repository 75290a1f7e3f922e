"""``python -m desktop_agent``: the same as the ``desktop-agent`` command."""

from __future__ import annotations

import sys

from desktop_agent.cli import main

sys.exit(main())

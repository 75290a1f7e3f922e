"""The ``desktop-agent`` command line: one module per group of commands.

- :mod:`.entry`: :func:`main` (the console script, ``python -m desktop_agent``
  and the frozen program all call it), the parser assembled from the
  modules below, the dispatch, the one-line errors and the exit status;
- :mod:`.common`: what the commands share (exit statuses, :class:`CliError`,
  opening the repository, the password, tables and JSON lines);
- :mod:`.repository`: ``init``, ``snapshots``, ``check``;
- :mod:`.backup`: ``backup``;
- :mod:`.restore`: ``restore``;
- :mod:`.retention`: ``forget``, ``prune``;
- :mod:`.agent`: starting the tray app or the headless agent, ``token``,
  ``autostart``, ``selftest``;
- :mod:`.remote`, :mod:`.remote_client`, :mod:`.remote_watch`: ``remote``,
  the client of a running agent's ``/ws``.

Each module holds its commands' parsers beside their code. Terminal output
(sanitizing, widths, progress lines, human figures) is
:mod:`desktop_agent.termtext`'s; ``--json`` documents are the engine's own
``to_json`` methods. The verbs, options, outputs and exit statuses are
described in ``README.md``; ``docs/protocol.md`` describes what ``remote``
speaks.
"""

from __future__ import annotations

from .entry import build_parser, main

__all__ = ["main", "build_parser"]

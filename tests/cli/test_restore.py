"""``restore`` (:mod:`desktop_agent.cli.restore`): nothing overwritten silently, every
problem on a line of its own."""

from __future__ import annotations

import os

from clisupport import (
    ENV,
    HOSTILE_DIR,
    HOSTILE_DIR_SHOWN,
    HOSTILE_NAMES,
    RAW_NAME,
    RAW_NAME_SHOWN,
    one_line_error,
    safe_lines,
)
from support import write


def test_restore_never_overwrites_silently(tmp_path, cli, setup):
    src, cfg = setup
    c = ["--config", str(cfg)]
    assert cli(*c, "init", env=ENV).returncode == 0
    assert cli(*c, "backup", env=ENV).returncode == 0
    target = tmp_path / "t"
    existing = write(target / str(src).lstrip("/") / "a.txt", b"my precious edits")
    again = cli(*c, "restore", "latest", "--target", str(target), env=ENV)
    one_line_error(again, "problem")
    assert "exists; not overwritten" in again.stderr
    assert existing.read_bytes() == b"my precious edits"
    forced = cli(*c, "restore", "latest", "--target", str(target), "--overwrite", env=ENV)
    assert forced.returncode == 0
    assert existing.read_bytes() == b"alpha\n"


def test_restore_reports_hostile_names_escaped_one_line_each(hostile, raw_cli, tmp_path):
    src, c, evil, _wide = hostile
    target = tmp_path / "target"
    first = raw_cli(*c, "restore", evil.short_id, "--target", str(target))
    assert first.returncode == 0, first.stderr
    safe_lines(first.stdout)
    restored = os.fsencode(target / str(src).lstrip("/") / HOSTILE_DIR)
    assert sorted(os.listdir(restored)) == sorted(
        [name.encode() for name, _shown in HOSTILE_NAMES] + [RAW_NAME]
    )
    # again: every file exists, and each is reported on a line of its own
    again = raw_cli(*c, "restore", evil.short_id, "--target", str(target))
    assert again.returncode == 1
    errors = safe_lines(again.stderr)
    assert len(errors) == len(HOSTILE_NAMES) + 2, errors  # one per file, then the summary
    assert errors[-1].startswith("desktop-agent: error: ")
    for shown in [s for _name, s in HOSTILE_NAMES] + [RAW_NAME_SHOWN]:
        want = f"/{HOSTILE_DIR_SHOWN}/{shown}: exists; not overwritten"
        assert sum(line.startswith("error: ") and line.endswith(want) for line in errors) == 1
    safe_lines(again.stdout)

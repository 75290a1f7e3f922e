"""Exclude patterns, with restic's semantics.

* A pattern is matched against the whole path, component by component, with
  shell globbing inside a component (``*``, ``?``, ``[...]``).
* ``**`` matches any number of components (including none).
* A pattern that does not start with ``/`` may match at any depth, so
  ``*.tmp`` excludes every ``.tmp`` file and ``.cache`` every ``.cache``.
* ``~`` at the start expands to the home directory.

Names are matched as text decoded with ``surrogateescape``: like Go's
``filepath.Match``, ``?`` and ``[...]`` then take one character (not one byte)
of UTF-8 names, and one byte of names that are not UTF-8.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence

__all__ = ["ExcludeFilter"]


def _literal(comp: bytes) -> bytes | None:
    """The name a pattern component matches when it has no wildcards
    (``glob.escape``'s ``[*]`` forms allowed), else None."""
    out = bytearray()
    i = 0
    while i < len(comp):
        ch = comp[i : i + 1]
        if ch == b"[" and comp[i + 2 : i + 3] == b"]" and comp[i + 1 : i + 2] in (b"*", b"?", b"["):
            out += comp[i + 1 : i + 2]
            i += 3
            continue
        if ch in (b"*", b"?", b"["):
            return None
        out += ch
        i += 1
    return bytes(out)


class _Pattern:
    __slots__ = ("text", "anchored", "parts", "basename_only", "exact")

    def __init__(self, text: str) -> None:
        self.text = text
        expanded = os.path.expanduser(text) if text.startswith("~") else text
        raw = os.fsencode(expanded).rstrip(b"/")
        self.anchored = raw.startswith(b"/")
        comps = [c for c in raw.split(b"/") if c]
        # an absolute path without wildcards (the repository, the agent's cache):
        # one set lookup per path instead of a match per component
        literal = [_literal(c) for c in comps] if self.anchored else [None]
        self.exact = (
            b"/" + b"/".join(literal)  # type: ignore[arg-type]
            if comps and all(c is not None and c != b"**" for c in literal)
            else None
        )
        # "**/x" unanchored is the same as "x" unanchored (a lone "**" stays)
        while not self.anchored and len(comps) > 1 and comps[0] == b"**":
            comps.pop(0)
        self.parts: list[re.Pattern[str] | None] = [
            None if c == b"**" else re.compile(fnmatch.translate(_text(c))) for c in comps
        ]
        self.basename_only = (
            not self.anchored and len(self.parts) == 1 and self.parts[0] is not None
        )

    def match(self, comps: Sequence[str]) -> bool:
        if not self.parts:
            return False
        if self.basename_only:
            part = self.parts[0]
            assert part is not None
            return part.match(comps[-1]) is not None
        # unanchored: the pattern may start at any component, as if led by "**"
        return _match(self.parts, comps, anywhere=not self.anchored)


def _text(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def _match(parts: list[re.Pattern[str] | None], comps: Sequence[str], *, anywhere: bool) -> bool:
    """Whether ``parts`` match all of ``comps`` (``anywhere``: any suffix of them).

    A set of positions in the pattern is carried along the path (an NFA), so
    a path thousands of components deep costs components x pattern parts,
    never more, however many ``**`` the pattern holds.
    """
    end = len(parts)

    def closure(states: set[int]) -> set[int]:
        # "**" may match no component at all: its successor is reachable too
        todo = list(states)
        while todo:
            pi = todo.pop()
            if pi < end and parts[pi] is None and pi + 1 not in states:
                states.add(pi + 1)
                todo.append(pi + 1)
        return states

    states = closure({0})
    for comp in comps:
        nxt: set[int] = {0} if anywhere else set()
        for pi in states:
            if pi == end:
                continue
            part = parts[pi]
            if part is None:
                nxt.add(pi)  # "**" takes this component and may take more
            elif part.match(comp) is not None:
                nxt.add(pi + 1)
        states = closure(nxt)
        if not states:
            return False
    return end in states


class ExcludeFilter:
    """Decides whether a path is excluded."""

    def __init__(self, patterns: Iterable[str]) -> None:
        compiled = [_Pattern(p) for p in patterns if p.strip()]
        self.exact = {p.exact for p in compiled if p.exact is not None}
        self.patterns = [p for p in compiled if p.exact is None]

    def __bool__(self) -> bool:
        return bool(self.patterns or self.exact)

    def excluded(self, path: bytes) -> bool:
        """True if any pattern matches the absolute ``path``."""
        if self.exact and path in self.exact:  # the walker gives normalized paths
            return True
        if not self.patterns:
            return False
        comps = [_text(c) for c in path.split(b"/") if c]
        if not comps:
            return False
        return any(p.match(comps) for p in self.patterns)

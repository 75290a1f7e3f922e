"""filter: ExcludeFilter patterns with restic's semantics, on raw byte paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from desktop_agent.engine.filter import ExcludeFilter


def excluded(patterns: list[str], path: bytes | str) -> bool:
    raw = path.encode() if isinstance(path, str) else path
    return ExcludeFilter(patterns).excluded(raw)


@pytest.mark.parametrize(
    "patterns, path, expected",
    [
        # a basename glob matches at any depth
        (["*.tmp"], "/a.tmp", True),
        (["*.tmp"], "/home/me/work/deep/er/x.tmp", True),
        (["*.tmp"], "/home/me/x.tmp.keep", False),
        (["*.tmp"], "/home/me/tmp", False),
        # "**/.cache" and ".cache" both match a .cache directory anywhere
        (["**/.cache"], "/home/me/.cache", True),
        (["**/.cache"], "/.cache", True),
        (["**/.cache"], "/home/me/project/.cache", True),
        (["**/.cache"], "/home/me/.cached", False),
        ([".cache"], "/home/me/.cache", True),
        ([".cache"], "/srv/.cache", True),
        ([".cache"], "/home/me/x.cache", False),
        # anchored: that path only
        (["/home/x/secret"], "/home/x/secret", True),
        (["/home/x/secret"], "/home/x/secretive", False),
        (["/home/x/secret"], "/other/home/x/secret", False),
        (["/home/x/secret"], "/home/x", False),
        (["/home/x/secret"], "/home/y/secret", False),
        (["/home/x/secret/"], "/home/x/secret", True),
        # a relative path matches any .../foo/bar
        (["foo/bar"], "/foo/bar", True),
        (["foo/bar"], "/srv/a/b/foo/bar", True),
        (["foo/bar"], "/srv/foo/baz", False),
        (["foo/bar"], "/srv/bar", False),
        (["foo/bar"], "/srv/xfoo/bar", False),
        # "**" in the middle: zero or more directories
        (["/home/**/cache"], "/home/cache", True),
        (["/home/**/cache"], "/home/me/cache", True),
        (["/home/**/cache"], "/home/me/a/b/c/cache", True),
        (["/home/**/cache"], "/srv/home/me/cache", False),
        (["/home/**/cache"], "/home/me/cache2", False),
        (["src/**/*.o"], "/work/src/a/b/main.o", True),
        (["src/**/*.o"], "/work/src/main.o", True),
        (["src/**/*.o"], "/work/lib/main.o", False),
        (["/home/**"], "/home/anything/at/all", True),
        (["**"], "/anything", True),
        # shell globbing inside a component
        (["file?.txt"], "/d/file1.txt", True),
        (["file?.txt"], "/d/file10.txt", False),
        (["[ab]*"], "/d/beta", True),
        (["[!ab]*"], "/d/beta", False),
        (["*"], "/d/x", True),
        # several patterns: any one is enough
        (["*.o", "*.tmp"], "/d/x.tmp", True),
        (["*.o", "*.tmp"], "/d/x.c", False),
    ],
)
def test_patterns(patterns: list[str], path: str, expected: bool) -> None:
    assert excluded(patterns, path) is expected


@pytest.mark.parametrize(
    "patterns, path, expected",
    [
        (["*.tmp"], b"/d/bad\xffname.tmp", True),
        (["bad*"], b"/d/bad\xffname", True),
        (["bad?name"], b"/d/bad\xffname", True),  # "?" takes one undecodable byte
        (["bad?name"], b"/d/bad\xff\xfename", False),
        (["bad\udcffname"], b"/d/bad\xffname", True),  # a pattern holding that byte
        (["bad\udcffname"], b"/d/bad\xfename", False),
        (["/d/\udcff/x"], b"/d/\xff/x", True),
        # "?" and "[...]" take one character of a UTF-8 name, as in Go
        (["Entw?rfe"], "/home/me/Entwürfe".encode(), True),
        (["Gr??e"], "/home/me/Grüße".encode(), True),
        (["[äö]l"], "/home/me/öl".encode(), True),
        (["[äö]l"], b"/home/me/ul", False),
        (["*ü*"], "/home/me/Grüße".encode(), True),
        (["Grüße"], "/home/me/Grüße".encode(), True),
        (["Grüße"], b"/home/me/Grusse", False),
    ],
)
def test_non_ascii_and_non_utf8_names(patterns: list[str], path: bytes, expected: bool) -> None:
    assert excluded(patterns, path) is expected


def test_tilde_expands_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home" / "me"
    monkeypatch.setenv("HOME", str(home))
    flt = ExcludeFilter(["~/secret", "~/Downloads/*.iso"])
    assert flt.excluded(os.fsencode(home / "secret"))
    assert flt.excluded(os.fsencode(home / "Downloads" / "x.iso"))
    assert not flt.excluded(os.fsencode(tmp_path / "other" / "secret"))
    assert not flt.excluded(b"/secret")
    assert not flt.excluded(os.fsencode(home / "Downloads" / "deeper" / "x.iso"))


def test_empty_pattern_list_excludes_nothing() -> None:
    for patterns in ([], [""], ["  "]):
        flt = ExcludeFilter(patterns)
        assert not flt
        assert not flt.excluded(b"/home/me/x.tmp")
        assert not flt.excluded(b"/")
    assert ExcludeFilter(["*.tmp"])


def test_root_path_is_never_excluded() -> None:
    assert not ExcludeFilter(["*", "**"]).excluded(b"/")


@given(
    st.from_regex(r"[a-z]{1,6}", fullmatch=True),
    st.lists(st.from_regex(r"[a-z.]{1,6}", fullmatch=True)),
)
def test_extension_glob_matches_exactly_the_suffix(ext: str, dirs: list[str]) -> None:
    flt = ExcludeFilter([f"*.{ext}"])
    parent = ("/" + "/".join(dirs)).rstrip("/")
    assert flt.excluded(f"{parent}/name.{ext}".encode())
    assert not flt.excluded(f"{parent}/name.{ext}x".encode())
    assert not flt.excluded(f"{parent}/name{ext}".encode())


def test_exact_paths_with_glob_characters_match_only_themselves() -> None:
    """The agent excludes its repository and caches by their absolute paths,
    escaped with glob.escape: matched as they are, by one set lookup."""
    import glob

    from desktop_agent.engine.filter import ExcludeFilter

    odd = "/home/me/back[up]*?"
    f = ExcludeFilter([glob.escape(odd), "/plain/path"])
    assert f.excluded(odd.encode()) and f.excluded(b"/plain/path")
    assert not f.excluded(b"/home/me/backu*?") and not f.excluded(b"/plain/path/below")
    assert not f.excluded(b"/plain") and f.exact == {odd.encode(), b"/plain/path"}

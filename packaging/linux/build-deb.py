"""Build the .deb (and report the glibc floor) from the one-folder bundle.

    python packaging/linux/build-deb.py BUNDLE OUTDIR

BUNDLE is PyInstaller's dist/desktop-agent; the package lands in
OUTDIR/desktop-agent_<version>_<arch>.deb. Run it with the build venv's
Python: the PNG icons are drawn with its PySide6 (packaging/icons.py).

Layout of the package:

    /opt/desktop-agent/                         the bundle, as built
    /usr/bin/desktop-agent                      symlink to /opt/desktop-agent/desktop-agent
    /usr/share/applications/desktop-agent.desktop   menu entry (resources/)
    /etc/xdg/autostart/desktop-agent.desktop    start the tray at login (resources/
                                                desktop-agent-autostart.desktop)
    /usr/share/icons/hicolor/{scalable,NxN}/apps/desktop-agent.{svg,png}

Depends is computed, not written by hand: every library some ELF file of the
bundle needs (DT_NEEDED, from objdump) that the bundle does not carry is
looked up with ldconfig and mapped to its Debian package with dpkg -S, on
this (the build) machine; libc6 gets the glibc floor as its minimum version,
the highest GLIBC_x.y symbol version any file requires. A library that
cannot be mapped stops the build: a package that installs and then does not
start is worse than none.

No maintainer scripts: the menu and icon caches are refreshed by the dpkg
triggers of desktop-file-utils and hicolor-icon-theme, which watch exactly
these directories.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["build", "elf_files", "glibc_floor", "system_dependencies"]

ROOT = Path(__file__).resolve().parent.parent.parent
NAME = "desktop-agent"
# The bundle reads /etc/fonts through the system's libfontconfig; said
# explicitly, should a system's libfontconfig ever come without it.
EXTRA_DEPENDS = ["fontconfig-config"]
MAINTAINER = os.environ.get("DEB_MAINTAINER", "desktop-agent maintainers <desktop-agent@localhost>")
DESCRIPTION = """\
Backups you can keep an eye on (restic format)
 desktop-agent makes incremental, deduplicated, compressed and encrypted
 backups in restic's repository format (version 2), so every backup can also
 be listed, checked and restored with restic itself. A tray app shows how
 backups are doing; a /ws endpoint lets a backup server watch and steer
 them; a command line does everything without either.
 .
 This package carries its own Python and Qt under /opt/desktop-agent."""


class BuildError(Exception):
    """The package cannot be built as it should be (the message says why)."""


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def elf_files(bundle: Path) -> list[Path]:
    """Every regular ELF file in the bundle (symlinks are counted at their target)."""
    found = []
    for path in sorted(bundle.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as f:
            if f.read(4) == b"\x7fELF":
                found.append(path)
    return found


def _needed(path: Path) -> tuple[set[str], set[str]]:
    """(DT_NEEDED names, GLIBC_x.y versions required) of one ELF file."""
    out = _run("objdump", "-p", str(path))
    needed = {m.group(1) for m in re.finditer(r"^\s+NEEDED\s+(\S+)$", out, re.M)}
    # "Version References": what this file requires from each library
    refs = out.partition("Version References:")[2]
    glibc = set(re.findall(r"\bGLIBC_(\d+\.\d+(?:\.\d+)?)\b", refs))
    return needed, glibc


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def glibc_floor(files: list[Path]) -> str:
    """The highest GLIBC_x.y symbol version any of ``files`` requires."""
    versions = set().union(*(_needed(f)[1] for f in files))
    return max(versions, key=_version_key) if versions else "2.2.5"


def _ldconfig() -> dict[str, str]:
    """soname -> path for this machine's architecture, from ldconfig's cache."""
    arch = {"x86_64": "x86-64", "aarch64": "AArch64"}.get(os.uname().machine, "")
    paths: dict[str, str] = {}
    for line in _run("/sbin/ldconfig", "-p").splitlines()[1:]:
        m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)$", line)
        if m and (not arch or arch in m.group(2)):
            paths.setdefault(m.group(1), m.group(3))
    return paths


def _owner(path: str) -> str | None:
    """The Debian package that holds ``path`` (merged /usr: either spelling)."""
    real = os.path.realpath(path)
    candidates = {path, real}
    for p in list(candidates):
        if p.startswith("/usr/"):
            candidates.add(p[4:])
        else:
            candidates.add("/usr" + p)
    for p in sorted(candidates):
        proc = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if proc.returncode == 0:
            pkg = proc.stdout.split(":", 1)[0].strip()
            # "diversion by x from: ..." lines and multiple owners: take the first
            return pkg.split(",")[0].strip()
    return None


def system_dependencies(bundle: Path) -> tuple[list[str], str, dict[str, str]]:
    """(packages, glibc floor, soname -> package) for what the bundle leaves to the system."""
    files = elf_files(bundle)
    carried = {p.name for p in bundle.rglob("*")}
    needs: dict[str, set[str]] = {}
    glibc: set[str] = set()
    for f in files:
        needed, versions = _needed(f)
        glibc |= versions
        for name in needed - carried:
            needs.setdefault(name, set()).add(str(f.relative_to(bundle)))
    floor = max(glibc, key=_version_key) if glibc else "2.2.5"
    cache = _ldconfig()
    owners: dict[str, str] = {}
    missing = []
    for soname in sorted(needs):
        path = cache.get(soname)
        pkg = _owner(path) if path else None
        if pkg is None:
            missing.append(f"{soname} (needed by {sorted(needs[soname])[0]})")
        else:
            owners[soname] = pkg
    if missing:
        raise BuildError(
            "these libraries are needed by the bundle but are not installed here, so their "
            "Debian packages cannot be named: "
            + ", ".join(missing)
            + " -- install them (make package does) and build again"
        )
    packages = sorted(set(owners.values()) | set(EXTRA_DEPENDS))
    return packages, floor, owners


def _depends(packages: list[str], floor: str) -> str:
    return ", ".join(f"{p} (>= {floor})" if p == "libc6" else p for p in packages)


def _md5sums(root: Path) -> str:
    lines = []
    for path in sorted(root.rglob("*")):
        if (
            path.is_file()
            and not path.is_symlink()
            and "DEBIAN" not in path.relative_to(root).parts
        ):
            digest = hashlib.md5(path.read_bytes()).hexdigest()  # dpkg's md5sums format
            lines.append(f"{digest}  {path.relative_to(root)}\n")
    return "".join(lines)


def _installed_size_kib(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        if "DEBIAN" in path.relative_to(root).parts:
            continue
        total += 1 if path.is_symlink() or path.is_dir() else -(-path.stat().st_size // 1024)
    return total


def build(bundle: Path, outdir: Path, work: Path) -> Path:
    """Stage the file tree under ``work``, write DEBIAN/, run dpkg-deb; returns the .deb."""
    exe = bundle / NAME
    version = _run(str(exe), "--version").split()[-1]
    arch = _run("dpkg", "--print-architecture").strip()
    packages, floor, owners = system_dependencies(bundle)

    root = work / "root"
    if work.exists():
        shutil.rmtree(work)
    opt = root / "opt" / NAME
    shutil.copytree(bundle, opt, symlinks=True)
    (root / "usr" / "bin").mkdir(parents=True)
    # the bootloader finds _internal/ through /proc/self/exe, so a symlink works
    (root / "usr" / "bin" / NAME).symlink_to(f"/opt/{NAME}/{NAME}")
    resources = opt / "_internal" / "desktop_agent" / "resources"
    apps = root / "usr" / "share" / "applications"
    apps.mkdir(parents=True)
    shutil.copyfile(resources / f"{NAME}.desktop", apps / f"{NAME}.desktop")
    autostart = root / "etc" / "xdg" / "autostart"
    autostart.mkdir(parents=True)
    shutil.copyfile(resources / f"{NAME}-autostart.desktop", autostart / f"{NAME}.desktop")
    icons_dir = work / "icons"
    subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "icons.py"), str(icons_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    shutil.copytree(icons_dir / "hicolor", root / "usr" / "share" / "icons" / "hicolor")
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if os.access(path, os.X_OK) else 0o644)

    debian = root / "DEBIAN"
    debian.mkdir()
    (debian / "md5sums").write_text(_md5sums(root))
    # /etc/xdg/autostart/desktop-agent.desktop is deliberately not a
    # conffile: `dpkg -r` removes it with the program it starts (a conffile
    # would stay until purge and start a program that is gone), and an
    # upgrade brings the current one. Users turn autostart off in their own
    # ~/.config/autostart (`desktop-agent autostart disable`).
    control = (
        f"Package: {NAME}\n"
        f"Version: {version}\n"
        f"Architecture: {arch}\n"
        f"Maintainer: {MAINTAINER}\n"
        f"Installed-Size: {_installed_size_kib(root)}\n"
        f"Depends: {_depends(packages, floor)}\n"
        "Section: utils\n"
        "Priority: optional\n"
        f"Description: {DESCRIPTION}\n"
    )
    (debian / "control").write_text(control)

    outdir.mkdir(parents=True, exist_ok=True)
    deb = outdir / f"{NAME}_{version}_{arch}.deb"
    # xz at level 3 on every core: measured on the bundle, 38.7 MB in 14 s on
    # 2 cores, where the default level 6 gives 35.6 MB in 45 s (and 82 s on
    # one thread); gzip -9 gives 49 MB. Every dpkg since 1.15.6 reads xz.
    compress = ["-Zxz", "-z3"]
    if "--threads-max" in _run("dpkg-deb", "--help"):
        compress.append(f"--threads-max={os.cpu_count() or 1}")
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", *compress, "--build", str(root), str(deb)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"built {deb} ({deb.stat().st_size / 2**20:.1f} MB)")
    print(f"glibc floor: {floor} (the highest GLIBC_ symbol version the bundle requires)")
    print("Depends: " + _depends(packages, floor))
    for soname, pkg in sorted(owners.items()):
        print(f"  {soname:28} {pkg}")
    return deb


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: build-deb.py BUNDLE OUTDIR", file=sys.stderr)
        return 2
    bundle, outdir = Path(argv[0]), Path(argv[1])
    if not (bundle / NAME).is_file():
        print(f"build-deb.py: {bundle} is not a desktop-agent bundle", file=sys.stderr)
        return 2
    try:
        build(bundle, outdir, ROOT / "build" / "package" / "deb")
    except BuildError as exc:
        print(f"build-deb.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env bash
# What each trim of desktop-agent.spec saves: builds the bundle with every
# trim on, then once with each trim turned off (DESKTOP_AGENT_TRIM), and once
# with all of them off, and prints the sizes on disk.
#
#   packaging/pyinstaller/measure-trims.sh [PYINSTALLER]
#
# PYINSTALLER defaults to the build venv's (make package sets it up). Takes
# about 20 s per build; the builds go to build/package/trims/ (deleted at the
# end). The figures depend on the build host: a trim that leaves out a plugin
# saves the host libraries it would pull in only where they are installed
# (the GTK3 theme's libgtk-3, for one).
set -euo pipefail
cd "$(dirname "$0")/../.."
pyinstaller=${1:-build/package/venv/bin/pyinstaller}
work=build/package/trims
spec=packaging/pyinstaller/desktop-agent.spec
trims="gtk3 qt-plugins translations qtdbus-module zstd-cffi system-libs strip"

size() { du -s --block-size=1K "$1" | cut -f1; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

build() {  # $1: label, $2: DESKTOP_AGENT_TRIM value
  DESKTOP_AGENT_TRIM=$2 "$pyinstaller" --noconfirm --log-level ERROR \
    --distpath "$work/dist-$1" --workpath "$work/build-$1" "$spec" >/dev/null
  size "$work/dist-$1/desktop-agent"
}

rm -rf "$work"
all=$(build all "")
printf '%-16s %8s %10s\n' "trim" "bundle" "saves"
printf '%-16s %6s MiB %10s\n' "(all on)" "$(mb "$all")" ""
for t in $trims; do
  s=$(build "$t" "$t")
  printf '%-16s %6s MiB %7s MiB\n' "$t off" "$(mb "$s")" "$(mb $((s - all)))"
done
none=$(build none "$(echo $trims | tr ' ' ,)")
printf '%-16s %6s MiB %7s MiB\n' "(all off)" "$(mb "$none")" "$(mb $((none - all)))"
rm -rf "$work"

#!/bin/sh
# Two suites that file systems such as FreeBSD's and Linux's are held to, from crates.io,
# against a mounted directory (run as root):
# - pjdfstest: every system call's effects and error codes, as root and as two other users
#   (nobody, daemon). Skipped: LINK_MAX, which a FUSE file system cannot announce through
#   pathconf, and unless PJDFSTEST_REMOUNT=1 the read-only tests (see below).
# - fsx: random reads, writes, mmap reads and writes, truncates, fallocate, hole punches,
#   copy_file_range, fsync and reopens of one file, every read checked against what was
#   written (FSX_OPS operations on each of FSX_SEEDS seeds).
#
#   scripts/conformance.sh MOUNTED_DIR [PJDFSTEST_TEST_FILTER...]
#
# PJDFSTEST_REMOUNT=1 runs the read-only tests too: they remount the mount read-only and
# back with `mount -o remount,ro|rw`, which mount(8) hands to mount.fuse, which runs `cairn`
# from the system's PATH (/usr/local/sbin, /usr/local/bin, ...): it must be this build.
#
# Installs both on first use under ~/.cache/cairn-tools (CAIRN_TOOLS_DIR chooses another
# place).
set -eu
DIR="${1:?usage: conformance.sh MOUNTED_DIR [PJDFSTEST_TEST_FILTER...]}"
shift
FSX_OPS="${FSX_OPS:-3000}"
FSX_SEEDS="${FSX_SEEDS:-1 2}"
. "$(dirname "$0")/lib.sh"
PJDFSTEST="$(tool pjdfstest 0.2.2)"
FSX="$(tool fsx 0.3.2)"

WORK="$(mktemp -d)"
HERE="$DIR/conformance.$$"
cleanup() {
    rm -rf "$HERE" "$WORK"
}
trap cleanup EXIT
# pjdfstest's other users work in these directories.
mkdir "$HERE" "$WORK/secondary"
chmod 0777 "$HERE" "$WORK/secondary"
chmod 0755 "$WORK"
cat >"$WORK/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01
allow_remount = REMOUNT
expected_failures = []

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
TOML
# The read-only tests run on their own, after the rest: a remount to read-only fails with
# EBUSY while another test has a file open for writing, as it would on a local disk.
sed 's/^allow_remount = REMOUNT/allow_remount = true/' "$WORK/pjdfstest.toml" \
    >"$WORK/pjdfstest-remount.toml"
sed -i 's/^allow_remount = REMOUNT/allow_remount = false/' "$WORK/pjdfstest.toml"
fsx_config "$WORK/fsx.toml"

echo "--- pjdfstest on $DIR"
cd "$HERE"
"$PJDFSTEST" -c "$WORK/pjdfstest.toml" -p "$HERE" -s "$WORK/secondary" "$@" \
    >"$WORK/pjdfstest.out" 2>&1 || {
    grep -v " ok$" "$WORK/pjdfstest.out"
    echo "pjdfstest failed on $DIR"
    exit 1
}
grep "^Summary" "$WORK/pjdfstest.out"
if [ "${PJDFSTEST_REMOUNT:-0}" = 1 ] && [ $# -eq 0 ]; then
    echo "--- pjdfstest's read-only tests on $DIR: remounted read-only and back"
    "$PJDFSTEST" -c "$WORK/pjdfstest-remount.toml" -p "$HERE" -s "$WORK/secondary" erofs \
        >"$WORK/pjdfstest.out" 2>&1 || {
        grep -v " ok$" "$WORK/pjdfstest.out"
        echo "pjdfstest's read-only tests failed on $DIR"
        exit 1
    }
    grep "^Summary" "$WORK/pjdfstest.out"
fi
[ $# -eq 0 ] || exit 0

for seed in $FSX_SEEDS; do
    echo "--- fsx on $DIR: $FSX_OPS operations, seed $seed"
    "$FSX" -f "$WORK/fsx.toml" -N "$FSX_OPS" -S "$seed" -P "$WORK" "$HERE/fsx.$seed" \
        >"$WORK/fsx.out" 2>&1 || {
        tail -40 "$WORK/fsx.out"
        echo "fsx failed on $DIR (seed $seed; the file as written is in $HERE)"
        trap - EXIT
        exit 1
    }
    tail -1 "$WORK/fsx.out"
done

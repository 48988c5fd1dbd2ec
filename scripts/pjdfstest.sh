#!/bin/sh
# pjdfstest, the POSIX conformance suite of FreeBSD's and Linux's file systems (the Rust
# port from crates.io), against a mounted directory: every system call's effects and error
# codes, as root and as two other users (nobody, daemon). Run as root.
#
#   scripts/pjdfstest.sh MOUNTED_DIR [TEST_NAME_FILTER...]
#
# Installs the suite on first use under ~/.cache/cairn-tools (CAIRN_TOOLS_DIR chooses
# another place). Skipped: the read-only tests (they remount the file system) and
# LINK_MAX, which a FUSE file system cannot announce through pathconf.
set -eu
DIR="${1:?usage: pjdfstest.sh MOUNTED_DIR [TEST_NAME_FILTER...]}"
shift
VERSION=0.2.2
TOOLS="${CAIRN_TOOLS_DIR:-$HOME/.cache/cairn-tools}"
BIN="$TOOLS/bin/pjdfstest"
if ! "$BIN" --version 2>/dev/null | grep -qF "$VERSION"; then
    echo "--- installing pjdfstest $VERSION in $TOOLS"
    CARGO_TARGET_DIR="$TOOLS/target" cargo install --quiet --locked --version "$VERSION" \
        --root "$TOOLS" pjdfstest
fi

WORK="$(mktemp -d)"
HERE="$DIR/pjdfstest.$$"
cleanup() {
    rm -rf "$HERE" "$WORK"
}
trap cleanup EXIT
# The tests switch to these users: the directories must let them in.
mkdir "$HERE" "$WORK/secondary"
chmod 0777 "$HERE" "$WORK/secondary"
chmod 0755 "$WORK"
cat >"$WORK/pjdfstest.toml" <<'EOF'
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01
expected_failures = []

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
EOF
cd "$HERE"
"$BIN" -c "$WORK/pjdfstest.toml" -p "$HERE" -s "$WORK/secondary" "$@" >"$WORK/out" 2>&1 || {
    grep -v " ok$" "$WORK/out"
    echo "pjdfstest failed on $DIR"
    exit 1
}
grep "^Summary" "$WORK/out"

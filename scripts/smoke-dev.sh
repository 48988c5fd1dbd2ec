#!/bin/sh
# End to end from the built binary: start `cairn dev`, use it with `cairn fs` from its
# directory and through CAIRN_CONFIG, stop it with Ctrl-C (SIGINT), start it again and find
# the data intact, mounted, where pjdfstest and fsx check its conformance.
set -eu
CAIRN="${1:?usage: smoke-dev.sh PATH/TO/cairn}"
WORK="$(mktemp -d)"
# pjdfstest's other users reach the mount through it.
chmod 0755 "$WORK"
DEV="$WORK/dev"
PID=""
LINKED=""
cleanup() {
    [ -z "$LINKED" ] || rm -f "$LINKED"
    for m in "$WORK/mnt" "$WORK/devmnt"; do
        umount -l "$m" 2>/dev/null || true
    done
    [ -n "$PID" ] && kill -INT "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start() {
    "$CAIRN" dev --dir "$DEV" --namenode 127.0.0.1:0 "$@" >"$WORK/dev.out" 2>"$WORK/dev.log" &
    PID=$!
    i=0
    until grep -q "Ctrl-C stops the cluster" "$WORK/dev.out" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 300 ] || ! kill -0 "$PID" 2>/dev/null; then
            echo "cairn dev did not start:"; cat "$WORK/dev.out" "$WORK/dev.log"; exit 1
        fi
        sleep 0.1
    done
}

stop() {
    kill -INT "$PID"
    wait "$PID"
    PID=""
}

echo "--- start cairn dev"
start
head -c 20000000 /dev/urandom >"$WORK/input"
echo "hello cairn" >"$WORK/small"

echo "--- put, ls, get from the dev directory"
(
    cd "$DEV"
    "$CAIRN" fs mkdir -p /smoke/dir
    "$CAIRN" fs put "$WORK/input" /smoke/input
    "$CAIRN" fs put "$WORK/small" /smoke/dir/
    "$CAIRN" fs ls /smoke | grep -q "/smoke/input"
    "$CAIRN" fs ls --json /smoke/dir | grep -q '"path": "/smoke/dir/small"'
    "$CAIRN" fs get /smoke/input "$WORK/output"
    "$CAIRN" fs cp /smoke/input /smoke/dir/
    "$CAIRN" fs get /smoke/dir/input "$WORK/copied"
)
cmp "$WORK/input" "$WORK/output"
cmp "$WORK/input" "$WORK/copied"

echo "--- from anywhere with CAIRN_CONFIG"
export CAIRN_CONFIG="$DEV/cairn-client.toml"
[ "$("$CAIRN" fs cat /smoke/dir/small)" = "hello cairn" ]

echo "--- the example systemd units are valid for this build"
mkdir "$WORK/units"
for f in "$(dirname "$0")"/../examples/systemd/*.service; do
    sed "s#/usr/local/bin/cairn#$(readlink -f "$CAIRN")#" "$f" >"$WORK/units/$(basename "$f")"
done
# systemd-analyze warns (and still exits 0) about anything it would ignore.
warned="$(systemd-analyze verify "$WORK/units/cairn-namenode.service" \
    "$WORK/units/cairn-datanode@one.service" 2>&1)"
[ -z "$warned" ] || { echo "$warned"; exit 1; }

echo "--- the cluster's health for an operator"
"$CAIRN" admin report | grep -q "Datanodes: 3 (3 live, 0 stale, 0 dead)"
"$CAIRN" admin fsck /smoke | grep -q "Status: HEALTHY"
"$CAIRN" admin repair-status | grep -q "^Queue: 0 blocks under-replicated"

echo "--- errors are one line with the cause and a non-zero exit"
if "$CAIRN" fs get /smoke/missing "$WORK/x" 2>"$WORK/err"; then
    echo "get of a missing file succeeded"; exit 1
fi
grep -q "/smoke/missing: no such file or directory" "$WORK/err"

echo "--- mount.cairn, as mount(8) runs it for an fstab line; then umount"
ln -s "$CAIRN" "$WORK/mount.cairn"
mkdir "$WORK/mnt"
"$WORK/mount.cairn" cairn "$WORK/mnt" -o "rw,config=$DEV/cairn-client.toml,_netdev,log=$WORK/mount.log" >"$WORK/mounted"
MOUNT_PID="$(pgrep -f "cairn mount $WORK/mnt")"
grep -q "mounted on $WORK/mnt (pid $MOUNT_PID; log $WORK/mount.log)" "$WORK/mounted"
# Logs that go to files are plain text: no terminal colour codes.
[ -s "$WORK/mount.log" ] && [ -s "$WORK/dev.log" ]
if grep -q $'\x1b\[' "$WORK/mount.log" "$WORK/dev.log"; then
    echo "colour codes in a log file"; exit 1
fi
cmp "$WORK/input" "$WORK/mnt/smoke/input"
cp "$WORK/input" "$WORK/mnt/copy"
cmp "$WORK/input" "$WORK/mnt/copy"
ls "$WORK/mnt/smoke" | grep -q '^input$'
truncate -s 1G "$WORK/mnt/holes"
[ "$(stat -c %b "$WORK/mnt/holes")" = 0 ]
"$CAIRN" fs stat /holes | grep -q "size: 1073741824 bytes (0 stored, holes left out)"
"$CAIRN" fs du -s /holes | grep -q "^  1073741824 .* 0 B  /holes$"
rm "$WORK/mnt/holes"
[ "$("$CAIRN" fs cat /smoke/dir/small)" = "hello cairn" ]

echo "--- a stopped mount holds another client's change up 2 s at most, then reads it"
[ "$(cat "$WORK/mnt/smoke/dir/small")" = "hello cairn" ]
kill -STOP "$MOUNT_PID"
echo "changed while it was stopped" >"$WORK/small2"
started=$(date +%s)
"$CAIRN" fs put -f "$WORK/small2" /smoke/dir/small
took=$(($(date +%s) - started))
kill -CONT "$MOUNT_PID"
# Two seconds of waiting, and the rest of a put: a change must never wait for a stopped
# mount's resumption.
[ "$took" -lt 15 ] || { echo "the change waited $took s for a stopped mount"; exit 1; }
[ "$(cat "$WORK/mnt/smoke/dir/small")" = "changed while it was stopped" ]
"$CAIRN" fs put -f "$WORK/small" /smoke/dir/small

echo "--- the namenode lists the mount"
"$CAIRN" admin mounts | grep -q ":$WORK/mnt  pid "
"$CAIRN" admin report | grep -q "^Mounts: 1 (0 not reading the change feed"

echo "--- a second mount there is refused; a mount whose process died is replaced"
if "$WORK/mount.cairn" cairn "$WORK/mnt" -o "config=$DEV/cairn-client.toml" 2>"$WORK/err"; then
    echo "a second mount on one directory succeeded"; exit 1
fi
grep -q "Cairn is already mounted on" "$WORK/err"
pkill -KILL -f "cairn mount $WORK/mnt"
while pgrep -f "cairn mount $WORK/mnt" >/dev/null; do sleep 0.1; done
if ls "$WORK/mnt" 2>/dev/null; then echo "the killed mount still answers"; exit 1; fi
"$WORK/mount.cairn" cairn "$WORK/mnt" -o "config=$DEV/cairn-client.toml,log=$WORK/mount.log"
cmp "$WORK/input" "$WORK/mnt/copy"
[ "$(grep -c " $WORK/mnt fuse" /proc/mounts)" = 1 ]
umount "$WORK/mnt"
i=0
while pgrep -f "cairn mount $WORK/mnt" >/dev/null; do
    i=$((i + 1)); [ "$i" -lt 100 ] || { echo "mount process outlived umount"; exit 1; }
    sleep 0.1
done

echo "--- Ctrl-C, restart with --mount on a directory it makes, data intact"
stop
if "$CAIRN" dev --dir "$DEV" --mount "$WORK/devmnt" -o bogus >"$WORK/bad.out" 2>&1; then
    echo "cairn dev took -o bogus"; exit 1
fi
grep -q 'unknown mount option "bogus"' "$WORK/bad.out" || { cat "$WORK/bad.out"; exit 1; }
start --mount "$WORK/devmnt" -o read_ahead_kb=2048
grep -q "made the mount point $WORK/devmnt" "$WORK/dev.out"
READ_AHEAD="/sys/class/bdi/$(mountpoint -d "$WORK/devmnt")/read_ahead_kb"
i=0
until [ "$(cat "$READ_AHEAD")" = 2048 ]; do
    i=$((i + 1))
    [ "$i" -gt 50 ] && { echo "the dev mount's read-ahead is $(cat "$READ_AHEAD"), not 2048"; exit 1; }
    sleep 0.1
done
"$CAIRN" fs get /smoke/input "$WORK/output2"
cmp "$WORK/input" "$WORK/output2"
cmp "$WORK/input" "$WORK/devmnt/copy"

echo "--- pjdfstest and fsx on the dev mount (the trash on)"
# pjdfstest's read-only tests remount it with mount(8), which runs `cairn` from the system's
# PATH (through mount.fuse): this build, linked there for the run if no cairn is installed.
INSTALLED=""
for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
    if [ -e "$d/cairn" ]; then INSTALLED="$d/cairn"; break; fi
done
if [ -z "$INSTALLED" ]; then
    LINKED=/usr/local/sbin/cairn
    mkdir -p /usr/local/sbin
    ln -s "$(readlink -f "$CAIRN")" "$LINKED"
    INSTALLED="$LINKED"
fi
if [ "$(readlink -f "$INSTALLED")" = "$(readlink -f "$CAIRN")" ] || cmp -s "$INSTALLED" "$CAIRN"; then
    export PJDFSTEST_REMOUNT=1
else
    echo "(read-only tests skipped: $INSTALLED is another cairn, and mount(8) would run it)"
fi
"$(dirname "$0")/conformance.sh" "$WORK/devmnt"
echo "--- pjdfstest and fsx on a mount with -o wsync (no delegations: every create and unlink asks)"
mkdir -p "$WORK/wsync"
"$CAIRN" mount --config "$DEV/cairn-client.toml" -o wsync --daemon --log "$WORK/wsync.log" "$WORK/wsync"
PJDFSTEST_REMOUNT=0 FSX_SEEDS=1 "$(dirname "$0")/conformance.sh" "$WORK/wsync"
umount "$WORK/wsync"
echo "--- the namespace they leave agrees with itself (links, references, counters)"
"$CAIRN" admin fsck / >"$WORK/fsck" 2>&1 || true
grep -q "^Namespace: consistent" "$WORK/fsck" || { cat "$WORK/fsck"; exit 1; }
stop
if mountpoint -q "$WORK/devmnt"; then echo "Ctrl-C left the dev mount behind"; exit 1; fi

echo "--- SQLite on three mounts, one mount's process killed and mounted again"
CAIRN="$CAIRN" "$(dirname "$0")/sqlite-across-mounts.sh" 200 --kill
echo "smoke test passed"

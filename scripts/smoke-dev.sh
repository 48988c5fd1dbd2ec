#!/bin/sh
# End to end from the built binary: start `cairn dev`, use it with `cairn fs` from its
# directory and through CAIRN_CONFIG, stop it with Ctrl-C (SIGINT), start it again and find
# the data intact.
set -eu
CAIRN="${1:?usage: smoke-dev.sh PATH/TO/cairn}"
WORK="$(mktemp -d)"
DEV="$WORK/dev"
PID=""
cleanup() {
    [ -n "$PID" ] && kill -INT "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start() {
    "$CAIRN" dev --dir "$DEV" --namenode 127.0.0.1:0 >"$WORK/dev.out" 2>"$WORK/dev.log" &
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
)
cmp "$WORK/input" "$WORK/output"

echo "--- from anywhere with CAIRN_CONFIG"
export CAIRN_CONFIG="$DEV/cairn-client.toml"
[ "$("$CAIRN" fs cat /smoke/dir/small)" = "hello cairn" ]

echo "--- errors are one line with the cause and a non-zero exit"
if "$CAIRN" fs get /smoke/missing "$WORK/x" 2>"$WORK/err"; then
    echo "get of a missing file succeeded"; exit 1
fi
grep -q "/smoke/missing: no such file or directory" "$WORK/err"

echo "--- Ctrl-C, restart, data intact"
stop
start
"$CAIRN" fs get /smoke/input "$WORK/output2"
cmp "$WORK/input" "$WORK/output2"
stop
echo "smoke test passed"

#!/usr/bin/env bash
# SQLite shared by three mounts of one cluster, as the consistency model promises: one
# writer process per mount on one database, TX transactions each with random sleeps, in each
# rollback journal mode (delete, truncate, persist). Every row whose commit returned must be
# in the database at the end, and PRAGMA integrity_check must say ok.
# With --kill, the third mount's process is killed (SIGKILL) while the writers run, mounted
# again, and its writer started again after the last row it saw committed: the other two
# writers must see no error at all, and nothing committed may be lost on any side.
#
# Usage: scripts/sqlite-across-mounts.sh [TX=1000] [--kill]
# Needs a built `cairn` ($CAIRN, or the release build if there is one, or the debug build)
# and sqlite3's Python module.
set -euo pipefail
TX=${1:-1000}; KILL=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"
if [ -z "${CAIRN:-}" ]; then
    CAIRN=$CARGO_TARGET_DIR/release/cairn
    [ -x "$CAIRN" ] || CAIRN=$CARGO_TARGET_DIR/debug/cairn
fi
WRITER=$HERE/../cli/tests/system/programs/sqlite_writer.py
W=$(mktemp -d /tmp/cairn-sqlite.XXXX)
M1=$W/m1; M2=$W/m2; M3=$W/m3
cleanup() {
    set +e  # every step, whatever the one before did; the script's own status stands
    pkill -f "$WRITER" 2>/dev/null
    for m in "$M3" "$M2" "$M1"; do fusermount3 -u "$m" 2>/dev/null; done
    if [ -n "${DEV:-}" ]; then kill "$DEV" 2>/dev/null; wait "$DEV" 2>/dev/null; fi
    rm -rf "$W"
}
trap cleanup EXIT

"$CAIRN" dev --dir "$W/dev" --namenode 127.0.0.1:0 --mount "$M1" > "$W/dev.log" 2>&1 &
DEV=$!
for _ in $(seq 1 240); do mountpoint -q "$M1" && break; sleep 0.5; done
mountpoint -q "$M1" || { cat "$W/dev.log"; exit 1; }
mount_at() { # prints the mount's pid
    mkdir -p "$1" 2>/dev/null || true  # a dead mount on it answers ENOTCONN: cairn mount clears it
    "$CAIRN" mount "$1" --config "$W/dev/cairn-client.toml" --daemon --log "$1.log" |
        sed -n 's/.*(pid \([0-9]*\);.*/\1/p'
}
mount_at "$M2" > /dev/null
PID3=$(mount_at "$M3")

failed=0
# A failure shows what the daemons said about it: their warnings and errors.
show_logs() {
    for log in "$W/dev.log" "$W"/m*.log; do
        [ -f "$log" ] || continue
        echo "--- warnings and errors in $log:"
        grep -E "WARN|ERROR" "$log" | tail -n 40 || true
    done
}

for mode in delete truncate persist; do
    db=sqlite-$mode.db
    logs=$W/logs-$mode; mkdir -p "$logs"
    start=$(date +%s)
    pids=()
    for k in 1 2 3; do
        touch "$logs/w$k"
        python3 "$WRITER" "$W/m$k/$db" "w$k" "$TX" "$mode" 0 "$logs/w$k" \
            > "$logs/w$k.out" 2> "$logs/w$k.err" &
        pids+=($!)
    done
    if [ "$KILL" = --kill ]; then
        # Somewhere after a fifth of its transactions, mid-commit or between two.
        until [ "$(wc -l < "$logs/w3")" -ge $((TX / 5)) ] || ! kill -0 "${pids[2]}"; do
            sleep 0.1
        done
        sleep "0.$((RANDOM % 10))"
        echo "$mode: killing the third mount (pid $PID3) after $(wc -l < "$logs/w3") of its commits"
        kill -9 "$PID3"
        wait "${pids[2]}" && echo "$mode: the third writer did not notice its mount die" || true
        PID3=$(mount_at "$M3")
        last=$(tail -n 1 "$logs/w3"); last=${last:--1}
        echo "$mode: mounted again (pid $PID3); its writer goes on after row $last"
        python3 "$WRITER" "$M3/$db" w3 "$TX" "$mode" $((last + 1)) "$logs/w3" \
            > "$logs/w3.out" 2>> "$logs/w3.err" &
        pids[2]=$!
    fi
    for k in 1 2 3; do
        if ! wait "${pids[$((k - 1))]}"; then
            echo "$mode: writer $k failed: $(cat "$logs/w$k.err")"
            failed=1
        fi
    done
    secs=$(($(date +%s) - start))
    python3 - "$M2/$db" "$logs" "$TX" "$mode" "$secs" <<'PY' || failed=1
import os, sqlite3, sys
path, logs, tx, mode, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
db = sqlite3.connect(path, timeout=60)
check = db.execute("PRAGMA integrity_check").fetchone()[0]
rows = {}
for tag, i in db.execute("SELECT tag, i FROM t"):
    rows.setdefault(tag, []).append(i)
bad = check != "ok"
for k in (1, 2, 3):
    tag = f"w{k}"
    logged = {int(l) for l in open(os.path.join(logs, tag))}
    have = rows.get(tag, [])
    lost = logged - set(have)
    twice = len(have) - len(set(have))
    print(f"{mode}: {tag}: {len(logged)} commits returned, {len(set(have))} rows present, "
          f"{len(lost)} lost, {twice} written twice")
    bad |= bool(lost) or len(logged) != tx
print(f"{mode}: integrity_check {check}; {secs} s")
sys.exit(1 if bad else 0)
PY
done
[ "$failed" = 0 ] || show_logs
exit $failed

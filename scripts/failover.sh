#!/bin/sh
# Failover under load, from the built binary as an operator runs it: a namenode group of
# three, each member, each datanode and the mount a process of its own, started from the
# configurations `cairn dev --namenodes 3` writes. fsx and a writer that syncs each file run
# on the mount while the leader is killed with SIGKILL, again and again, and started again.
# fsx must stay byte-exact, every file whose sync returned must be there with its bytes,
# and fsck must find the namespace whole.
set -eu
CAIRN="${1:?usage: failover.sh PATH/TO/cairn}"
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"
KILLS="${FAILOVER_KILLS:-3}"
FSX="$(tool fsx 0.3.2)"
WORK="$(mktemp -d)"
chmod 0755 "$WORK"
DEV="$WORK/dev"
M="$WORK/mnt"
PIDS=""
NN1="" NN2="" NN3=""
before_kill() { umount -l "$M" 2>/dev/null || true; }
clean_up_on_exit
export CAIRN_CONFIG="$DEV/cairn-client.toml"

echo "--- the group's configurations, from cairn dev --namenodes 3"
group_configs "$CAIRN" "$DEV" "$WORK" || fail "cairn dev did not start"

start_member() { # I
    "$CAIRN" namenode --config "$(member_config "$1")" >>"$WORK/namenode-$1.log" 2>&1 &
    eval "NN$1=$!"
}
leader() { # the number of the member that leads, once one does
    n=0
    until "$CAIRN" admin namenodes --json >"$WORK/group.json" 2>/dev/null; do
        n=$((n + 1))
        [ "$n" -le 100 ] || fail "no namenode leads"
        sleep 0.2
    done
    sed -n 's/^  "leader": \([0-9]*\),$/\1/p' "$WORK/group.json"
}

echo "--- every daemon a process of its own"
for i in 1 2 3; do start_member "$i"; done
for i in 1 2 3; do
    "$CAIRN" datanode --config "$DEV/datanode-$i.toml" >>"$WORK/datanode-$i.log" 2>&1 &
    PIDS="$PIDS $!"
done
leader >/dev/null
mkdir "$M"
"$CAIRN" mount "$M" --config "$DEV/cairn-mount.toml" --daemon --log "$WORK/mount.log" \
    >"$WORK/mount.out" 2>&1 ||
    fail "the mount did not start: $(cat "$WORK/mount.out")"
PIDS="$PIDS $(sed -n 's/.*pid \([0-9]*\).*/\1/p' "$WORK/mount.out" | head -1)"

echo "--- fsx and a syncing writer on the mount"
fsx_config "$WORK/fsx.toml"
mkdir "$M/fsx" "$M/written"
"$FSX" -f "$WORK/fsx.toml" -S 11 -P "$WORK" "$M/fsx/file" >"$WORK/fsx.log" 2>&1 &
FSX_PID=$!
: >"$WORK/acked"
(
    n=0
    while [ ! -e "$WORK/stop" ]; do
        n=$((n + 1))
        # A file counts once its sync returned; a failed one is an error the writer saw.
        if head -c $((4096 + n * 7)) /dev/urandom >"$WORK/w.$n" &&
            dd if="$WORK/w.$n" of="$M/written/$n" conv=fsync status=none; then
            echo "$n" >>"$WORK/acked"
        else
            echo "$n" >>"$WORK/refused"
        fi
    done
) &
WRITER=$!

sleep 5
round=0
while [ "$round" -lt "$KILLS" ]; do
    round=$((round + 1))
    l="$(leader)"
    eval "pid=\$NN$l"
    echo "--- kill -9 of the leader, member $l (pid $pid), round $round"
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    sleep 8
    kill -0 "$FSX_PID" 2>/dev/null || fail "fsx stopped during round $round: $(tail -5 "$WORK/fsx.log")"
    start_member "$l"
    sleep 4
done

touch "$WORK/stop"
wait "$WRITER"
# fsx checks every read against what it wrote, and stops at the first difference or error.
kill -0 "$FSX_PID" 2>/dev/null || fail "fsx stopped: $(tail -20 "$WORK/fsx.log")"
kill -TERM "$FSX_PID"
wait "$FSX_PID" 2>/dev/null || true
[ ! -s "$WORK/refused" ] || fail "the writer was refused: $(cat "$WORK/refused" | wc -l) files"
acked="$(wc -l <"$WORK/acked")"
[ "$acked" -gt 10 ] || fail "only $acked files written"
while read -r n; do
    cmp -s "$WORK/w.$n" "$M/written/$n" || fail "file $n was synced and is not as written"
done <"$WORK/acked"
echo "$acked synced files intact; fsx ran throughout without a difference"
"$CAIRN" admin fsck / >"$WORK/fsck.out" 2>&1 || fail "fsck: $(tail -5 "$WORK/fsck.out")"
"$CAIRN" admin namenodes
umount "$M"
echo "failover test passed"

#!/bin/sh
# A partition, with network namespaces: three namenodes, each in a namespace of its own on
# a bridge (10.77.0.1-3), datanodes and clients outside. While a client makes directory
# after directory, the leader's link is cut: the other two elect a leader and serve; the
# link back, the old leader follows, every member holds the whole log, and every directory
# whose mkdir returned is there. Needs root (ip netns).
set -eu
CAIRN="${1:?usage: partition.sh PATH/TO/cairn}"
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"
WORK="$(mktemp -d)"
DEV="$WORK/dev"
TAG="c$$"
BR="${TAG}br"
PIDS=""
NN1="" NN2="" NN3=""
after_kill() {
    for i in 1 2 3; do ip netns del "$TAG-$i" 2>/dev/null || true; done
    ip link del "$BR" 2>/dev/null || true
}
clean_up_on_exit
export CAIRN_CONFIG="$DEV/cairn-client.toml"

echo "--- configurations from cairn dev --namenodes 3, moved to 10.77.0.1-3"
group_configs "$CAIRN" "$DEV" "$WORK" || fail "cairn dev did not start"
# A new namespace at the new addresses: the certificates and configurations are kept.
rm -rf "$DEV"/namenode "$DEV"/namenode-2 "$DEV"/namenode-3 "$DEV"/datanode-1 \
    "$DEV"/datanode-2 "$DEV"/datanode-3
for i in 1 2 3; do
    if [ "$i" = 1 ]; then f="$DEV/namenode.toml"; else f="$DEV/namenode-$i.toml"; fi
    old="$(sed -n 's/^listen = "\(.*\)"$/\1/p' "$f")"
    sed -i "s/$old/10.77.0.$i:7070/g" "$DEV"/*.toml
done

echo "--- a bridge and a namespace for each namenode"
ip link add "$BR" type bridge
ip addr add 10.77.0.254/24 dev "$BR"
ip link set "$BR" up
for i in 1 2 3; do
    ns="$TAG-$i"
    ip netns add "$ns"
    ip link add "${TAG}h$i" type veth peer name "${TAG}n$i"
    ip link set "${TAG}h$i" master "$BR" up
    ip link set "${TAG}n$i" netns "$ns"
    ip -n "$ns" addr add "10.77.0.$i/24" dev "${TAG}n$i"
    ip -n "$ns" link set "${TAG}n$i" up
    ip -n "$ns" link set lo up
done

for i in 1 2 3; do
    ip netns exec "$TAG-$i" "$CAIRN" namenode --config "$(member_config "$i")" \
        >>"$WORK/namenode-$i.log" 2>&1 &
    eval "NN$i=$!"
done
for i in 1 2 3; do
    "$CAIRN" datanode --config "$DEV/datanode-$i.toml" >>"$WORK/datanode-$i.log" 2>&1 &
    PIDS="$PIDS $!"
done
group() { # the group as its leader sees it, once one answers
    n=0
    until "$CAIRN" admin namenodes --json >"$WORK/group.json" 2>"$WORK/admin.err"; do
        n=$((n + 1))
        [ "$n" -le 150 ] || fail "no namenode leads: $(cat "$WORK/admin.err")"
        sleep 0.2
    done
}
leader() { sed -n 's/^  "leader": \([0-9]*\),$/\1/p' "$WORK/group.json"; }
n=0
until [ "$(grep -c '"voter": true' "$WORK/group.json" 2>/dev/null)" = 3 ]; do
    n=$((n + 1))
    [ "$n" -le 60 ] || fail "the group did not form: $(cat "$WORK/group.json")"
    sleep 1
    group
done

echo "--- a client makes directories all along"
"$CAIRN" fs mkdir /p
: >"$WORK/acked"
(
    n=0
    while [ ! -e "$WORK/stop" ]; do
        n=$((n + 1))
        if "$CAIRN" fs mkdir "/p/d$n" 2>>"$WORK/writer.log"; then
            echo "d$n" >>"$WORK/acked"
        fi
    done
) &
WRITER=$!
sleep 3

group
old="$(leader)"
echo "--- member $old leads: its link is cut"
ip link set "${TAG}h$old" down
before="$(wc -l <"$WORK/acked")"
n=0
while :; do
    n=$((n + 1))
    [ "$n" -le 60 ] || fail "the majority did not elect a leader"
    sleep 1
    group
    [ "$(leader)" = "$old" ] || break
done
new="$(leader)"
sleep 4
during="$(wc -l <"$WORK/acked")"
[ "$during" -gt "$before" ] || fail "nothing acknowledged with member $old cut off"
echo "member $new leads the majority; $((during - before)) directories made meanwhile"

echo "--- the link back: the old leader follows"
ip link set "${TAG}h$old" up
n=0
while :; do
    n=$((n + 1))
    [ "$n" -le 60 ] || fail "the old leader did not catch up: $(cat "$WORK/group.json")"
    sleep 1
    group
    last="$(sed -n 's/^  "last_log": \([0-9]*\),$/\1/p' "$WORK/group.json")"
    [ "$(grep -c "\"matched\": $last" "$WORK/group.json")" = 2 ] && break
done
touch "$WORK/stop"
wait "$WRITER"
"$CAIRN" fs ls /p >"$WORK/listed"
missing=0
while read -r d; do
    grep -q "/p/$d\$" "$WORK/listed" || { echo "missing: $d"; missing=$((missing + 1)); }
done <"$WORK/acked"
[ "$missing" = 0 ] || fail "$missing acknowledged directories are gone"
echo "$(wc -l <"$WORK/acked") acknowledged directories all there"
"$CAIRN" admin namenodes
echo "partition test passed"

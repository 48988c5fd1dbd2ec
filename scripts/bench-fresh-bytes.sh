#!/usr/bin/env bash
# Sequential write and cold read of bytes no file system has seen before, on each mount
# given, alternating rounds. fsbench.sh writes zeros, which Cairn stores once (blocks are
# named by their BLAKE3 hash); this measures moving distinct bytes.
# Usage: scripts/bench-fresh-bytes.sh [--mb N] [--rounds R] MOUNT...
set -euo pipefail
MB=1024; ROUNDS=2
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --mb) MB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--mb N] [--rounds R] MOUNT..." >&2; exit 2; }
SRC=/dev/shm/cairn-fresh-bytes.$$
trap 'rm -f "$SRC"' EXIT
secs() { python3 -c 'import time; print(time.monotonic())'; }
for r in $(seq 1 "$ROUNDS"); do
  for m in "$@"; do
    head -c "${MB}M" /dev/urandom > "$SRC"      # new bytes every time: nothing to dedup
    t0=$(secs); dd if="$SRC" of="$m/fresh.$$" bs=1M conv=fsync status=none; t1=$(secs)
    sync; echo 3 > /proc/sys/vm/drop_caches
    t2=$(secs); dd if="$m/fresh.$$" of=/dev/null bs=1M status=none; t3=$(secs)
    rm -f "$m/fresh.$$"
    python3 -c "print('$m', 'round', $r, 'write_MBps', round($MB/($t1-$t0), 1), 'read_MBps', round($MB/($t3-$t2), 1))"
  done
done

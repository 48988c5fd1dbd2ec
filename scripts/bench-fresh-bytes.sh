#!/usr/bin/env bash
# Sequential write and cold read of bytes no file system has seen before, on each mount
# given, alternating rounds. fsbench.sh writes zeros, and the same 64 KiB for each of its
# small files, which Cairn stores once (blocks are named by their BLAKE3 hash); this
# measures moving distinct bytes: with --small N, also N files of 64 KiB, each its own bytes,
# written then read back as fsbench.sh does.
# Usage: scripts/bench-fresh-bytes.sh [--mb N] [--rounds R] [--small N] MOUNT...
set -euo pipefail
MB=1024; ROUNDS=2; SMALL=0   # --mb 0: small files only
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --mb) MB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --small) SMALL=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--mb N] [--rounds R] [--small N] MOUNT..." >&2; exit 2; }
SRC=/dev/shm/cairn-fresh-bytes.$$
trap 'rm -f "$SRC"' EXIT
secs() { python3 -c 'import time; print(time.monotonic())'; }
for r in $(seq 1 "$ROUNDS"); do
  for m in "$@"; do
    if [[ $MB -gt 0 ]]; then
      head -c "${MB}M" /dev/urandom > "$SRC"      # new bytes every time: nothing to dedup
      t0=$(secs); dd if="$SRC" of="$m/fresh.$$" bs=1M conv=fsync status=none; t1=$(secs)
      sync; echo 3 > /proc/sys/vm/drop_caches
      t2=$(secs); dd if="$m/fresh.$$" of=/dev/null bs=1M status=none; t3=$(secs)
      rm -f "$m/fresh.$$"
      python3 -c "print('$m', 'round', $r, 'write_MBps', round($MB/($t1-$t0), 1), 'read_MBps', round($MB/($t3-$t2), 1))"
    fi
    if [[ $SMALL -gt 0 ]]; then
      python3 - "$m/small.$$" "$SMALL" "$m" "$r" <<'PY'
import os, sys, time
w, n, mount, rnd = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.makedirs(w)
blobs = [os.urandom(64 * 1024) for _ in range(n)]   # made before the clock starts
t = time.monotonic()
for i, blob in enumerate(blobs):
    with open(os.path.join(w, f"s{i}"), "wb") as f: f.write(blob)
c = time.monotonic() - t; t = time.monotonic()
for i in range(n):
    with open(os.path.join(w, f"s{i}"), "rb") as f: f.read()
rd = time.monotonic() - t
for i in range(n): os.unlink(os.path.join(w, f"s{i}"))
os.rmdir(w)
print(mount, "round", rnd, "small64k_fresh_write_files_per_s", round(n / c),
      "small64k_fresh_read_files_per_s", round(n / rd))
PY
    fi
  done
done

#!/usr/bin/env bash
# Where a metadata loop's time goes, seen from the kernel: a python loop of creates, stats
# and unlinks in a fresh directory of MOUNT, traced with the kernel's fuse tracepoints
# (perf), then each FUSE request type's count and latency (request sent to answer
# received), and the time between requests (the program and the kernel).
# Usage: scripts/fuse-request-latency.sh MOUNT [FILES=2000]   (root; needs perf)
set -euo pipefail
MNT=${1:?usage: $0 MOUNT [FILES]}; N=${2:-2000}
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
DIR="$MNT/fuse-latency.$$"; DATA=$(mktemp)
trap 'rm -f "$DATA" "$DATA.txt"; rm -rf "$DIR"' EXIT
perf record -q -e fuse:fuse_request_send -e fuse:fuse_request_end -a -o "$DATA" -- \
  python3 - "$DIR" "$N" <<'PY'
import os, sys, time
w, n = sys.argv[1], int(sys.argv[2]); os.mkdir(w)
for phase, op in (("create", lambda p: open(p, "w").close()), ("stat", os.stat), ("unlink", os.unlink)):
    t = time.monotonic()
    for i in range(n): op(os.path.join(w, f"f{i}"))
    print(f"{phase} {1e6 * (time.monotonic() - t) / n:.0f} us a file")
PY
perf script -i "$DATA" 2>/dev/null > "$DATA.txt"
python3 - "$DATA.txt" <<'PY'
import re, sys, collections
sent, lat, gaps, last = {}, collections.defaultdict(list), [], None
pat = re.compile(r"(\d+\.\d+):\s+fuse:fuse_request_(send|end): connection \d+ req (\d+)(?: opcode \d+ \((\w+)\))?")
for line in open(sys.argv[1]):
    m = pat.search(line)
    if not m: continue
    t, kind, req, op = float(m[1]), m[2], m[3], m[4]
    if kind == "send":
        sent[req] = (t, op)
        if last is not None: gaps.append(t - last)
    elif req in sent:
        t0, op = sent.pop(req); lat[op].append(t - t0); last = t
med = lambda v: sorted(v)[len(v) // 2] * 1e6
print(f"{'request':16} {'count':>7} {'median us':>10} {'total ms':>9}")
for op, v in sorted(lat.items(), key=lambda kv: -sum(kv[1])):
    print(f"{op:16} {len(v):7} {med(v):10.1f} {sum(v) * 1e3:9.1f}")
if gaps: print(f"{'between requests':16} {len(gaps):7} {med(gaps):10.1f} {sum(gaps) * 1e3:9.1f}")
PY

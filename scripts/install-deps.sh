#!/bin/sh
# Installs what building and testing Cairn needs on Debian 12 (run as root):
# RocksDB and clang (for the rocksdb crate's bindings), FUSE 3, the programs the mount tests
# run on a mount (git, sqlite3, rsync, tar), systemd-analyze (the example units are
# checked), and a Rust toolchain if none.
# With --bench, also what docs/BENCHMARKS.md's runs use: fio, bindfs (the FUSE ceiling) and
# perf (the profiles and scripts/fuse-request-latency.sh).
set -eu
export DEBIAN_FRONTEND=noninteractive
BENCH=
[ "${1:-}" = --bench ] && BENCH="fio bindfs linux-perf"
apt-get update -qq
# shellcheck disable=SC2086 # BENCH is a list of packages
apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config ca-certificates curl \
    librocksdb-dev libclang-dev clang \
    fuse3 libfuse3-dev \
    git sqlite3 rsync tar python3 util-linux systemd iproute2 $BENCH >/dev/null
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        :
    else
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    fi
fi

#!/bin/sh
# Installs what building and testing Cairn needs on Debian 12 (run as root):
# RocksDB and clang (for the rocksdb crate's bindings), FUSE 3, the programs the mount tests
# run on a mount (git, sqlite3, rsync, tar), and a Rust toolchain if none.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config ca-certificates curl \
    librocksdb-dev libclang-dev clang \
    fuse3 libfuse3-dev \
    git sqlite3 rsync tar python3 util-linux >/dev/null
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        :
    else
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    fi
fi

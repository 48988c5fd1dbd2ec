#!/bin/sh
# The whole test suite: formatting, lints, then every unit, integration and system test
# (real RocksDB, real QUIC with TLS, real datanodes on loopback).
set -eu
cd "$(dirname "$0")/.."
. ./scripts/env.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo build --bin cairn
# A test process that aborts must die at once: one that serves FUSE mounts itself (and maps
# files from them) once hung for good while dumping its core, and the run with it.
ulimit -c 0
cargo test --workspace -- --test-threads=2
./scripts/smoke-dev.sh "$CARGO_TARGET_DIR/debug/cairn"
./scripts/failover.sh "$CARGO_TARGET_DIR/debug/cairn"
./scripts/partition.sh "$CARGO_TARGET_DIR/debug/cairn"

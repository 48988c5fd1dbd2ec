#!/bin/sh
# The whole test suite: formatting, lints, then every unit, integration and system test
# (real RocksDB, real QUIC with TLS, real datanodes on loopback).
set -eu
cd "$(dirname "$0")/.."
. ./scripts/env.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo build --bin cairn
cargo test --workspace -- --test-threads=2
./scripts/smoke-dev.sh "$CARGO_TARGET_DIR/debug/cairn"

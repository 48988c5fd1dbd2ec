#!/bin/sh
# Installs what Cairn needs, builds it, and runs a development cluster (a namenode and three
# datanodes, all data under ./cairn-dev). Ctrl-C stops it; running this again restarts it.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
. ./scripts/env.sh
cargo build --release --bin cairn
install -m 0755 "$CARGO_TARGET_DIR/release/cairn" /usr/local/bin/cairn
# mount(8) runs /sbin/mount.cairn for "cairn" lines in /etc/fstab.
ln -sf /usr/local/bin/cairn /sbin/mount.cairn
dev_dir="${CAIRN_DEV_DIR:-$PWD/cairn-dev}"
mountpoint="${CAIRN_MOUNT:-$dev_dir/mnt}"
mkdir -p "$mountpoint"
exec cairn dev --dir "$dev_dir" --mount "$mountpoint" "$@"

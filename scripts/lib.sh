# Shared by the end-to-end scripts: the tools they install, and fsx's configuration.

TOOLS="${CAIRN_TOOLS_DIR:-$HOME/.cache/cairn-tools}"

tool() { # NAME VERSION: the path of the tool, installed if missing
    if ! "$TOOLS/bin/$1" --version 2>/dev/null | grep -qF "$2"; then
        echo "--- installing $1 $2 in $TOOLS" >&2
        CARGO_TARGET_DIR="$TOOLS/target" cargo install --quiet --locked --version "$2" \
            --root "$TOOLS" "$1" >&2
    fi
    echo "$TOOLS/bin/$1"
}

fsx_config() { # FILE: every operation fsx knows, on files up to 8 MiB
    cat >"$1" <<'TOML'
flen = 8388608
[opsize]
max = 1048576
[weights]
close_open = 2
read = 10
write = 10
mapread = 5
mapwrite = 5
invalidate = 1
truncate = 3
fsync = 1
fdatasync = 1
posix_fallocate = 2
punch_hole = 1
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
TOML
}

group_configs() { # CAIRN DEV WORK: `cairn dev --namenodes 3` run once in DEV, for its files
    "$1" dev --dir "$2" --namenodes 3 --namenode 127.0.0.1:0 >"$3/dev.out" 2>"$3/dev.log" &
    dev_pid=$!
    i=0
    until grep -q "Ctrl-C stops the cluster" "$3/dev.out" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 600 ] || ! kill -0 "$dev_pid" 2>/dev/null; then
            kill -9 "$dev_pid" 2>/dev/null || true
            return 1
        fi
        sleep 0.1
    done
    kill -INT "$dev_pid"
    wait "$dev_pid"
}

clean_up_on_exit() { # however the script ends, a signal too: its `before_kill` if it has
    # one, the processes in $PIDS and $NN1-$NN3 killed, its `after_kill`, $WORK removed
    trap clean_up EXIT
    trap 'exit 1' INT TERM
}

clean_up() {
    if command -v before_kill >/dev/null; then before_kill; fi
    for p in $PIDS $NN1 $NN2 $NN3; do kill -9 "$p" 2>/dev/null || true; done
    if command -v after_kill >/dev/null; then after_kill; fi
    if [ -n "${KEEP_WORK:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}

fail() { # MESSAGE: says it, with the end of each log in $WORK, and stops the script
    echo "$(basename "$0" .sh): $*"
    for f in "$WORK"/*.log; do echo "--- $f"; tail -20 "$f"; done
    exit 1
}

member_config() { # I: the configuration file of namenode group member I in $DEV
    if [ "$1" = 1 ]; then echo "$DEV/namenode.toml"; else echo "$DEV/namenode-$1.toml"; fi
}

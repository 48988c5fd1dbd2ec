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

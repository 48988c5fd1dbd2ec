# Sourced by the scripts: where cargo is and where builds go. The target directory lives
# outside the work tree so that builds survive between clones on one machine.
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"

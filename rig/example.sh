# rig/example.sh — sourced by rig/run for `--example NAME`: builds the cargo
# example NAME (crates/*/examples/NAME.rs) statically, like the privmem
# binary, and prints the path of the binary on stdout.  The caller copies it
# into the guest (same absolute path) and runs it there.

example_build() {
    local name="$1" src pkg tdir out blog
    [[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || { log "--example needs a plain example name, got: $name"; return 2; }
    src="$(cd "$REPO_DIR" && ls crates/*/examples/"$name".rs 2>/dev/null | head -n1)"
    [[ -n "$src" ]] || { log "no example $name in crates/*/examples/"; return 2; }
    pkg="$(sed -n 's/^name = "\(.*\)"/\1/p' "$REPO_DIR/$(dirname "$(dirname "$src")")/Cargo.toml" | head -n1)"
    tdir="$REPO_DIR/target/rig"
    out="$tdir/x86_64-unknown-linux-gnu/release/examples/$name"
    blog="$CACHE_ROOT/example-$name-build.log"
    mkdir -p "$CACHE_ROOT"
    if ! (cd "$REPO_DIR" && CARGO_TARGET_DIR="$tdir" RUSTFLAGS="-C target-feature=+crt-static" \
            cargo build --release --target x86_64-unknown-linux-gnu -p "$pkg" --example "$name") >"$blog" 2>&1; then
        log "building example $name ($pkg) failed (log: $blog); last lines:"
        tail -n 15 "$blog" >&2
        return 1
    fi
    [[ -x "$out" ]] || { log "cargo succeeded but $out is missing"; return 1; }
    printf '%s\n' "$out"
}

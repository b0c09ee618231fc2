#!/usr/bin/env bash
# Builds phygate's .deb for a store box, on an ordinary x86_64 Debian/Ubuntu machine with rustup
# (no Docker, no cross C toolchain: zig, from PyPI, is the C compiler and linker for every target):
#
#   scripts/build-deb.sh arm64   # 64-bit Raspberry Pi OS (Pi 3/4/5, Zero 2), i.MX8
#   scripts/build-deb.sh armhf   # 32-bit Raspberry Pi OS on ARMv7 (Pi 2/3/4), i.MX6/7
#   scripts/build-deb.sh amd64   # x86_64 store PCs
#
# The binary is built with cargo-zigbuild against glibc 2.31 (Debian 11 and Raspberry Pi OS
# Bullseye, the oldest still in the field; Bookworm has 2.36, Trixie 2.41), so one package
# installs on all of them. The bundled SQLite and ring's C and assembly are
# compiled by `zig cc` for the same target. Then crates/gen renders the man pages and shell
# completions (on this machine, from the same command-line definition), and cargo-deb packages
# everything ([package.metadata.deb] in Cargo.toml). Missing tools are installed first: the
# rustup target, zig (PyPI `ziglang`, into ~/.cache/phygate-build unless `zig` or
# `python3 -m ziglang` already works), cargo-zigbuild and cargo-deb (crates.io).
#
# Prints the path of the .deb last. scripts/check-arm.sh runs the ARM binaries under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest glibc the binary may need: the package's `libc6 (>= 2.31)` in Cargo.toml says the
# same, so change both together.
glibc=2.31
# Pinned: the versions this script was last checked with.
zigbuild_version=0.24.1
deb_version=3.8.0
ziglang_version=0.17.1

case "${1:-}" in
  arm64) target=aarch64-unknown-linux-gnu ;;
  armhf) target=armv7-unknown-linux-gnueabihf ;;
  amd64) target=x86_64-unknown-linux-gnu ;;
  *) echo "usage: $0 arm64|armhf|amd64" >&2; exit 2 ;;
esac

step() { printf '\n== %s\n' "$*" >&2; }

step "tools"
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v zig >/dev/null 2>&1 && ! python3 -m ziglang version >/dev/null 2>&1; then
  # A private copy: pip's --target needs no virtualenv and leaves the system Python alone.
  zigdir="${XDG_CACHE_HOME:-$HOME/.cache}/phygate-build/ziglang-$ziglang_version"
  if ! PYTHONPATH="$zigdir" python3 -m ziglang version >/dev/null 2>&1; then
    python3 -m pip --version >/dev/null 2>&1 || {
      echo "$0: needs python3 with pip for zig (apt-get install python3-pip)" >&2; exit 1; }
    python3 -m pip install --quiet --target "$zigdir" "ziglang==$ziglang_version"
  fi
  # cargo-zigbuild runs `python3 -m ziglang` when no `zig` is on PATH.
  export PYTHONPATH="$zigdir${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "zig $(command -v zig >/dev/null 2>&1 && zig version || python3 -m ziglang version)" >&2
cargo-zigbuild --version >/dev/null 2>&1 ||
  cargo install --locked "cargo-zigbuild@$zigbuild_version"
cargo-deb --version >/dev/null 2>&1 || cargo install --locked "cargo-deb@$deb_version"

step "binary: $target, glibc $glibc"
# The `.2.31` suffix pins the glibc zig links against; the output still goes to
# target/$target/release/, where cargo-deb looks for it. --no-default-features: the store's
# binary, without the simulators and the demo (feature `sim`).
cargo zigbuild --locked --release --no-default-features --target "$target.$glibc"

step "man pages and completions"
rm -rf target/gen
cargo run --locked --quiet -p phygate-gen -- target/gen >/dev/null

bin="target/$target/release/phygate"
needed=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)
if [ "$(printf '%s\n' "${needed#GLIBC_}" "$glibc" | sort -V | tail -1)" != "$glibc" ]; then
  echo "$0: $bin needs $needed, above the package's libc6 (>= $glibc)" >&2
  exit 1
fi
echo "$bin: $(stat -c %s "$bin") bytes, needs $needed" >&2

step "package"
# --no-build: package what was just built. cargo-deb maps the target to the Debian
# architecture and reads the `target/release/phygate` asset as target/$target/release/phygate.
cargo deb --locked --no-build --target "$target" --compress-type xz

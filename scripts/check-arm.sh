#!/usr/bin/env bash
# Runs the ARM binaries that scripts/build-deb.sh built on this x86_64 machine, under qemu-user,
# and checks what a store box needs of them before a technician copies a .deb to it:
#
#   scripts/check-arm.sh            # both: arm64 and armhf
#   scripts/check-arm.sh arm64      # or one
#
# For each: the highest glibc symbol version it needs is at most 2.31 (Raspberry Pi OS
# Bullseye), then under qemu `--version`, `check-config` on hw/phygate.example.toml,
# `token keygen` / `token mint` (with its QR PNG) / `token verify` (verdict `valid`, and
# `wrong_store` for another store), and, when mosquitto is installed and the binary has the
# demo (a default-features build; the package's has not), a short `demo` run, which writes and
# reads the bundled SQLite outbox and publishes over MQTT.
#
# Needs (installed when missing, as root): qemu-user and the target's C library as a sysroot
# for qemu's -L (libc6-arm64-cross: /usr/aarch64-linux-gnu, libc6-armhf-cross:
# /usr/arm-linux-gnueabihf); binutils for objdump.
set -euo pipefail
cd "$(dirname "$0")/.."

# The package's `libc6 (>= 2.31)` (Cargo.toml), which scripts/build-deb.sh builds against.
max_glibc=2.31
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(arm64 armhf)

failures=0
fail() { echo "FAIL [$arch]: $*" >&2; failures=$((failures + 1)); }
ok() { echo "ok   [$arch]: $*"; }

need_packages() {
  local missing=()
  command -v objdump >/dev/null 2>&1 || missing+=(binutils)
  local p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ]; then
    echo "$0: missing packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
}

for arch in "${archs[@]}"; do
  case "$arch" in
    arm64) target=aarch64-unknown-linux-gnu; qemu=qemu-aarch64; sysroot=/usr/aarch64-linux-gnu; pkg=libc6-arm64-cross ;;
    armhf) target=armv7-unknown-linux-gnueabihf; qemu=qemu-arm; sysroot=/usr/arm-linux-gnueabihf; pkg=libc6-armhf-cross ;;
    *) echo "usage: $0 [arm64|armhf]..." >&2; exit 2 ;;
  esac
  bin="$PWD/target/$target/release/phygate"
  if [ ! -x "$bin" ]; then
    fail "$bin missing: run scripts/build-deb.sh $arch first"
    continue
  fi
  need_packages qemu-user "$pkg"
  echo "== $arch: ${bin#"$PWD"/} ($(stat -c %s "$bin") bytes)"

  # Portability: every versioned glibc symbol at most $max_glibc.
  needed=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)
  if [ "$(printf '%s\n' "${needed#GLIBC_}" "$max_glibc" | sort -V | tail -1)" = "$max_glibc" ]; then
    ok "needs $needed (<= GLIBC_$max_glibc)"
  else
    fail "needs $needed, above GLIBC_$max_glibc: it will not start on older Raspberry Pi OS"
  fi

  run() { "$qemu" -L "$sysroot" "$bin" "$@"; }
  work=$(mktemp -d)

  if out=$(run --version) && [[ "$out" == phygate\ * ]]; then ok "--version: $out"; else fail "--version: $out"; fi

  # The example config names the store's certificate files; point them at placeholders.
  touch "$work/ca.pem" "$work/client.pem" "$work/client.key"
  sed "s|/etc/phygate/|$work/|g" hw/phygate.example.toml > "$work/phygate.toml"
  if out=$(run check-config "$work/phygate.toml" 2>&1) && grep -q ' is valid' <<<"$out"; then
    ok "check-config hw/phygate.example.toml: valid, $(grep -c '^device ' <<<"$out") devices"
  else
    fail "check-config: $out"
  fi

  if run token keygen --kid k1 --dir "$work" >/dev/null && [ -s "$work/k1.key" ] && [ -s "$work/jwks.json" ]; then
    ok "token keygen"
  else
    fail "token keygen"
  fi
  token=$(run token mint --key "$work/k1.key" --kid k1 --user u1 --tenant acme --store paris-01 \
    --purpose entry --png "$work/token.png" 2>/dev/null) || token=""
  if [ -n "$token" ] && [ "$(head -c 8 "$work/token.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then
    ok "token mint (+ QR PNG, $(stat -c %s "$work/token.png") bytes)"
  else
    fail "token mint: '$token'"
  fi
  # The verdict is the first line (not `| head -1`: phygate would meet a closed pipe).
  out=$(run token verify "$token" --jwks "$work/jwks.json" --tenant acme --store paris-01) || out=""
  verdict=${out%%$'\n'*}
  if [ "$verdict" = valid ]; then ok "token verify: $verdict"; else fail "token verify: '$verdict', expected valid"; fi
  out=$(run token verify "$token" --jwks "$work/jwks.json" --tenant acme --store lyon-02) || out=""
  verdict=${out%%$'\n'*}
  if [ "$verdict" = wrong_store ]; then ok "token verify, other store: $verdict"; else fail "token verify, other store: '$verdict', expected wrong_store"; fi

  # The SQLite outbox and MQTT: the demo, against the host's mosquitto (a separate process).
  # Its simulated serial devices report `down ... Function not implemented` under qemu-user,
  # which lacks some terminal ioctls; their status events still go through the outbox to HQ.
  # The package's binary is built without the demo (feature `sim`, scripts/build-deb.sh); a
  # binary built with default features still gets this check.
  if ! run demo --help >/dev/null 2>&1; then
    echo "skip [$arch]: demo (the store build has no demo: feature sim is off)"
  elif command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    (cd "$work" && PATH="$PATH:/usr/sbin" run demo --seconds "${DEMO_SECONDS:-12}" </dev/null >demo.out 2>demo.err) || true
    events=$(grep -c '^HQ <- ' "$work/demo.out" || true)
    if [ "$events" -gt 0 ]; then ok "demo: HQ received $events events"; else fail "demo: no event reached HQ: $(tail -5 "$work/demo.err")"; fi
  else
    echo "skip [$arch]: demo (no mosquitto; apt-get install mosquitto)"
  fi
  rm -rf "$work"
done

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all checks passed"

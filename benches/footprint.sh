#!/usr/bin/env bash
# Footprint of an idle gateway (README "Footprint"): the release binary's size, and the resident
# memory and CPU time of `phygate run` with one simulated scanner (a pty, sending nothing), a
# local mosquitto and the status page on, over IDLE_S seconds (default 60).
# Usage: cargo build --release && benches/footprint.sh [path/to/phygate]
set -euo pipefail
BIN=${1:-target/release/phygate}
IDLE_S=${IDLE_S:-60}
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
D=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$D"' EXIT

printf 'listener 18883 127.0.0.1\nallow_anonymous true\n' > "$D/mosquitto.conf"
"$MOSQUITTO" -c "$D/mosquitto.conf" >/dev/null 2>&1 & pids+=($!)
# The scanner simulator reads codes from a fifo that nobody writes: an idle scanner.
mkfifo "$D/codes"
exec 3<>"$D/codes"
"$BIN" simulate scanner --link "$D/scanner0" --stdin <"$D/codes" >/dev/null 2>&1 & pids+=($!)
sleep 1
cat > "$D/phygate.toml" <<EOC
tenant = "acme"
store = "s1"
[[station]]
id = "entrance"
role = "gate"
[[device]]
kind = "scanner"
id = "scanner-1"
station = "entrance"
port = "$D/scanner0"
[outbox]
path = "$D/phygate.db"
[mqtt]
host = "127.0.0.1"
port = 18883
[status]
listen = "127.0.0.1:18080"
EOC
"$BIN" run --config "$D/phygate.toml" 2>"$D/phygate.log" & PID=$!; pids+=($PID)
sleep 5
# The page side serves once. Exit 1 (degraded, e.g. an unsynchronised clock here) still served.
"$BIN" status --url http://127.0.0.1:18080 >/dev/null || [ $? -eq 1 ]
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }          # utime + stime, in clock ticks
t0=$(cpu); sleep "$IDLE_S"; t1=$(cpu)
hz=$(getconf CLK_TCK)
echo "release binary: $(stat -c %s "$BIN") bytes"
grep -E '^(VmRSS|VmHWM)' "/proc/$PID/status"
echo "threads: $(ls "/proc/$PID/task" | wc -l)"
awk -v d="$((t1 - t0))" -v hz="$hz" -v s="$IDLE_S" \
  'BEGIN { printf "CPU over %d s: %d ticks = %.0f ms = %.3f%% of one core\n", s, d, d * 1000 / hz, d * 100 / hz / s }'

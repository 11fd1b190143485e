#!/usr/bin/env bash
# What large messages cost Tern in memory: `tern serve` relays to
# `tern bench sink`, and `tern bench` sends MESSAGES messages of SIZE
# octets over CONNS connections at once. Prints the rate and the server's
# peak RSS (VmHWM) and CPU time per message. With BASE_BIN set, runs that binary the same way,
# right after, and prints both and their ratio (one run, same machine).
#
#   bench/large-messages.sh                       # 60 × 20 MB over 20 connections
#   BASE_BIN=/tmp/tern-old SIZE=5000000 bench/large-messages.sh
#
# A session holds at most about 1 MiB of a message (the rest is in a file
# as it arrives), so the peak should not grow with SIZE × CONNS.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${TERN_BIN:-target/release/tern}
MESSAGES=${MESSAGES:-60}
CONNS=${CONNS:-20}
SIZE=${SIZE:-20000000}
[ -x "$BIN" ] || cargo build --release --quiet

# shellcheck source=bench/lib.sh
. bench/lib.sh
with_workdir

# run BIN TAG: prints "accept_msgs_per_s peak_rss_kib peak_anon_kib cpu_ms_per_msg"
run() {
    local bin=$1 dir="$work/run-$2" port sink_port
    mkdir -p "$dir"
    port=$(free_port)
    sink_port=$(free_port)
    "$bin" bench sink --listen "127.0.0.1:$sink_port" --expect "$MESSAGES" --quiet >"$dir/sink" &
    local sink=$!
    pids+=("$sink")
    wait_port "$sink_port"
    cat >"$dir/tern.toml" <<TOML
hostname = "tern.bench.test"
data_dir = "$dir/data"
[[listener]]
address = "127.0.0.1:$port"
mode = "smtp"
allow_plaintext_auth = true
[domains]
local = ["bench.test"]
[api]
enabled = false
[delivery]
relay = "127.0.0.1:$sink_port"
tls = "none"
relay_verify_certificate = false
TOML
    echo pw | "$bin" --config "$dir/tern.toml" user add bench >/dev/null
    TERN_LOG=error "$bin" --config "$dir/tern.toml" serve &
    local server=$!
    pids+=("$server")
    wait_port "$port"
    # Peak RssAnon, sampled until the server exits.
    (peak=0; while kill -0 "$server" 2>/dev/null; do
        a=$(awk '/^RssAnon:/ {print $2}' "/proc/$server/status" 2>/dev/null || echo 0)
        [ "${a:-0}" -gt "$peak" ] && { peak=$a; echo "$peak" >"$dir/anon"; }
        sleep 0.1
    done) &
    "$bin" bench --server "127.0.0.1:$port" --auth bench:pw --messages "$MESSAGES" \
        --connections "$CONNS" --size "$SIZE" --from bench@bench.test --to sink@remote.test \
        --quiet >"$dir/bench"
    wait_sink "$sink" "$MESSAGES"
    local accept rss cpu
    accept=$(awk '/^accepted/ {print $3}' "$dir/bench")
    rss=$(awk '/^VmHWM:/ {print $2}' "/proc/$server/status")
    # User + system CPU of the server (accepting and relaying), per message.
    cpu=$(awk -v hz="$(getconf CLK_TCK)" -v n="$MESSAGES" \
        '{printf "%.2f", ($14 + $15) * 1000 / hz / n}' "/proc/$server/stat")
    kill "$server" "$sink" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$dir/data"
    echo "$accept $rss $(cat "$dir/anon") $cpu"
}

echo "$MESSAGES messages of $SIZE B over $CONNS connections, relayed to a sink" >&2
run "$BIN" new >"$work/new"
read -r a1 r1 n1 c1 <"$work/new"
printf '| binary | accept msgs/s | peak RSS MiB | peak anonymous MiB | CPU ms/msg |\n|---|---|---|---|---|\n'
printf '| %s | %s | %s | %s | %s |\n' "$BIN" "$a1" "$((r1 / 1024))" "$((n1 / 1024))" "$c1"
if [ -n "${BASE_BIN:-}" ]; then
    run "$BASE_BIN" base >"$work/base"
    read -r a2 r2 n2 c2 <"$work/base"
    printf '| %s | %s | %s | %s | %s |\n' "$BASE_BIN" "$a2" "$((r2 / 1024))" "$((n2 / 1024))" "$c2"
    python3 -c "print(f'| ratio | {$a1/$a2:.2f} | {$r1/$r2:.2f} | {$n1/$n2:.2f} | {$c1/$c2:.2f} |')"
fi

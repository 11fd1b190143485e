#!/usr/bin/env bash
# One Tern node against two sharing one PostgreSQL database, in one run.
# Each node accepts authenticated mail on loopback and relays everything to
# `tern bench sink`; `tern bench` spreads its connections over the nodes.
# Prints accept and end-to-end rates for 1 and 2 nodes, and their ratio.
#
#   bench/scaling.sh                  # 20000 messages, 50 connections, 4 KiB
#   MESSAGES=5000 CONNS=20 bench/scaling.sh
#
# Needs a PostgreSQL the role in $PGURL can create databases on
# (`.ci/run` sets one up: postgres://tern:tern@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${TERN_BIN:-target/release/tern}
PGURL=${PGURL:-postgres://tern:tern@127.0.0.1:5432}
MESSAGES=${MESSAGES:-20000}
CONNS=${CONNS:-50}
SIZE=${SIZE:-4096}
[ -x "$BIN" ] || cargo build --release --quiet

# shellcheck source=bench/lib.sh
. bench/lib.sh
with_workdir

# run N: prints "accept_rate e2e_rate"
run() {
    local nodes=$1 db="tern_scaling_$$_$1"
    psql -q "$PGURL/tern" -c "create database $db" >/dev/null
    local sink_port; sink_port=$(free_port)
    "$BIN" bench sink --listen "127.0.0.1:$sink_port" --expect "$MESSAGES" --quiet >"$work/sink.$nodes" &
    local sink=$!
    pids+=("$sink")
    wait_port "$sink_port"
    local servers=()
    for i in $(seq 1 "$nodes"); do
        local dir="$work/n$nodes-$i" port; port=$(free_port)
        mkdir -p "$dir"
        cat >"$dir/tern.toml" <<TOML
hostname = "node$i.bench.test"
data_dir = "$dir/data"
[[listener]]
address = "127.0.0.1:$port"
mode = "smtp"
allow_plaintext_auth = true
[domains]
local = ["bench.test"]
[store]
backend = "postgres"
url = "$PGURL/$db"
node_id = "node-$i"
[api]
enabled = false
[delivery]
relay = "127.0.0.1:$sink_port"
tls = "none"
relay_verify_certificate = false
TOML
        if [ "$i" = 1 ]; then
            echo pw | "$BIN" --config "$dir/tern.toml" user add bench >/dev/null
        fi
        TERN_LOG=error "$BIN" --config "$dir/tern.toml" serve &
        pids+=("$!")
        wait_port "$port"
        servers+=(--server "127.0.0.1:$port")
    done
    local start end
    start=$(date +%s.%N)
    "$BIN" bench "${servers[@]}" --auth bench:pw --messages "$MESSAGES" --connections "$CONNS" \
        --size "$SIZE" --from bench@bench.test --to sink@remote.test --quiet >"$work/bench.$nodes"
    wait_sink "$sink" "$MESSAGES"
    end=$(date +%s.%N)
    local accept e2e
    accept=$(awk '/^accepted/ {print $3}' "$work/bench.$nodes")
    e2e=$(python3 -c "print(round($MESSAGES / ($end - $start)))")
    echo "$accept $e2e"
    sed 's/^/    /' "$work/bench.$nodes" >&2
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
    psql -q "$PGURL/tern" -c "drop database $db with (force)" >/dev/null
}

echo "Tern on PostgreSQL: $MESSAGES messages of $SIZE B over $CONNS connections, relayed to a sink" >&2
run 1 >"$work/r1"
run 2 >"$work/r2"
read -r a1 e1 <"$work/r1"
read -r a2 e2 <"$work/r2"
printf '| nodes | accept msgs/s | end-to-end msgs/s |\n|---|---|---|\n'
printf '| 1 | %s | %s |\n| 2 | %s | %s |\n' "$a1" "$e1" "$a2" "$e2"
python3 -c "print(f'| ratio 2/1 | {$a2/$a1:.2f} | {$e2/$e1:.2f} |')"

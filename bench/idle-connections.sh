#!/usr/bin/env bash
# What idle connections cost Tern: starts `tern serve` with its defaults
# (plus limits raised to admit the connections), reads its memory when
# idle, then has `tern bench idle` open CONNS connections that each say
# EHLO and wait, and reads the memory again while they are held.
#
#   bench/idle-connections.sh              # 10000 connections, plain SMTP
#   CONNS=2000 TLS=starttls bench/idle-connections.sh
#
# Prints the server's RSS idle, with the connections held (and per
# connection), and after they closed. The targets: an idle server under
# 30 MB, 10,000 idle connections under 300 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${TERN_BIN:-target/release/tern}
CONNS=${CONNS:-10000}
TLS=${TLS:-none}
HOLD=${HOLD:-5}
[ -x "$BIN" ] || cargo build --release --quiet

# The server and the client each need a descriptor per connection.
need=$((CONNS + 200))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$need" ]; then
    echo "the open-files hard limit ($(ulimit -Hn)) is below $need; raise it (as root: ulimit -Hn $need)" >&2
    exit 1
fi
ulimit -n "$need"

# shellcheck source=bench/lib.sh
. bench/lib.sh
with_workdir

port=$(free_port)
# TLS uses the self-signed certificate Tern makes on its first start.
mode=smtp
[ "$TLS" = implicit ] && mode=smtps
cat >"$work/tern.toml" <<TOML
hostname = "tern.bench.test"
data_dir = "$work/data"

[[listener]]
address = "127.0.0.1:$port"
mode = "$mode"

[limits]
max_connections = $((CONNS + 100))
max_connections_per_ip = $((CONNS + 100))

[api]
enabled = false
TOML
"$BIN" --config "$work/tern.toml" serve >"$work/log" 2>&1 &
pid=$!
pids+=("$pid")
wait_port "$port"
sleep 2
echo "Tern $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $CONNS connections, TLS $TLS, held ${HOLD}s"
"$BIN" bench idle --server "127.0.0.1:$port" --connections "$CONNS" --tls "$TLS" \
    --hold "$HOLD" --pid "$pid"

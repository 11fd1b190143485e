# Shared by the scripts in bench/: source it after `cd` to the repository.

# free_port: a TCP port free on 127.0.0.1 right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: waits (20 s at most) until something listens on
# 127.0.0.1:PORT.
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    return 1
}

# wait_sink PID COUNT: waits (10 minutes at most) for `tern bench sink
# --expect COUNT` with pid PID to exit, which it does once it has every
# message; fails when it never does.
wait_sink() {
    for _ in $(seq 1 6000); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "the sink never received all $2 messages" >&2
    return 1
}

# with_workdir: sets $work to a new temporary directory and $pids to an
# empty list; on exit, kills every process in $pids and removes $work.
with_workdir() {
    work=$(mktemp -d)
    pids=()
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

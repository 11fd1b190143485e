#!/usr/bin/env bash
# Tern against Postfix on this machine, same loads, one run.
#
# Both servers accept mail on loopback and relay everything to the same
# kind of counting sink (`tern bench sink`, restarted for every run):
#
#   load generator ──SMTP──> Postfix or Tern ──SMTP──> sink
#
# Postfix runs as a private instance under a temporary directory (its own
# config, queue and data directories; the system instance in /etc/postfix
# is neither read nor touched), with Debian's master.cf and the shipped
# defaults (fsync on, delivery concurrency as shipped), relayhost = the
# sink. Tern runs with its defaults and `[delivery] relay` = the sink.
# Each run starts a fresh server and a fresh sink, so queues start empty
# and the peak memory is the run's own.
#
# No client authenticates (Postfix relays for mynetworks; Tern forwards
# the alias relay@bench.test to the sink address), except in one extra
# Tern-only run per load that uses AUTH PLAIN, as Tern's users would.
#
# Loads, in this order: 4 KiB x 20 sessions, 4 KiB x 100 sessions,
# 100 KiB x 20 sessions, 4 KiB x 1 session; for each, Postfix then Tern
# with `tern bench`, Postfix then Tern with Postfix's `smtp-source`, and
# Tern with `tern bench --auth`. Last, the smallest number of sessions at
# which Tern accepts about half its best rate is searched for, and both
# servers are measured there, for the p99 latency at half load.
#
# Measured per run: the accept rate (tern bench's figure; for smtp-source,
# which prints none, messages / its run time), the end-to-end rate
# (messages / time from starting the load until the sink has them all),
# tern bench's p99 latency from MAIL to the final 250, the server's CPU
# time per message (user and system time of all its processes from the
# start of the load until the sink has everything, divided by the
# messages: on a shared machine, the figure that other work disturbs
# least), and the server's peak memory: for Postfix the sum over the
# master and all its children, sampled every 250 ms, as RSS (which counts
# shared pages once per process) and as PSS (which divides them among the
# processes); for Tern the process's VmHWM, and its sampled PSS.
#
#   bench/compare-postfix.sh                 # MESSAGES=20000
#   QUICK=1 bench/compare-postfix.sh         # MESSAGES=2000, a few minutes
#   MESSAGES=5000 bench/compare-postfix.sh
#
# MESSAGES is the count for the 4 KiB loads with 20 and 100 sessions; the
# 100 KiB load sends MESSAGES/4 and the one-session load MESSAGES/10.
# Other settings: TERN_BIN (skip the build and use this binary), WORKDIR
# (where the temporary directory goes, default /tmp: put it on the disk
# you want to measure), LOOPFS=SIZE (e.g. LOOPFS=4G: put the queues on a
# fresh ext4 file system with a journal, made in a file of that size under
# WORKDIR and loop-mounted for the run), TIMEOUT (seconds to wait for the
# sink, 600), TERN_LOG (Tern's log filter; default: Tern's own default, as
# shipped), KEEP=1 (keep the raw outputs; not with LOOPFS).
#
# Needs root (Postfix's master runs as root and drops privileges), python3,
# and Debian's postfix package, which is installed when missing. Prints
# progress and each run's raw output on stderr, and one markdown table on
# stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${QUICK:-0}" = 1 ]; then
    MESSAGES=${MESSAGES:-2000}
else
    MESSAGES=${MESSAGES:-20000}
fi
TIMEOUT=${TIMEOUT:-600}
WORKDIR=${WORKDIR:-/tmp}

if [ "$(id -u)" != 0 ]; then
    echo "run this as root: Postfix's master process must start as root" >&2
    exit 1
fi
if ! command -v postfix >/dev/null || ! command -v smtp-source >/dev/null; then
    echo "installing postfix" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >&2
fi
PF_DAEMON_DIR=$(postconf -dh daemon_directory)
PF_META_DIR=$(postconf -dh meta_directory)
PF_SHLIB_DIR=$(postconf -dh shlib_directory)
PF_VERSION=$(postconf -dh mail_version)
if [ -f /usr/share/postfix/master.cf.dist ]; then
    PF_MASTER_CF=/usr/share/postfix/master.cf.dist
else
    PF_MASTER_CF=$PF_META_DIR/master.cf
fi

if [ -n "${TERN_BIN:-}" ]; then
    BIN=$TERN_BIN
else
    cargo build --release --quiet
    BIN=target/release/tern
fi
BIN=$(realpath "$BIN")

pids=()
pf_dirs=()
work=
fs_img=
fs_mnt=
cleanup() {
    local p d
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for d in "${pf_dirs[@]}"; do pf_stop "$d"; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ] && [ -z "$fs_mnt" ]; then
        echo "kept $work" >&2
    elif [ -n "$work" ]; then
        rm -rf "$work"
    fi
    if [ -n "$fs_mnt" ]; then
        umount "$fs_mnt" 2>/dev/null || sleep 1
        mountpoint -q "$fs_mnt" && umount "$fs_mnt"
        rmdir "$fs_mnt"
    fi
    [ -z "$fs_img" ] || rm -f "$fs_img"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base=$WORKDIR
if [ -n "${LOOPFS:-}" ]; then
    # A fresh ext4 file system with a journal (mkfs's defaults), in a file
    # under WORKDIR, mounted with discard so that deleted queue files give
    # their space back to WORKDIR's disk.
    fs_img=$(mktemp "$WORKDIR/tern-vs-postfix.XXXXXX.ext4")
    truncate -s "$LOOPFS" "$fs_img"
    mkfs.ext4 -q -F "$fs_img"
    fs_mnt=$(mktemp -d "$WORKDIR/tern-vs-postfix.XXXXXX.mnt")
    mount -o loop,discard "$fs_img" "$fs_mnt"
    base=$fs_mnt
fi
work=$(mktemp -d "$base/tern-vs-postfix.XXXXXX")
# mktemp makes the directory 0700; Postfix's daemons (user postfix) must
# be able to reach their queue and data directories below it.
chmod 755 "$work"

pf_stop() {
    local dir=$1 pid
    pid=$(tr -dc 0-9 <"$dir/spool/pid/master.pid" 2>/dev/null || true)
    postfix -c "$dir/etc" stop >/dev/null 2>&1 || true
    if [ -n "$pid" ]; then
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

# shellcheck source=bench/lib.sh
. bench/lib.sh

# Samples the memory of a process and all its descendants every 250 ms
# and keeps the peak of their summed VmRSS (and of their summed Pss) in
# the file $2, as "rss_kib pss_kib".
sampler() {
    python3 - "$1" "$2" <<'PY' &
import os, signal, sys, time
root, out = int(sys.argv[1]), sys.argv[2]
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
def tree():
    kids = {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open(f'/proc/{d}/stat') as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(')') + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    todo, seen = [root], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(kids.get(p, []))
    return seen
def field(path, name):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
peak_rss = peak_pss = 0
while not stop:
    procs = tree()
    rss = sum(field(f'/proc/{p}/status', 'VmRSS:') for p in procs)
    pss = sum(field(f'/proc/{p}/smaps_rollup', 'Pss:') for p in procs)
    if rss > peak_rss or pss > peak_pss:
        peak_rss, peak_pss = max(rss, peak_rss), max(pss, peak_pss)
        with open(out, 'w') as f:
            f.write(f'{peak_rss} {peak_pss}\n')
    time.sleep(0.25)
PY
    pids+=("$!")
    SAMPLER=$!
    for _ in $(seq 1 50); do
        [ -s "$2" ] && break
        sleep 0.05
    done
}

# cpu_ms PID: CPU time (user and system, in ms) used so far by a process
# and its descendants, with the children they have already reaped (Postfix's
# master reaps its daemons when they exit, so theirs is counted too).
cpu_ms() {
    python3 - "$1" <<'PY'
import os, sys
root, hz = int(sys.argv[1]), os.sysconf('SC_CLK_TCK')
kids, stat = {}, {}
for d in os.listdir('/proc'):
    if not d.isdigit():
        continue
    try:
        with open(f'/proc/{d}/stat') as f:
            s = f.read()
    except OSError:
        continue
    fields = s[s.rindex(')') + 2:].split()
    stat[int(d)] = fields
    kids.setdefault(int(fields[1]), []).append(int(d))
total, todo = 0, [root]
while todo:
    p = todo.pop()
    if p in stat:
        # utime, stime, cutime, cstime
        total += sum(int(x) for x in stat[p][11:15])
    todo.extend(kids.get(p, []))
print(total * 1000 // hz)
PY
}

# pf_start DIR PORT SINK_PORT: a private Postfix instance in DIR, listening
# on 127.0.0.1:PORT and relaying everything to 127.0.0.1:SINK_PORT. Sets
# PF_MASTER to the master's pid.
pf_start() {
    local dir=$1 port=$2 sink_port=$3
    mkdir -p "$dir/etc" "$dir/spool" "$dir/data"
    # master takes its lock in data_directory as user postfix.
    chown postfix "$dir/data"
    # Debian's master.cf without its port-25 listener, plus ours; nothing
    # chrooted (a chroot would need copies of /etc files in the queue
    # directory, which Debian's init script makes only for its own
    # instance).
    awk '!($1 == "smtp" && $2 == "inet")' "$PF_MASTER_CF" >"$dir/etc/master.cf"
    grep -q '^postlog' "$dir/etc/master.cf" ||
        echo 'postlog   unix-dgram n  -       n       -       1       postlogd' >>"$dir/etc/master.cf"
    echo "127.0.0.1:$port inet n - n - - smtpd" >>"$dir/etc/master.cf"
    postconf -c "$dir/etc" -F '*/*/chroot=n'
    cat >"$dir/etc/main.cf" <<CF
compatibility_level = 3.6
# Where this instance lives; the programs are the system's.
queue_directory = $dir/spool
data_directory = $dir/data
daemon_directory = $PF_DAEMON_DIR
meta_directory = $PF_META_DIR
shlib_directory = $PF_SHLIB_DIR
mail_owner = postfix
setgid_group = postdrop
# Log to a file of its own (needs the postlog service in master.cf):
# without a syslog daemon, a private instance's log would be lost.
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
# No local delivery: everything goes to the relay host.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
relayhost = [127.0.0.1]:$sink_port
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
smtp_tls_security_level = none
biff = no
CF
    if ! postfix -c "$dir/etc" check >"$dir/check.out" 2>&1; then
        echo "postfix check failed:" >&2
        cat "$dir/check.out" "$dir/maillog" >&2 2>/dev/null || true
        exit 1
    fi
    pf_dirs+=("$dir")
    if ! postfix -c "$dir/etc" start >/dev/null 2>&1; then
        echo "postfix did not start; its log:" >&2
        cat "$dir/maillog" >&2 2>/dev/null || true
        exit 1
    fi
    wait_port "$port"
    PF_MASTER=$(tr -dc 0-9 <"$dir/spool/pid/master.pid")
}

# tern_start DIR PORT SINK_PORT: Tern listening on 127.0.0.1:PORT and
# relaying to 127.0.0.1:SINK_PORT, with user bench (password pw), and the
# alias relay@bench.test for sink@remote.test (for clients without AUTH).
# Sets TERN_PID.
tern_start() {
    local dir=$1 port=$2 sink_port=$3
    mkdir -p "$dir"
    cat >"$dir/tern.toml" <<TOML
hostname = "tern.bench.test"
data_dir = "$dir/data"

[[listener]]
address = "127.0.0.1:$port"
mode = "smtp"
allow_plaintext_auth = true

[domains]
local = ["bench.test"]

# Postfix relays for clients in mynetworks without AUTH; the load
# generators send to this alias, which Tern forwards through the relay.
# (Runs labelled "auth" authenticate as bench and send to the sink address
# directly, as authenticated users may.)
[aliases]
"relay@bench.test" = ["sink@remote.test"]

# Postfix checks nothing on mail from mynetworks; neither does Tern here.
[inbound]
checks = false

# Postfix exempts mynetworks from its per-client connection limit.
[limits]
max_connections_per_ip = 1000

# Postfix serves no HTTP; the API's port may be taken on a shared machine.
[api]
enabled = false

[delivery]
relay = "127.0.0.1:$sink_port"
tls = "none"
relay_verify_certificate = false
TOML
    echo pw | "$BIN" --config "$dir/tern.toml" user add bench >/dev/null
    if [ -n "${TERN_LOG:-}" ]; then
        TERN_LOG=$TERN_LOG "$BIN" --config "$dir/tern.toml" serve >"$dir/log" 2>&1 &
    else
        "$BIN" --config "$dir/tern.toml" serve >"$dir/log" 2>&1 &
    fi
    TERN_PID=$!
    pids+=("$TERN_PID")
    wait_port "$port"
}

# run SERVER TOOL SIZE SESSIONS COUNT [LABEL]
# Appends "server label size sessions count accept e2e p99 cpu_ms rss_kib pss_kib"
# to $work/results ("-" for what was not measured); LABEL defaults to TOOL.
run() {
    local server=$1 tool=$2 size=$3 sessions=$4 count=$5 label=${6:-$2}
    local tag="$server-$tool-$size-$sessions-$RANDOM" sink_port port sink
    sink_port=$(free_port)
    port=$(free_port)
    "$BIN" bench sink --listen "127.0.0.1:$sink_port" --expect "$count" --quiet >"$work/$tag.sink" &
    sink=$!
    pids+=("$sink")
    wait_port "$sink_port"
    # Postfix relays for mynetworks; Tern relays for users who
    # authenticate, and forwards relay@bench.test to the same address.
    local to=sink@remote.test auth=()
    if [ "$server" = postfix ]; then
        pf_start "$work/$tag" "$port" "$sink_port"
        sampler "$PF_MASTER" "$work/$tag.mem"
    else
        tern_start "$work/$tag" "$port" "$sink_port"
        sampler "$TERN_PID" "$work/$tag.mem"
        if [ "$label" = auth ]; then auth=(--auth bench:pw); else to=relay@bench.test; fi
    fi
    local t0 t1 t2 rc=0 root cpu0 cpu1
    if [ "$server" = postfix ]; then root=$PF_MASTER; else root=$TERN_PID; fi
    cpu0=$(cpu_ms "$root")
    t0=$(date +%s.%N)
    if [ "$tool" = bench ]; then
        "$BIN" bench --server "127.0.0.1:$port" "${auth[@]}" --messages "$count" \
            --connections "$sessions" --size "$size" --from bench@bench.test --to "$to" \
            --quiet >"$work/$tag.load" 2>&1 || rc=$?
    else
        # -d: keep each session's connection for its next message, as
        # tern bench does. smtp-source does not pipeline.
        smtp-source -4 -d -s "$sessions" -m "$count" -l "$size" -M client.bench.test \
            -f bench@bench.test -t "$to" "127.0.0.1:$port" >"$work/$tag.load" 2>&1 || rc=$?
    fi
    t1=$(date +%s.%N)
    local complete=0
    for _ in $(seq 1 $((TIMEOUT * 20))); do
        kill -0 "$sink" 2>/dev/null || { complete=1; break; }
        sleep 0.05
    done
    t2=$(date +%s.%N)
    cpu1=$(cpu_ms "$root")
    local rss=- pss=- accept=- e2e=- p99=- cpu=-
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    [ -s "$work/$tag.mem" ] && read -r rss pss <"$work/$tag.mem"
    if [ "$server" = tern ]; then
        # Tern is one process: its own high-water mark is exact.
        rss=$(awk '/^VmHWM:/ {print $2}' "/proc/$TERN_PID/status")
        kill "$TERN_PID"
        wait "$TERN_PID" 2>/dev/null || true
    else
        pf_stop "$work/$tag"
        pf_dirs=()
    fi
    kill "$sink" 2>/dev/null || true
    wait "$sink" 2>/dev/null || true
    if [ "$tool" = bench ]; then
        accept=$(awk '/^accepted/ {print $3}' "$work/$tag.load")
        p99=$(awk '/^latency/ {for (i = 1; i < NF; i++) if ($i == "p99") print $(i + 1)}' "$work/$tag.load")
        # Only a run in which every message was accepted counts.
        grep -q '^errors: none' "$work/$tag.load" || accept=-
    elif [ "$rc" = 0 ]; then
        accept=$(python3 -c "print(round($count / ($t1 - $t0)))")
    fi
    if [ "$complete" = 1 ]; then
        e2e=$(python3 -c "print(round($count / ($t2 - $t0)))")
        cpu=$(python3 -c "print(f'{($cpu1 - $cpu0) / $count:.2f}')")
    fi
    {
        echo "  $server, $tool, $size B x $sessions sessions, $count messages:" \
            "accept $accept msg/s, end-to-end $e2e msg/s, p99 $p99 ms, server CPU $cpu ms/msg," \
            "peak RSS $rss KiB (PSS $pss KiB)"
        [ "$rc" = 0 ] || echo "  load generator exited with status $rc"
        [ "$complete" = 1 ] || echo "  the sink did not receive all $count messages within ${TIMEOUT}s"
        sed 's/^/    /' "$work/$tag.load" "$work/$tag.sink"
    } >&2
    echo "$server $label $size $sessions $count ${accept:--} $e2e ${p99:--} $cpu $rss $pss" >>"$work/results"
    rm -rf "${work:?}/$tag"
    pids=()
}

# flush_ms: the median and 90th percentile time of appending 4 KiB to a
# file and fdatasync'ing it where the queues are, for context: both
# servers wait for such flushes before every 250.
flush_ms() {
    python3 - "$work" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], 'flush-probe')
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
times = []
for _ in range(200):
    os.write(fd, b'x' * 4096)
    t = time.perf_counter()
    os.fdatasync(fd)
    times.append((time.perf_counter() - t) * 1000)
os.close(fd)
os.unlink(path)
times.sort()
print(f'{times[100]:.2f} ms (p90 {times[180]:.2f} ms)')
PY
}

echo "Tern $("$BIN" --version 2>/dev/null | awk '{print $NF}') against Postfix $PF_VERSION;" \
    "$(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)," \
    "kernel $(uname -r), queues under $work ($(findmnt -no FSTYPE,SOURCE -T "$work"));" \
    "load average $(cut -d' ' -f1-3 /proc/loadavg); a 4 KiB append + fdatasync there takes $(flush_ms)" >&2
: >"$work/results"
q=$((MESSAGES / 4))
s=$((MESSAGES / 10))
[ "$q" -ge 1 ] || q=1
[ "$s" -ge 1 ] || s=1
loads=("4096 20 $MESSAGES" "4096 100 $MESSAGES" "102400 20 $q" "4096 1 $s")
for load in "${loads[@]}"; do
    read -r size sessions count <<<"$load"
    echo "load: $size B x $sessions sessions, $count messages" >&2
    for tool in bench source; do
        for server in postfix tern; do
            run "$server" "$tool" "$size" "$sessions" "$count"
        done
    done
    # The same through Tern with AUTH PLAIN on every connection (Postfix
    # here has no SASL, so it has no counterpart).
    run tern bench "$size" "$sessions" "$count" auth
done

# p99 at about half the maximum: tern bench cannot limit its rate, so the
# rate is lowered by using fewer sessions. Of 1, 2, 4, 8 and 16 sessions,
# the smallest at which Tern accepts at least half of its best 4 KiB rate
# above is taken (or, when none does, the one that comes closest), and
# Postfix is measured at the same number.
best=$(awk '$1 == "tern" && $2 == "bench" && $3 == 4096 && $6 != "-" {print $6}' "$work/results" | sort -n | tail -1)
half_sessions=
if [ -n "$best" ]; then
    echo "half rate: looking for the sessions at which Tern accepts >= $((best / 2)) msg/s" >&2
    closest=
    for c in 1 2 4 8 16; do
        run tern bench 4096 "$c" "$q" probe
        rate=$(tail -1 "$work/results" | awk '{print $6}')
        [ "$rate" != - ] || continue
        diff=$((rate - best / 2))
        if [ "$diff" -ge 0 ]; then
            half_sessions=$c
            break
        fi
        if [ -z "$closest" ] || [ $((-diff)) -lt "$closest" ]; then
            closest=$((-diff))
            half_sessions=$c
        fi
    done
    if [ -n "$half_sessions" ]; then
        echo "load: 4096 B x $half_sessions sessions (half rate), $q messages" >&2
        run postfix bench 4096 "$half_sessions" "$q" half
        run tern bench 4096 "$half_sessions" "$q" half
    fi
fi

echo "at the end: load average $(cut -d' ' -f1-3 /proc/loadavg); a 4 KiB append + fdatasync takes $(flush_ms)" >&2
python3 - "$work/results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.split()[1] != 'probe']
res, order = {}, []
for server, label, size, sessions, count, accept, e2e, p99, cpu, rss, pss in rows:
    key = (label, size, sessions, count)
    if key not in res:
        res[key] = {}
        order.append(key)
    res[key][server] = dict(accept=accept, e2e=e2e, p99=p99, cpu=cpu, rss=rss, pss=pss)
def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
def mib(kib):
    v = num(kib)
    return '-' if v is None else f'{v / 1024:.0f}'
def ratio(t, p):
    t, p = num(t), num(p)
    return '-' if t is None or p is None or p == 0 else f'{t / p:.2f}'
clients = {'bench': 'tern bench', 'half': 'tern bench', 'source': 'smtp-source',
           'auth': 'tern bench, AUTH on Tern'}
print('| load | client '
      '| accept msgs/s Postfix | Tern | Tern/Postfix '
      '| end-to-end msgs/s Postfix | Tern | Tern/Postfix '
      '| p99 ms Postfix | Tern | Tern/Postfix '
      '| CPU ms/msg Postfix | Tern | Tern/Postfix '
      '| peak RSS MiB Postfix | Tern | Tern/Postfix '
      '| peak PSS MiB Postfix | Tern | Tern/Postfix |')
print('|' + '---|' * 20)
for key in order:
    label, size, sessions, count = key
    p, t = res[key].get('postfix', {}), res[key].get('tern', {})
    s = 'session' if sessions == '1' else 'sessions'
    name = f'{int(size) // 1024} KiB × {sessions} {s}'
    if label == 'half':
        name += ', half rate'
    cells = [f'{name} ({count} msgs)', clients[label]]
    for k in ('accept', 'e2e', 'p99', 'cpu'):
        cells += [p.get(k, 'n/a'), t.get(k, '-'), ratio(t.get(k), p.get(k))]
    for k in ('rss', 'pss'):
        cells += [mib(p.get(k, 'n/a')) if p else 'n/a', mib(t.get(k)), ratio(t.get(k), p.get(k))]
    print('| ' + ' | '.join(cells) + ' |')
PY

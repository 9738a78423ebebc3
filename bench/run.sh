#!/usr/bin/env bash
# AgentKeys Mail benchmark. Usage: bash bench/run.sh   (as root; see BENCHMARKS.md)
#
# In one run on this machine, against peers measured in the same run:
#   - inbound MX throughput with Postfix's smtp-source (10 KB messages,
#     20 sessions, one message per connection and persistent connections)
#     against smtp-sink (SMTP, no storage: the ceiling), a private Postfix
#     instance (durable queue: cleanup fsyncs the queue file before 250), and
#     `agentkeys serve` (durable);
#   - TLS submission handshakes per second (EHLO, STARTTLS, EHLO, AUTH PLAIN,
#     QUIT) against the same private Postfix (STARTTLS + Cyrus SASL sasldb) and us;
#   - our peak RSS at 1,000 idle connections (smtp-sink's for reference);
#   - our AUTH PLAIN reply latency per failure step (`agentkeys demo seed`);
#   - realistic inbound (part `realistic`): a pool of DKIM-signed messages
#     (RSA-2048, Ed25519, both) from sender domains whose SPF, DKIM, DMARC, MX
#     and A records a loopback DNS server (agentkeys-testdns on port 53 of a
#     127.0.53.x address) answers, sent by `loadgen inbound` to us (verifying,
#     and the same load unsigned from a .localhost sender: no verification) and
#     to the private Postfix through OpenDKIM and OpenDMARC milters pointed at
#     the same DNS; then to us with a name server that never answers and one
#     that drops every 10th query; each message's wait for its 250 recorded;
#   - server CPU per accepted message next to every inbound figure;
#   - outbound (part `outbound`): messages submitted over STARTTLS + AUTH,
#     DKIM-signed with both keys, queued and relayed to smtp-sink (our
#     smarthost), timed from the first submission until /metrics counts them
#     all delivered; and the DKIM signing rate per core (dkim_rate example).
# Results: bench/results/latest.md (+ raw files), spliced into BENCHMARKS.md
# when the AgentKeys part ran; the outbound section between its own markers
# whenever the outbound part ran.
#
# Everything listens on 127.0.0.1 only, on ports chosen free at start. Every
# load loop is bounded in count and in time. Only processes this script started
# are stopped, by PID (the private Postfix by `postfix -c DIR stop`).
#
# Knobs (environment):
#   BENCH_PARTS="sink postfix agentkeys realistic outbound"  which parts to run
#   BENCH_REAL_MESSAGES=5000 BENCH_REAL_REPEATS=3 BENCH_REAL_WARMUP=500 (realistic: per run)
#   BENCH_REAL_POOL=600 BENCH_REAL_DOMAINS=6 (realistic: distinct messages, sender domains)
#   BENCH_SICK_MESSAGES=5000 (sick resolver: per run, no warm-up)
#   TESTDNS_BIN=path POOL_BIN_PATH=path  prebuilt agentkeys-testdns / inbound_pool example
#   BENCH_OUT_MESSAGES=5000 BENCH_OUT_SESSIONS=8 (outbound: messages, submission sessions)
#   BENCH_OUT_TIMEOUT=180 (longest wait, in s, for submission and for delivery each)
#   BENCH_MESSAGES=10000 BENCH_SESSIONS=20 BENCH_SIZE=10240 BENCH_REPEATS=3
#   BENCH_WARMUP=1000 (untimed messages per server and mode first)
#   BENCH_HANDSHAKE_SECONDS=10 BENCH_HANDSHAKE_CONCURRENCY=32
#   BENCH_IDLE_CONNECTIONS=1000 BENCH_AUTH_ROUNDS=200
#   BENCH_WORKDIR=/var/tmp (must be a real disk, not tmpfs: fsync is measured)
#   BENCH_KEEP=1 keeps the work directory (logs, queues, data dir)
#   BENCH_SETTLE=360 (s: how old the previous run's cleanup must be; see below)
#   AGENTKEYS_BIN=path  use this server binary instead of building agentkeys-cli
#   BENCH_PORT_BASE=N  listen on 127.0.0.1 ports N..N+18 instead of free ones chosen at start
#   LOADGEN_TARGET_DIR=dir  cargo target directory for bench/loadgen (default bench/loadgen/target)
#   DKIM_RATE_BIN=path  use this build of the dkim_rate example instead of `cargo run`
#   BENCH_STORE=sqlite|postgres+s3  the store of the inbound AgentKeys (and the
#     outbound part's server): SQLite + files in its data directory (default), or
#     its own PostgreSQL database and an s3s-fs bucket (bench/store.sh)
#   BENCH_NODES=1|2  with 2, a second node on the same database and bucket and
#     HAProxy (TCP) in front: the inbound runs alternate "agentkeys-1" (HAProxy to
#     node A only) and "agentkeys" (HAProxy to both); handshakes, idle and AUTH
#     timing use node A directly
#   BENCH_COUNT=1 BENCH_COUNT_MESSAGES=1000 BENCH_COUNT_IDLE=5  (postgres+s3) after
#     the timed runs, database round trips and S3 requests per accepted message,
#     counted by proxies in front of a third, untimed node (idle seconds first)
#   BENCH_RESULTS=dir  where results go (default bench/results)
#   BENCH_PG=postgres://postgres@127.0.0.1:5432  BENCH_PG_PARAMS=  BENCH_PG_ANALYZE=1  (see bench/store.sh)
#   With BENCH_PORT_BASE, the store's ports are N+19..N+31.
#   BENCH_OWNERS=K  (default 1) the inbound runs' mail goes to K inboxes of K
#     owners (bench@, bench2@ … benchK@agents.localhost; Postfix takes the same
#     addresses): K smtp-source processes at once, each with an equal share of
#     the sessions and messages. On PostgreSQL an owner's indexers take turns
#     and different owners' do not (migration 0022), so K > 1 is the
#     deployment's case and K = 1 its worst.
#   BENCH_WEBHOOKS=N  (N > 0; default SQLite store, one node) a second AgentKeys
#     server "agentkeys-webhooks", set up like the first, with N webhook
#     subscriptions to message.received of the bench inbox, all to a local
#     receiver (bench/webhook_sink.py, 204 at once); its inbound runs alternate
#     with the first server's, and webhooks.md gives the ratio (bar: >= 0.9).
#     Ports N+32..N+36 with BENCH_PORT_BASE.
#   With BENCH_NODES=2 (postgres+s3) the outbound part runs twice: one node,
#   then a second node on the same database and bucket is started and the
#   same load goes through HAProxy to both (outbound-2nodes.json); ports
#   N+37..N+41 with BENCH_PORT_BASE.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$REPO/bench"
RESULTS="${BENCH_RESULTS:-$BENCH/results}"
LOADGEN_TARGET_DIR=${LOADGEN_TARGET_DIR:-$BENCH/loadgen/target}
LOADGEN="$LOADGEN_TARGET_DIR/release/loadgen"
AK="${AGENTKEYS_BIN:-$REPO/target/release/agentkeys}"

BENCH_PARTS=${BENCH_PARTS:-"sink postfix agentkeys realistic outbound"}
BENCH_REAL_MESSAGES=${BENCH_REAL_MESSAGES:-5000}
BENCH_REAL_REPEATS=${BENCH_REAL_REPEATS:-3}
BENCH_REAL_WARMUP=${BENCH_REAL_WARMUP:-500}
BENCH_REAL_POOL=${BENCH_REAL_POOL:-600}
BENCH_REAL_DOMAINS=${BENCH_REAL_DOMAINS:-6}
BENCH_SICK_MESSAGES=${BENCH_SICK_MESSAGES:-5000}
BENCH_OUT_MESSAGES=${BENCH_OUT_MESSAGES:-5000}
BENCH_OUT_SESSIONS=${BENCH_OUT_SESSIONS:-8}
BENCH_OUT_TIMEOUT=${BENCH_OUT_TIMEOUT:-180}
OUT_RCPT="x@bench-remote.test"
BENCH_MESSAGES=${BENCH_MESSAGES:-10000}
BENCH_SESSIONS=${BENCH_SESSIONS:-20}
BENCH_SIZE=${BENCH_SIZE:-10240}
BENCH_REPEATS=${BENCH_REPEATS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-1000}
BENCH_RUN_TIMEOUT=${BENCH_RUN_TIMEOUT:-120}
BENCH_HANDSHAKE_SECONDS=${BENCH_HANDSHAKE_SECONDS:-10}
BENCH_HANDSHAKE_CONCURRENCY=${BENCH_HANDSHAKE_CONCURRENCY:-32}
BENCH_IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-1000}
BENCH_AUTH_ROUNDS=${BENCH_AUTH_ROUNDS:-200}
BENCH_SETTLE=${BENCH_SETTLE:-360}
BENCH_WORKDIR=${BENCH_WORKDIR:-/var/tmp}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-}
BENCH_COUNT_MESSAGES=${BENCH_COUNT_MESSAGES:-1000}
BENCH_COUNT_IDLE=${BENCH_COUNT_IDLE:-5}
BENCH_WEBHOOKS=${BENCH_WEBHOOKS:-0}
BENCH_OWNERS=${BENCH_OWNERS:-1}
((BENCH_OWNERS >= 1 && BENCH_OWNERS <= BENCH_SESSIONS)) || { echo "BENCH_OWNERS must be 1..BENCH_SESSIONS" >&2; exit 2; }

RCPT="bench@agents.localhost"
FROM="sender@loadgen.localhost"
HELO="loadgen.localhost"
# Not the ids `agentkeys demo seed` uses (0x1111…, 0x2222…, 0xa1a1…, 0xa2a2…, 0xb1b1…).
OWNER="0xbe4c000000000000000000000000000000000001"
AGENT="0xbe4c0000000000000000000000000000000000a1"
# The inbound runs' recipients (BENCH_OWNERS): the first is $RCPT of $OWNER;
# recipient i > 1 is bench<i>@ of owner 0xbe4c…0<i> (setup_extra_owners).
RCPTS=("$RCPT")
for ((i = 2; i <= BENCH_OWNERS; i++)); do RCPTS+=("bench$i@agents.localhost"); done
extra_owner() { printf '0xbe4c0000000000000000000000000000%08x' "$1"; }
extra_agent() { printf '0xbe4c00000000000000000000000000a1%08x' "$1"; }

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
has_part() { [[ " $BENCH_PARTS " == *" $1 "* ]]; }
# shellcheck source=bench/store.sh
source "$BENCH/store.sh"

[[ $EUID -eq 0 ]] || die "run as root (a private Postfix instance is started)"

# ---------------------------------------------------------------- prerequisites
install_prerequisites() {
  local pkgs=()
  command -v smtp-source >/dev/null || pkgs+=(postfix)
  command -v saslpasswd2 >/dev/null || pkgs+=(sasl2-bin)
  dpkg -s libsasl2-modules-db >/dev/null 2>&1 || pkgs+=(libsasl2-modules-db)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v curl >/dev/null || pkgs+=(curl)
  if has_part realistic; then
    command -v opendkim >/dev/null || pkgs+=(opendkim)
    command -v opendmarc >/dev/null || pkgs+=(opendmarc)
    command -v unshare >/dev/null || pkgs+=(util-linux)
  fi
  command -v cargo >/dev/null || die "cargo not found (Rust 1.95 is required)"
  if ((${#pkgs[@]})); then
    log "installing ${pkgs[*]}"
    # "No configuration": the system Postfix is installed but not configured or started.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null; then
      apt-get update >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
  fi
}

# ---------------------------------------------------------------- cleanup
PIDS=()
ODKIM_DNS_ADDR=${ODKIM_DNS_ADDR:-192.0.2.53}
LO_ADDR_ADDED=0
PF=""
PF_STARTED=0
WORK=""
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null
  done
  # A server still in its start-up reconciliation does not act on SIGTERM
  # (seen: over a minute with 62,000 messages in S3); after 15 s, SIGKILL.
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "pid $pid ignored SIGTERM for 15 s; SIGKILL"; kill -9 "$pid" 2>/dev/null; }
    wait "$pid" 2>/dev/null
  done
  store_cleanup
  if ((PF_STARTED)); then
    postfix -c "$PF/etc" stop >/dev/null 2>&1
    # Give master up to 10 s to exit, then stop it by its PID.
    local mpid
    mpid=$(tr -dc 0-9 <"$PF/spool/pid/master.pid" 2>/dev/null)
    if [[ -n $mpid ]]; then
      for _ in $(seq 1 100); do
        kill -0 "$mpid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$mpid" 2>/dev/null && kill "$mpid"
    fi
  fi
  ((LO_ADDR_ADDED)) && ip addr del "$ODKIM_DNS_ADDR/32" dev lo
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $BENCH_KEEP == 1 ]]; then
      log "kept $WORK"
    else
      log "removing $WORK"
      rm -rf "$WORK"
      touch "$BENCH_WORKDIR/agentkeys-bench.cleaned"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers
# Waits (at most ~10 s) until something accepts TCP connections on 127.0.0.1:$1.
wait_port() {
  local port=$1
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing listening on 127.0.0.1:$port"
}

# Extracts a string field from flat JSON on stdin (no jq on a clean machine).
json_field() {
  sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" | head -n1
}

# Runs smtp-source once, timed, and appends a line to throughput.tsv.
#   run_source TARGET MODE PORT RUN COUNT
# MODE: per-connection (smtp-source default: QUIT after each message) or
#       persistent (-d: the next message goes over the same connection).
run_source() {
  local target=$1 mode=$2 port=$3 run=$4 count=$5
  local t0 t1 ok=1 cpu0 cpu1 scpu0 scpu1 hcpu0="" hcpu1="" k pids=() n_k s_k
  local owners=${#RCPTS[@]}
  timeout 60 sync || true
  scpu0=$(store_cpu)
  [[ -n ${STORE_HAPROXY_PID:-} ]] && hcpu0=$("$LOADGEN" cpu-tree --pid "$STORE_HAPROXY_PID")
  cpu0=$(server_cpu "$target")
  [[ $target == agentkeys* && $run != warmup ]] && store_wait_sampler_start "$RESULTS/pg-waits-$target-$mode-$run.txt" "$BENCH_RUN_TIMEOUT"
  t0=$(date +%s.%N)
  # One smtp-source per recipient, started together, with equal shares (the
  # first takes what does not divide).
  for ((k = 0; k < owners; k++)); do
    n_k=$((count / owners)); ((k == 0)) && n_k=$((n_k + count % owners))
    ((n_k > 0)) || continue # a probe of one message goes to the first recipient only
    s_k=$((BENCH_SESSIONS / owners)); ((k == 0)) && s_k=$((s_k + BENCH_SESSIONS % owners))
    local args=(-s "$s_k" -m "$n_k" -l "$BENCH_SIZE" -f "$FROM" -t "${RCPTS[k]}" -M "$HELO")
    [[ $mode == persistent ]] && args=(-d "${args[@]}")
    timeout "$BENCH_RUN_TIMEOUT" smtp-source "${args[@]}" "127.0.0.1:$port" >>"$WORK/smtp-source.log" 2>&1 &
    pids+=($!)
  done
  for k in "${pids[@]}"; do wait "$k" || ok=0; done
  t1=$(date +%s.%N)
  store_wait_sampler_stop
  cpu1=$(server_cpu "$target")
  scpu1=$(store_cpu)
  [[ -n ${STORE_HAPROXY_PID:-} ]] && hcpu1=$("$LOADGEN" cpu-tree --pid "$STORE_HAPROXY_PID")
  local secs rate
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  rate=$(awk -v n="$count" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
  if [[ $run == warmup ]]; then
    ((ok)) && return 0
    log "  $target $mode warm-up FAILED; tail of smtp-source.log:"
    tail -n 3 "$WORK/smtp-source.log" >&2
    return 1
  fi
  local cpu
  cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { if (a != "" && b != "") printf "%.3f", b - a }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$mode" "$run" "$count" "$secs" "$ok" "$cpu" >>"$RESULTS/throughput.tsv"
  # The store's processes (PostgreSQL backends of our databases; s3s-fs) and HAProxy, when there are any:
  # target mode run postgresql_s s3s-fs_s haproxy_s
  if [[ $target == agentkeys* && ( -n $scpu0 || -n $hcpu0 ) ]]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$mode" "$run" \
      "$(awk -v a="${scpu0% *}" -v b="${scpu1% *}" 'BEGIN { if (a != "" && b != "") printf "%.3f", b - a }')" \
      "$(awk -v a="${scpu0#* }" -v b="${scpu1#* }" 'BEGIN { if (a != "" && b != "") printf "%.3f", b - a }')" \
      "$(awk -v a="$hcpu0" -v b="$hcpu1" 'BEGIN { if (a != "" && b != "") printf "%.3f", b - a }')" >>"$RESULTS/store-cpu.tsv"
  fi
  if ((ok)); then
    log "  $target $mode run $run: $count messages in ${secs}s = $rate/s, server CPU ${cpu:-?}s"
  else
    log "  $target $mode run $run: FAILED (exit status or timeout); tail of smtp-source.log:"
    tail -n 3 "$WORK/smtp-source.log" >&2
  fi
}

# CPU seconds (user + system) the server behind TARGET has used so far; empty
# when unknown. Postfix: its master and every process under it, exited ones
# included (their time is in the parent's cutime/cstime).
server_cpu() {
  case $1 in
    agentkeys) [[ -n ${AK_PID:-} ]] && "$LOADGEN" cpu-tree --pid "$AK_PID" ${AK_PID_B:-} ;;
    agentkeys-1) [[ -n ${AK_PID:-} ]] && "$LOADGEN" cpu-tree --pid "$AK_PID" ;;
    agentkeys-webhooks) [[ -n ${AK_PID_W:-} ]] && "$LOADGEN" cpu-tree --pid "$AK_PID_W" ;;
    smtp-sink) [[ -n ${SINK_PID:-} ]] && "$LOADGEN" cpu-tree --pid "$SINK_PID" ;;
    postfix) [[ -n ${PF_MASTER:-} ]] && "$LOADGEN" cpu-tree --pid "$PF_MASTER" ;;
  esac
  return 0
}

# ---------------------------------------------------------------- smtp-sink
start_sink() {
  # -u: drop root after binding; -m: up to 2000 connections (idle reference).
  smtp-sink -u nobody -m 2000 "127.0.0.1:$P_SINK" 1024 >"$WORK/smtp-sink.log" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  wait_port "$P_SINK"
  log "smtp-sink on 127.0.0.1:$P_SINK (pid $SINK_PID)"
}

# ---------------------------------------------------------------- private Postfix
# Its own config_directory, queue_directory and data_directory under $WORK/postfix,
# listening on 127.0.0.1 only; mail to agents.localhost is accepted into the
# queue (cleanup writes and fsyncs the queue file before smtpd says 250) and
# then delivered to discard(8). A second smtpd offers STARTTLS + AUTH PLAIN
# (Cyrus SASL, sasldb) for the handshake comparison.
setup_postfix() {
  PF="$WORK/postfix"
  # Debian's Postfix reads Cyrus SASL settings from $config_directory/sasl.
  mkdir -p "$PF/etc/sasl" "$PF/spool" "$PF/data" "$PF/tls"
  PF_PASS="pf-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

  # Same key type as rcgen's default (ECDSA P-256), so both TLS servers sign alike.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=postfix-bench.localhost" -keyout "$PF/tls/key.pem" -out "$PF/tls/cert.pem" \
    >/dev/null 2>&1
  chmod 600 "$PF/tls/key.pem"

  cat >"$PF/etc/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN
sasldb_path: $PF/etc/sasl/sasldb2
EOF
  printf '%s' "$PF_PASS" | saslpasswd2 -p -c -f "$PF/etc/sasl/sasldb2" -u agents.localhost bench
  chown postfix "$PF/etc/sasl/sasldb2"
  chmod 600 "$PF/etc/sasl/sasldb2"

  cat >"$PF/etc/main.cf" <<EOF
# Private benchmark instance (bench/run.sh). Loopback only.
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
syslog_name = postfix-bench
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
myhostname = postfix-bench.localhost
mydomain = localhost
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination = agents.localhost
# Accept any local part of agents.localhost, deliver it to discard(8).
local_recipient_maps =
local_transport = discard:
alias_maps =
alias_database =
biff = no
smtpd_banner = \$myhostname ESMTP
# Conservative choices, in Postfix's favour: no reverse DNS for the client,
# no inbound flow control pause when the queue manager lags.
smtpd_peername_lookup = no
in_flow_delay = 0
# The realistic part's smtpd with milters: check@agents.localhost is held, so
# the verification headers can be read from the queue file.
bench_milter_recipients = check_recipient_access texthash:$PF/etc/hold, permit_mynetworks, reject_unauth_destination
EOF
  printf 'check@agents.localhost HOLD\n' >"$PF/etc/hold"

  # Only the services needed; no chroot (the queue is not in the usual place).
  cat >"$PF/etc/master.cf" <<EOF
127.0.0.1:$P_PF inet n - n - - smtpd
127.0.0.1:$P_PFSUB inet n - n - - smtpd
  -o syslog_name=postfix-bench/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_cert_file=$PF/tls/cert.pem
  -o smtpd_tls_key_file=$PF/tls/key.pem
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=cyrus
  -o smtpd_sasl_path=smtpd
  -o cyrus_sasl_config_path=$PF/etc/sasl
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
  if has_part realistic; then
    cat >>"$PF/etc/master.cf" <<EOF
127.0.0.1:$P_PFM inet n - n - - smtpd
  -o syslog_name=postfix-bench/milters
  -o smtpd_milters=inet:127.0.0.1:$P_ODKIM,inet:127.0.0.1:$P_ODMARC
  -o milter_default_action=tempfail
  -o smtpd_recipient_restrictions=\$bench_milter_recipients
EOF
  fi
  chown postfix "$PF/data"
  postfix -c "$PF/etc" check || die "postfix check failed for $PF/etc"
}

start_postfix() {
  postfix -c "$PF/etc" start >/dev/null 2>&1 || die "postfix -c $PF/etc start failed; see $PF/maillog"
  PF_STARTED=1
  wait_port "$P_PF"
  wait_port "$P_PFSUB"
  PF_MASTER=$(tr -dc 0-9 <"$PF/spool/pid/master.pid" 2>/dev/null)
  log "Postfix on 127.0.0.1:$P_PF (MX) and :$P_PFSUB (submission), config $PF/etc"
  # One message, checked end to end: accepted (250) and delivered to discard.
  run_source postfix per-connection "$P_PF" warmup 1 || die "Postfix refused the probe message; see $PF/maillog"
  postfix_drain
  grep -q "status=sent" "$PF/maillog" || die "Postfix did not deliver the probe message; see $PF/maillog"
}

# Waits (at most 120 s) until the queue manager has emptied the queue, so
# delivery of one run does not spill into the next measurement.
postfix_drain() {
  for _ in $(seq 1 1200); do
    if [[ -z $(find "$PF/spool/incoming" "$PF/spool/active" "$PF/spool/deferred" -type f -print -quit) ]]; then
      return 0
    fi
    sleep 0.1
  done
  log "warning: Postfix queue not empty after 120 s"
}

# ---------------------------------------------------------------- AgentKeys
# Waits (at most ~10 s; 120 s with a shared store, where a node's start-up
# reconciliation lists the whole inbox in S3) until `agentkeys serve` PID answers
# /healthz on HTTP port PORT; shows the tail of LOG and stops the run if it exited.
#   wait_healthy PID PORT LOG NAME
wait_healthy() {
  local pid=$1 port=$2 log_file=$3 name=$4 tries=100
  store_is_shared && tries=1200
  for _ in $(seq 1 "$tries"); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log_file" >&2; die "$name exited"; }
    sleep 0.1
  done
  die "$name not healthy after $((tries / 10)) s; see $log_file"
}

# Run from the work directory, so no ./agentkeys.toml of the caller is read.
AK_ENV=()
ak() { (cd "$WORK" && env "${AK_ENV[@]}" "$AK" --data-dir "$AK_DATA" "$@"); }

AK_BUILT=0
build_agentkeys() {
  ((AK_BUILT)) && return 0
  if [[ -z ${AGENTKEYS_BIN:-} ]]; then
    log "building agentkeys (release)"
    (cd "$REPO" && cargo build --release -p agentkeys-cli) >&2
  fi
  [[ -x $AK ]] || die "$AK was not built"
  AK="$(cd "$(dirname "$AK")" && pwd)/$(basename "$AK")"
  AK_BUILT=1
}

# Grants need the owner's signature: the owner enrolls a master key (sealed under
# a generated passphrase in $WORK/owner-DIR) and signs `grant create`, checked and
# applied locally against the data directory (no server needed).
# ENV_ARRAY names an array of VAR=value the server's store needs (none: default store).
#   provision_owner DATA_DIR NAME [ENV_ARRAY]
provision_owner() {
  local data=$1 name=$2 code
  local -n penv=${3:-NO_ENV}
  local conf="$WORK/owner-$name"
  mkdir -p "$conf"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$conf/passphrase"
  chmod 600 "$conf/passphrase"
  code=$( (cd "$WORK" && env "${penv[@]}" "$AK" --data-dir "$data" owner add "$OWNER" --json) | json_field enrollment_code)
  [[ $code == enr_* ]] || die "owner add printed no enrollment code"
  ((${#penv[@]})) && store_local_owner_marker "$data"
  (cd "$WORK" && env "${penv[@]}" AGENTKEYS_CONFIG_DIR="$conf" "$AK" --data-dir "$data" owner enroll --owner "$OWNER" --code "$code" \
    --passphrase-file "$conf/passphrase" --json) >/dev/null
}
#   owner_grant DATA_DIR NAME [ENV_ARRAY]
owner_grant() {
  local data=$1 name=$2
  local -n genv=${3:-NO_ENV}
  local conf="$WORK/owner-$name"
  (cd "$WORK" && env "${genv[@]}" AGENTKEYS_CONFIG_DIR="$conf" "$AK" --data-dir "$data" grant create --agent "$AGENT" --inbox "$RCPT" \
    --scopes read,send --owner "$OWNER" --passphrase-file "$conf/passphrase" --json) >/dev/null
}
NO_ENV=()

setup_agentkeys() {
  build_agentkeys
  AK_DATA="$WORK/agentkeys-data"
  mkdir -p "$AK_DATA"
  store_init "$WORK" "$P_S3"
  AK_ENV=("${STORE_ENV[@]}")
  provision_owner "$AK_DATA" inbound AK_ENV
  ak agent add "$AGENT" --owner "$OWNER" >/dev/null
  local address
  address=$(ak inbox create --agent "$AGENT" --name bench --json | json_field address)
  [[ $address == "$RCPT" ]] || die "inbox create answered address '$address', expected $RCPT"
  AK_KEY=$(ak key create --agent "$AGENT" --json | json_field key)
  [[ $AK_KEY == ak_* ]] || die "key create did not print a key"
  owner_grant "$AK_DATA" inbound AK_ENV
  setup_extra_owners
  ak demo seed --json >"$WORK/auth-cases.json"
}

# Owners 2..BENCH_OWNERS, each with an agent and the inbox RCPTS[i-1] (inbound
# only: no key, no grant).
setup_extra_owners() {
  local i address
  for ((i = 2; i <= BENCH_OWNERS; i++)); do
    ak owner add "$(extra_owner "$i")" --json >/dev/null
    ak agent add "$(extra_agent "$i")" --owner "$(extra_owner "$i")" >/dev/null
    address=$(ak inbox create --agent "$(extra_agent "$i")" --name "bench$i" --json | json_field address)
    [[ $address == "${RCPTS[i - 1]}" ]] || die "inbox create answered address '$address', expected ${RCPTS[i - 1]}"
  done
}

# Starts one inbound `agentkeys serve`; sets NODE_PID.
#   start_ak_node LABEL DATA_DIR MX SUBMISSION SUBMISSION_TLS HTTP ENV_ARRAY
start_ak_node() {
  local label=$1 data=$2 p_in=$3 p_sub=$4 p_subtls=$5 p_http=$6
  local -n nenv=$7
  cd "$WORK"
  env "${nenv[@]}" \
  AGENTKEYS_LISTEN_INBOUND="127.0.0.1:$p_in" \
  AGENTKEYS_LISTEN_SUBMISSION="127.0.0.1:$p_sub" \
  AGENTKEYS_LISTEN_SUBMISSION_TLS="127.0.0.1:$p_subtls" \
  AGENTKEYS_LISTEN_HTTP="127.0.0.1:$p_http" AGENTKEYS_LISTEN_HTTPS=off \
  AGENTKEYS_MAX_CONNECTIONS=100000 \
  AGENTKEYS_MAX_CONNECTIONS_PER_IP=100000 \
  AGENTKEYS_AUTH_FAILURES_PER_IP=100000000 \
    "$AK" --data-dir "$data" serve >"$WORK/$label.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_healthy "$NODE_PID" "$p_http" "$WORK/$label.log" "agentkeys serve ($label)"
  wait_port "$p_in"
  wait_port "$p_sub"
  cd "$REPO"
  log "$label (pid $NODE_PID, store $BENCH_STORE): MX :$p_in, submission :$p_sub, HTTP :$p_http"
}

start_agentkeys() {
  start_ak_node agentkeys "$AK_DATA" "$P_IN" "$P_SUB" "$P_SUBTLS" "$P_HTTP" AK_ENV
  AK_PID=$NODE_PID
  AK_MX=$P_IN
  if ((BENCH_NODES == 2)); then
    AK_DATA_B="$WORK/agentkeys-data-b"
    store_second_data "$AK_DATA" "$AK_DATA_B"
    start_ak_node agentkeys-b "$AK_DATA_B" "$P_IN_B" "$P_SUB_B" "$P_SUBTLS_B" "$P_HTTP_B" AK_ENV
    AK_PID_B=$NODE_PID
    # P_LB1: HAProxy to node A only (the one-node figure with the same hop);
    # P_LB2: HAProxy to both nodes.
    store_haproxy "$WORK/haproxy" "$P_LB1=$P_IN" "$P_LB2=$P_IN,$P_IN_B"
    AK_MX=$P_LB2
  fi
}

# The webhook comparison (BENCH_WEBHOOKS): a second server set up like the
# first, with BENCH_WEBHOOKS subscriptions to message.received of the bench
# inbox, every one to the local receiver.
setup_webhooks_node() {
  AK_DATA_W="$WORK/agentkeys-data-webhooks"
  mkdir -p "$AK_DATA_W"
  provision_owner "$AK_DATA_W" webhooks
  local akw=("$AK" --data-dir "$AK_DATA_W")
  (cd "$WORK" && "${akw[@]}" agent add "$AGENT" --owner "$OWNER") >/dev/null
  (cd "$WORK" && "${akw[@]}" inbox create --agent "$AGENT" --name bench --json) | grep -qF "$RCPT" \
    || die "webhooks node: inbox create failed"
  owner_grant "$AK_DATA_W" webhooks
}

start_webhooks_node() {
  python3 "$BENCH/webhook_sink.py" "$P_WRX" "$RESULTS/webhook-sink-count.txt" >"$WORK/webhook-sink.log" 2>&1 &
  WRX_PID=$!
  PIDS+=("$WRX_PID")
  wait_port "$P_WRX"
  W_ENV=(AGENTKEYS_WEBHOOKS_ALLOW_PRIVATE=true)
  start_ak_node agentkeys-webhooks "$AK_DATA_W" "$P_IN_W" "$P_SUB_W" "$P_SUBTLS_W" "$P_HTTP_W" W_ENV
  AK_PID_W=$NODE_PID
  local conf="$WORK/owner-webhooks" i
  for i in $(seq 1 "$BENCH_WEBHOOKS"); do
    (cd "$WORK" && AGENTKEYS_CONFIG_DIR="$conf" "$AK" --data-dir "$AK_DATA_W" webhook create \
      --url "http://127.0.0.1:$P_WRX/hook-$i" --events message.received --inbox "$RCPT" \
      --owner "$OWNER" --passphrase-file "$conf/passphrase" --server "http://127.0.0.1:$P_HTTP_W" --json) \
      | grep -q '"secret"' || die "webhook create $i failed"
  done
  log "agentkeys-webhooks: $BENCH_WEBHOOKS subscriptions to the receiver on :$P_WRX"
}

# Median rate per (target, mode) from throughput.tsv, and the webhook ratio.
webhooks_report() {
  local tsv="$RESULTS/throughput.tsv" mode base with ratio verdict
  printf '%s subscriptions to message.received of the bench inbox on the second server, all to one local receiver (`bench/webhook_sink.py`, 204 at once); both servers SQLite, same settings, runs alternating. Median of %s runs of %s messages each (smtp-source, %s sessions, %s bytes).\n\n' \
    "$BENCH_WEBHOOKS" "$BENCH_REPEATS" "$BENCH_MESSAGES" "$BENCH_SESSIONS" "$BENCH_SIZE"
  printf '| Mode | without webhooks (msg/s) | with %s subscriptions (msg/s) | ratio (bar >= 0.9) |\n|---|---|---|---|\n' "$BENCH_WEBHOOKS"
  for mode in per-connection persistent; do
    base=$(awk -F'\t' -v m="$mode" '$1 == "agentkeys" && $2 == m && $6 == 1 { print $4 / $5 }' "$tsv" | sort -n | awk '{ a[NR] = $1 } END { if (NR) printf "%.0f", a[int((NR + 1) / 2)] }')
    with=$(awk -F'\t' -v m="$mode" '$1 == "agentkeys-webhooks" && $2 == m && $6 == 1 { print $4 / $5 }' "$tsv" | sort -n | awk '{ a[NR] = $1 } END { if (NR) printf "%.0f", a[int((NR + 1) / 2)] }')
    ratio=$(awk -v a="$base" -v b="$with" 'BEGIN { if (a > 0 && b != "") printf "%.2f", b / a; else print "?" }')
    verdict=$(awk -v r="$ratio" 'BEGIN { if (r == "?") print "?"; else if (r >= 0.9) print "pass"; else print "FAIL" }')
    printf '| %s | %s | %s | %s %s |\n' "$mode" "${base:-?}" "${with:-?}" "$ratio" "$verdict"
  done
  printf '\nDeliveries on the webhooks server at the end of the run (state: count): %s; requests the receiver answered: %s.\n' \
    "$(sqlite3 "$AK_DATA_W/meta.sqlite" "SELECT state || ': ' || count(*) FROM webhook_deliveries GROUP BY state" | paste -sd ',' | sed 's/,/, /g')" \
    "$(cat "$RESULTS/webhook-sink-count.txt" 2>/dev/null || echo '?')"
}

# Database round trips and S3 requests per accepted message: a third node whose
# database and S3 endpoint are counting proxies (bench/wirecount.py), untimed,
# before the timed runs: an idle window first (what a node does on its own),
# then BENCH_COUNT_MESSAGES messages per connection and as many over persistent
# connections. The node is stopped afterwards.
run_count_phase() {
  local dir="$RESULTS/counts"
  store_count_proxies "$dir" "$P_CPG" "$P_CS3"
  AK_DATA_C="$WORK/agentkeys-data-count"
  store_second_data "$AK_DATA" "$AK_DATA_C"
  start_ak_node agentkeys-count "$AK_DATA_C" "$P_IN_C" "$P_SUB_C" "$P_SUBTLS_C" "$P_HTTP_C" STORE_COUNT_ENV
  local cpid=$NODE_PID
  sleep 2
  local s0 s1 t0 t1 mode
  s0=$(store_count_snapshot)
  sleep "$BENCH_COUNT_IDLE"
  s1=$(store_count_snapshot)
  local snaps=("$s1") secs=()
  for mode in per-connection persistent; do
    local args=(-s "$BENCH_SESSIONS" -m "$BENCH_COUNT_MESSAGES" -l "$BENCH_SIZE" -f "$FROM" -t "$RCPT" -M "$HELO")
    [[ $mode == persistent ]] && args=(-d "${args[@]}")
    t0=$(date +%s.%N)
    timeout "$BENCH_RUN_TIMEOUT" smtp-source "${args[@]}" "127.0.0.1:$P_IN_C" >>"$WORK/smtp-source.log" 2>&1 \
      || log "count phase: smtp-source ($mode) failed"
    t1=$(date +%s.%N)
    secs+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")
    snaps+=("$(store_count_snapshot)")
  done
  kill "$cpid" 2>/dev/null
  wait "$cpid" 2>/dev/null || true
  python3 "$BENCH/count_diff.py" "$BENCH_COUNT_IDLE" "$s0" "$s1" \
    "per-connection:$BENCH_COUNT_MESSAGES:${secs[0]}" "${snaps[1]}" \
    "persistent:$BENCH_COUNT_MESSAGES:${secs[1]}" "${snaps[2]}" >"$dir/inbound-counts.json"
  log "count phase: $(python3 "$BENCH/count_diff.py" --brief "$dir/inbound-counts.json")"
}

# ---------------------------------------------------------------- realistic inbound
# DKIM-signed mail from sender domains a loopback DNS server answers for, to us
# (verifying) and to Postfix with OpenDKIM and OpenDMARC, the same pool for both;
# then to us with a name server that never answers and one that loses queries.
TESTDNS="$REPO/target/release/agentkeys-testdns"
POOL_BIN="$REPO/target/release/examples/inbound_pool"

build_realistic_tools() {
  build_agentkeys
  if [[ -z ${TESTDNS_BIN:-} || -z ${POOL_BIN_PATH:-} ]]; then
    log "building agentkeys-testdns and the inbound_pool example (release)"
    (cd "$REPO" && cargo build --release -p agentkeys-testdns --bins &&
      cargo build --release -p agentkeys-delivery --example inbound_pool) >&2
  fi
  TESTDNS=${TESTDNS_BIN:-$TESTDNS}
  POOL_BIN=${POOL_BIN_PATH:-$POOL_BIN}
  [[ -x $TESTDNS && -x $POOL_BIN ]] || die "agentkeys-testdns or inbound_pool was not built"
}

# Starts agentkeys-testdns on port 53 of the first free 127.0.THIRD.x and sets
# DNS_<NAME> to that address.   start_testdns NAME THIRD ZONE [--drop-every N]
start_testdns() {
  local name=$1 third=$2 zone=$3 ip pid i
  shift 3
  for i in $(seq 1 50); do
    ip="127.0.$third.$i"
    "$TESTDNS" --listen "$ip:53" --zone "$zone" --stats "$WORK/dns-$name.count" "$@" >"$WORK/dns-$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do
      grep -q '^listening' "$WORK/dns-$name.log" 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if grep -q '^listening' "$WORK/dns-$name.log" 2>/dev/null; then
      PIDS+=("$pid")
      printf -v "DNS_${name^^}" '%s' "$ip"
      log "DNS ($name${*:+, $*}) on $ip:53 (pid $pid)"
      return 0
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  die "no free port 53 on 127.0.$third.1-50 for the $name DNS server; see $WORK/dns-$name.log"
}

# Runs a command in a mount namespace of its own where /etc/resolv.conf names
# the loopback DNS server: OpenDMARC (and libspf2 under it) only read that file.
in_bench_dns() {
  # exec: run in the background, `$!` is the milter's own PID (not a subshell's).
  exec unshare --mount --propagation private sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' \
    "$WORK/milters/resolv.conf" "$@"
}

# agentkeys-testdns for OpenDKIM on ODKIM_DNS_ADDR:53, an address put on `lo`
# for the run (cleanup removes it).
start_odkim_dns() {
  if ! ip -4 addr show dev lo | grep -q " $ODKIM_DNS_ADDR/"; then
    ip addr add "$ODKIM_DNS_ADDR/32" dev lo || die "cannot add $ODKIM_DNS_ADDR to lo"
    LO_ADDR_ADDED=1
  fi
  "$TESTDNS" --listen "$ODKIM_DNS_ADDR:53" --zone "$WORK/pool/zone.txt" --stats "$WORK/dns-odkim.count" \
    >"$WORK/dns-odkim.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 50); do
    grep -q '^listening' "$WORK/dns-odkim.log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || die "agentkeys-testdns for OpenDKIM exited; see $WORK/dns-odkim.log"
    sleep 0.1
  done
  DNS_ODKIM=$ODKIM_DNS_ADDR
  log "DNS (healthy, for OpenDKIM) on $ODKIM_DNS_ADDR:53 (pid $pid)"
}

start_milters() {
  local m="$WORK/milters"
  mkdir -p "$m"
  chmod 755 "$m"

  # Mail from 127.0.0.1 is "internal" (signed, not verified) to OpenDKIM and
  # ignored by OpenDMARC by default; the bench client is 127.0.0.1, so both
  # lists name only a TEST-NET host.
  printf '192.0.2.254\n' >"$m/not-local"
  # libunbound (OpenDKIM's resolver) never sends a query to 127.0.0.0/8
  # (`do-not-query-localhost`, default yes; every key lookup then fails with
  # "key not found in DNS"), and OpenDKIM 2.11 crashes on a
  # `ResolverConfiguration` file that would turn it off. So OpenDKIM asks a
  # second agentkeys-testdns with the same zone on a TEST-NET address added to
  # the loopback interface for the run (removed at exit): still loopback traffic.
  # OpenDMARC (libspf2, the C library's resolver) asks it too.
  start_odkim_dns
  # OpenDKIM's libunbound also reads /etc/resolv.conf: both milters see this one.
  printf 'nameserver %s\n' "$DNS_ODKIM" >"$m/resolv.conf"
  # QueryCache: OpenDKIM keeps answers for their TTL, as our answer table does.
  cat >"$m/opendkim.conf" <<EOF
Syslog no
Mode v
Socket inet:$P_ODKIM@127.0.0.1
UserID opendkim:opendkim
AuthservID postfix-bench.localhost
InternalHosts $m/not-local
Nameservers $DNS_ODKIM
QueryCache yes
AlwaysAddARHeader yes
EOF
  cat >"$m/opendmarc.conf" <<EOF
Syslog false
Socket inet:$P_ODMARC@127.0.0.1
UserID opendmarc:opendmarc
AuthservID postfix-bench.localhost
TrustedAuthservIDs postfix-bench.localhost
IgnoreHosts $m/not-local
SPFSelfValidate true
SPFIgnoreResults true
EOF
  chmod 644 "$m"/*
  in_bench_dns opendkim -f -x "$m/opendkim.conf" >"$m/opendkim.log" 2>&1 &
  ODKIM_PID=$!
  PIDS+=("$ODKIM_PID")
  in_bench_dns opendmarc -f -c "$m/opendmarc.conf" >"$m/opendmarc.log" 2>&1 &
  ODMARC_PID=$!
  PIDS+=("$ODMARC_PID")
  wait_port "$P_ODKIM"
  wait_port "$P_ODMARC"
  wait_port "$P_PFM"
  log "OpenDKIM (pid $ODKIM_PID) :$P_ODKIM and OpenDMARC (pid $ODMARC_PID) :$P_ODMARC; Postfix with milters :$P_PFM"
}

setup_realistic_agentkeys() {
  REAL_DATA="$WORK/realistic-data"
  mkdir -p "$REAL_DATA"
  provision_owner "$REAL_DATA" realistic
  (cd "$WORK" && "$AK" --data-dir "$REAL_DATA" agent add "$AGENT" --owner "$OWNER") >/dev/null
  local name
  for name in bench check; do
    (cd "$WORK" && "$AK" --data-dir "$REAL_DATA" inbox create --agent "$AGENT" --name "$name") >/dev/null
  done
}

# Starts (or restarts) the realistic part's server resolving through $1:53.
start_real() {
  local dns=$1 label=$2
  cd "$WORK"
  AGENTKEYS_LISTEN_INBOUND="127.0.0.1:$P_RIN" \
  AGENTKEYS_LISTEN_SUBMISSION="127.0.0.1:$P_RSUB" \
  AGENTKEYS_LISTEN_SUBMISSION_TLS="127.0.0.1:$P_RSUBTLS" \
  AGENTKEYS_LISTEN_HTTP="127.0.0.1:$P_RHTTP" AGENTKEYS_LISTEN_HTTPS=off \
  AGENTKEYS_DNS_NAMESERVERS="$dns:53" \
  AGENTKEYS_MAX_CONNECTIONS=100000 \
  AGENTKEYS_MAX_CONNECTIONS_PER_IP=100000 \
    "$AK" --data-dir "$REAL_DATA" serve >"$WORK/agentkeys-realistic-$label.log" 2>&1 &
  REAL_PID=$!
  PIDS+=("$REAL_PID")
  wait_healthy "$REAL_PID" "$P_RHTTP" "$WORK/agentkeys-realistic-$label.log" "agentkeys serve (realistic, $label DNS)"
  wait_port "$P_RIN"
  cd "$REPO"
  log "realistic: agentkeys serve (pid $REAL_PID, $label DNS $dns:53) MX :$P_RIN"
}

stop_real() {
  kill "$REAL_PID" 2>/dev/null
  wait "$REAL_PID" 2>/dev/null || true
}

# loadgen inbound once.   inbound_run LABEL OUT PORT POOL MODE COUNT [loadgen options…]
inbound_run() {
  local label=$1 out=$2 port=$3 pool=$4 mode=$5 count=$6
  shift 6
  local args=(inbound --addr "127.0.0.1:$port" --pool "$pool" --count "$count" --concurrency "$BENCH_SESSIONS"
    --max-duration "${BENCH_RUN_TIMEOUT}s" --label "$label" "$@")
  [[ $mode == persistent ]] && args+=(--persistent)
  [[ -n $out ]] && args+=(--out "$out")
  timeout 60 sync || true
  timeout $((BENCH_RUN_TIMEOUT + 30)) "$LOADGEN" "${args[@]}" >/dev/null 2>>"$WORK/inbound.log" \
    || log "  $label $mode: loadgen inbound failed; see $WORK/inbound.log"
  tail -n 1 "$WORK/inbound.log" | sed 's/^/  /' >&2
}

# Our verdict (the first header field, unfolded) of a stored message.
our_verdict() {
  awk '/^Received: /{exit} {sub(/\r$/, ""); sub(/^[ \t]+/, " "); printf "%s", $0} END {print ""}' "$1"
}

realistic_checks() {
  local checks="$RESULTS/realistic-checks.tsv" d=$BENCH_REAL_DOMAINS
  # One message of each kind: RSA-2048 only, Ed25519 only, both.
  sed -n "1p;$((d + 1))p;$((2 * d + 1))p" "$WORK/pool/signed.jsonl" >"$WORK/pool/check.jsonl"
  inbound_run check "" "$P_RIN" "$WORK/pool/check.jsonl" per-connection 3 --rcpt check@agents.localhost
  local ok=0 f v last=""
  for f in "$REAL_DATA/blobs/$OWNER/check@agents.localhost"/*.eml; do
    [[ -f $f ]] || continue
    v=$(our_verdict "$f")
    last=$v
    [[ $v == *"dkim=pass"* && $v == *"spf=pass"* && $v == *"dmarc=pass"* ]] && ok=$((ok + 1))
  done
  printf 'AgentKeys, one message each signed RSA-2048 / Ed25519 / both\t%s of 3 stored with dkim=pass, spf=pass, dmarc=pass; e.g. `%s`\n' \
    "$ok" "$(printf '%s' "$last" | cut -c1-400)" >"$checks"
  ((ok == 3)) || log "warning: AgentKeys verified only $ok of 3 check messages; see $REAL_DATA/blobs/$OWNER/check@agents.localhost"

  inbound_run check "" "$P_PFM" "$WORK/pool/check.jsonl" per-connection 3 --rcpt check@agents.localhost
  local held=()
  for _ in $(seq 1 100); do
    mapfile -t held < <(find "$PF/spool/hold" -type f 2>/dev/null)
    ((${#held[@]} >= 3)) && break
    sleep 0.1
  done
  local pok=0 ar example=""
  for f in "${held[@]}"; do
    ar=$(postcat -c "$PF/etc" -h -q "$(basename "$f")" 2>/dev/null |
      awk '/^Authentication-Results:/ { if (p) print ""; p = 1; printf "%s", $0; next } p && /^[ \t]/ { printf " %s", $0; next } { if (p) print ""; p = 0 }' |
      tr -s ' \t\n' ' ')
    [[ -z $example ]] && example=$ar
    [[ $ar == *"dkim=pass"* && $ar == *"spf=pass"* && $ar == *"dmarc=pass"* ]] && pok=$((pok + 1))
  done
  printf 'Postfix + OpenDKIM + OpenDMARC, the same three messages\t%s of %s held copies with dkim=pass, spf=pass, dmarc=pass in their Authentication-Results; e.g. `%s`\n' \
    "$pok" "${#held[@]}" "$(printf '%s' "$example" | cut -c1-500)" >>"$checks"
  ((pok == 3)) || log "warning: Postfix + milters verified only $pok of ${#held[@]} check messages; see $WORK/milters/*.log"
  postsuper -c "$PF/etc" -d ALL hold >/dev/null 2>&1 || true
}

# A sample of the stored copies of signed mail since SINCE_FILE: how many say VERDICT.
#   sample_verdicts SINCE_FILE VERDICT LABEL
sample_verdicts() {
  local since=$1 want=$2 label=$3 files=() n=0 hit=0 f
  mapfile -t files < <(find "$REAL_DATA/blobs/$OWNER/bench@agents.localhost" -name '*.eml' -newer "$since" 2>/dev/null | shuf -n 200)
  for f in "${files[@]}"; do
    [[ $(head -c 4096 "$f") == *bench-mail.example* ]] || continue
    n=$((n + 1))
    [[ $(our_verdict "$f") == *"$want"* ]] && hit=$((hit + 1))
  done
  printf '%s\t%s of %s sampled stored copies of signed mail say `%s`\n' "$label" "$hit" "$n" "$want" >>"$RESULTS/realistic-checks.tsv"
}

run_realistic() {
  local load_before
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  log "realistic: pool of $BENCH_REAL_POOL messages from $BENCH_REAL_DOMAINS domains"
  "$POOL_BIN" --out "$WORK/pool" --messages "$BENCH_REAL_POOL" --domains "$BENCH_REAL_DOMAINS" --size "$BENCH_SIZE" \
    >"$RESULTS/realistic-pool.json" || die "inbound_pool failed"
  start_testdns healthy 53 "$WORK/pool/zone.txt"
  start_testdns silent 54 "$WORK/pool/zone.txt" --drop-every 1
  start_testdns lossy 55 "$WORK/pool/zone.txt" --drop-every 10
  start_milters
  setup_realistic_agentkeys
  start_real "$DNS_HEALTHY" healthy
  realistic_checks

  local mode run t out
  local targets=(agentkeys-plain agentkeys-verified postfix-milters)
  touch "$WORK/healthy.start"
  for mode in per-connection persistent; do
    log "realistic, $mode: warm-up ($BENCH_REAL_WARMUP messages each)"
    inbound_run warmup "" "$P_RIN" "$WORK/pool/signed.jsonl" "$mode" "$BENCH_REAL_WARMUP"
    inbound_run warmup "" "$P_PFM" "$WORK/pool/signed.jsonl" "$mode" "$BENCH_REAL_WARMUP"
    postfix_drain
    for run in $(seq 1 "$BENCH_REAL_REPEATS"); do
      for t in "${targets[@]}"; do
        out="$RESULTS/realistic-$t-$mode-$run.json"
        case $t in
          agentkeys-plain)
            inbound_run "$t" "$out" "$P_RIN" "$WORK/pool/plain.jsonl" "$mode" "$BENCH_REAL_MESSAGES" --server-pid "$REAL_PID"
            ;;
          agentkeys-verified)
            inbound_run "$t" "$out" "$P_RIN" "$WORK/pool/signed.jsonl" "$mode" "$BENCH_REAL_MESSAGES" --server-pid "$REAL_PID"
            ;;
          postfix-milters)
            inbound_run "$t" "$out" "$P_PFM" "$WORK/pool/signed.jsonl" "$mode" "$BENCH_REAL_MESSAGES" \
              --server-tree "$PF_MASTER" "$ODKIM_PID" "$ODMARC_PID"
            postfix_drain
            ;;
        esac
      done
    done
  done
  sample_verdicts "$WORK/healthy.start" "dmarc=pass" "AgentKeys, healthy DNS"

  local kind dns_var
  for kind in silent lossy; do
    stop_real
    dns_var="DNS_${kind^^}"
    start_real "${!dns_var}" "$kind"
    touch "$WORK/$kind.start"
    for mode in per-connection persistent; do
      inbound_run "sick-$kind" "$RESULTS/sick-$kind-$mode-1.json" "$P_RIN" "$WORK/pool/signed.jsonl" "$mode" \
        "$BENCH_SICK_MESSAGES" --server-pid "$REAL_PID"
    done
    if [[ $kind == silent ]]; then
      sample_verdicts "$WORK/$kind.start" "dmarc=temperror" "AgentKeys, name server never answers"
    else
      sample_verdicts "$WORK/$kind.start" "dmarc=pass" "AgentKeys, name server drops every 10th query"
    fi
  done
  stop_real

  local commit kinds
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]] && commit="$commit (with uncommitted changes)"
  kinds=$(sed -n 's/.*"rsa_only": \([0-9]*\), "ed25519_only": \([0-9]*\), "both": \([0-9]*\).*/\1 RSA-2048 only, \2 Ed25519 only, \3 both/p' \
    "$RESULTS/realistic-pool.json")
  {
    printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'commit\t%s\n' "$commit"
    printf 'command\t%s\n' "bash bench/run.sh"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    printf 'rustc\t%s\n' "$(rustc -V)"
    printf 'postfix\t%s\n' "$(postconf -d -h mail_version 2>/dev/null || echo '?')"
    printf 'opendkim\t%s\n' "$(opendkim -V 2>/dev/null | awk 'NR == 1 { print $NF }')"
    printf 'opendmarc\t%s\n' "$(opendmarc -V 2>/dev/null | awk 'NR == 1 { print $NF }')"
    printf 'load\t%s before, %s after the realistic part\n' "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'messages\t%s\n' "$BENCH_REAL_MESSAGES"
    printf 'sessions\t%s\n' "$BENCH_SESSIONS"
    printf 'repeats\t%s\n' "$BENCH_REAL_REPEATS"
    printf 'warmup\t%s\n' "$BENCH_REAL_WARMUP"
    printf 'pool\t%s\n' "$BENCH_REAL_POOL"
    printf 'pool_kinds\t%s\n' "$kinds"
    printf 'domains\t%s\n' "$BENCH_REAL_DOMAINS"
    printf 'size\t%s\n' "$BENCH_SIZE"
    printf 'dns\t%s\n' "$DNS_HEALTHY:53 (never answering: $DNS_SILENT:53; dropping every 10th query: $DNS_LOSSY:53)"
    printf 'dns_queries\thealthy %s (the name server of the milters: %s), never answering %s, lossy %s\n' "$(cat "$WORK/dns-healthy.count" 2>/dev/null)" \
      "$(cat "$WORK/dns-odkim.count" 2>/dev/null)" \
      "$(cat "$WORK/dns-silent.count" 2>/dev/null)" "$(cat "$WORK/dns-lossy.count" 2>/dev/null)"
  } >"$RESULTS/realistic-meta.tsv"
}

# ---------------------------------------------------------------- outbound
# A second `agentkeys serve` on its own fresh data directory, relaying every
# outbound message to its own smtp-sink (AGENTKEYS_SMARTHOST), so the inbound
# parts and this one do not share a queue or a sink.
setup_outbound() {
  build_agentkeys
  OUT_DATA="$WORK/outbound-data"
  mkdir -p "$OUT_DATA"
  # With a shared store: a database of its own and its own prefix in the bucket.
  [[ -n ${STORE_S3_PID:-} ]] || store_init "$WORK" "$P_S3"
  store_extra_env outbound
  OUT_ENV=("${STORE_EXTRA_ENV[@]}")
  ako() { (cd "$WORK" && env "${OUT_ENV[@]}" "$AK" --data-dir "$OUT_DATA" "$@"); }
  provision_owner "$OUT_DATA" outbound OUT_ENV
  ako agent add "$AGENT" --owner "$OWNER" >/dev/null
  local address
  address=$(ako inbox create --agent "$AGENT" --name bench --json | json_field address)
  [[ $address == "$RCPT" ]] || die "outbound: inbox create answered '$address', expected $RCPT"
  OUT_KEY=$(ako key create --agent "$AGENT" --json | json_field key)
  [[ $OUT_KEY == ak_* ]] || die "outbound: key create did not print a key"
  owner_grant "$OUT_DATA" outbound OUT_ENV

  smtp-sink -u nobody -m 200 "127.0.0.1:$P_OSINK" 1024 >"$WORK/smtp-sink-outbound.log" 2>&1 &
  OSINK_PID=$!
  PIDS+=("$OSINK_PID")
  wait_port "$P_OSINK"

  start_outbound_node outbound "$OUT_DATA" "$P_OIN" "$P_OSUB" "$P_OSUBTLS" "$P_OHTTP"
  OUT_PID=$NODE_PID
}

# Starts one outbound `agentkeys serve` relaying to the outbound smtp-sink; sets NODE_PID.
#   start_outbound_node LABEL DATA_DIR MX SUBMISSION SUBMISSION_TLS HTTP
start_outbound_node() {
  local label=$1 data=$2 p_in=$3 p_sub=$4 p_subtls=$5 p_http=$6
  cd "$WORK"
  env "${OUT_ENV[@]}" \
  AGENTKEYS_LISTEN_INBOUND="127.0.0.1:$p_in" \
  AGENTKEYS_LISTEN_SUBMISSION="127.0.0.1:$p_sub" \
  AGENTKEYS_LISTEN_SUBMISSION_TLS="127.0.0.1:$p_subtls" \
  AGENTKEYS_LISTEN_HTTP="127.0.0.1:$p_http" AGENTKEYS_LISTEN_HTTPS=off \
  AGENTKEYS_SMARTHOST="127.0.0.1:$P_OSINK" \
  AGENTKEYS_DELIVERY_ENABLED=true \
  AGENTKEYS_MAX_CONNECTIONS=100000 \
  AGENTKEYS_MAX_CONNECTIONS_PER_IP=100000 \
  AGENTKEYS_AUTH_FAILURES_PER_IP=100000000 \
    "$AK" --data-dir "$data" serve >"$WORK/agentkeys-$label.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_healthy "$NODE_PID" "$p_http" "$WORK/agentkeys-$label.log" "agentkeys serve ($label)"
  wait_port "$p_sub"
  cd "$REPO"
  log "$label: agentkeys serve (pid $NODE_PID) submission :$p_sub, smarthost smtp-sink :$P_OSINK (pid $OSINK_PID)"
}

# BENCH_NODES=2: the same outbound load through HAProxy to two nodes sharing
# the queue (a second node on the outbound database and prefix), delivered by
# whichever node's runner claims each message.
run_outbound_two_nodes() {
  OUT_DATA_B="$WORK/outbound-data-b"
  store_second_data "$OUT_DATA" "$OUT_DATA_B"
  start_outbound_node outbound-b "$OUT_DATA_B" "$P_OIN_B" "$P_OSUB_B" "$P_OSUBTLS_B" "$P_OHTTP_B"
  OUT_PID_B=$NODE_PID
  # A second HAProxy for submission; the inbound one's PID stays the one counted.
  local inbound_haproxy=${STORE_HAPROXY_PID:-}
  store_haproxy "$WORK/haproxy-outbound" "$P_OLB=$P_OSUB,$P_OSUB_B"
  STORE_HAPROXY_PID=$inbound_haproxy
  local c0 c1
  c0=$(( $(cpu_ticks "$OUT_PID") + $(cpu_ticks "$OUT_PID_B") ))
  log "outbound, two nodes: $BENCH_OUT_MESSAGES messages over $BENCH_OUT_SESSIONS sessions through HAProxy :$P_OLB"
  timeout $((2 * BENCH_OUT_TIMEOUT + 30)) "$LOADGEN" submit --addr "127.0.0.1:$P_OLB" --user "$RCPT" --pass "$OUT_KEY" \
    --to "$OUT_RCPT" --count "$BENCH_OUT_MESSAGES" --concurrency "$BENCH_OUT_SESSIONS" --size "$BENCH_SIZE" \
    --max-duration "${BENCH_OUT_TIMEOUT}s" --label two-nodes \
    --metrics-url "http://127.0.0.1:$P_OHTTP/metrics" --metrics-url "http://127.0.0.1:$P_OHTTP_B/metrics" \
    --deliver-timeout "${BENCH_OUT_TIMEOUT}s" --out "$RESULTS/outbound-2nodes.json" >/dev/null || log "outbound submit (two nodes) failed"
  c1=$(( $(cpu_ticks "$OUT_PID") + $(cpu_ticks "$OUT_PID_B") ))
  printf 'two_nodes_server_cpu_seconds\t%s\n' "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", (b - a) / 100 }')" \
    >>"$RESULTS/outbound-meta.tsv"
}

# User + system CPU ticks of PID (0 when gone).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

run_outbound() {
  local load_before
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  log "outbound: DKIM signing rate per core (dkim_rate example)"
  local dkim_rate=(cargo run --release -q -p agentkeys-delivery --example dkim_rate --)
  [[ -n ${DKIM_RATE_BIN:-} ]] && dkim_rate=("$DKIM_RATE_BIN")
  (cd "$REPO" && timeout 600 "${dkim_rate[@]}" --count 5000 --seconds 3 --size "$BENCH_SIZE") \
    >"$RESULTS/dkim-rate.jsonl" || log "dkim_rate failed"
  # One untimed message end to end first: creates the DKIM keys, checks the relay.
  timeout 60 "$LOADGEN" submit --addr "127.0.0.1:$P_OSUB" --user "$RCPT" --pass "$OUT_KEY" --to "$OUT_RCPT" \
    --count 1 --concurrency 1 --size "$BENCH_SIZE" --max-duration 30s \
    --metrics-url "http://127.0.0.1:$P_OHTTP/metrics" --deliver-timeout 30s --label probe \
    --out "$RESULTS/outbound-probe.json" >/dev/null || die "outbound probe failed; see $WORK/agentkeys-outbound.log"
  grep -q '"all_delivered": true' "$RESULTS/outbound-probe.json" \
    || die "outbound probe was not delivered to smtp-sink; see $WORK/agentkeys-outbound.log"
  timeout 60 sync || true
  log "outbound: $BENCH_OUT_MESSAGES messages over $BENCH_OUT_SESSIONS sessions to $OUT_RCPT"
  timeout $((2 * BENCH_OUT_TIMEOUT + 30)) "$LOADGEN" submit --addr "127.0.0.1:$P_OSUB" --user "$RCPT" --pass "$OUT_KEY" \
    --to "$OUT_RCPT" --count "$BENCH_OUT_MESSAGES" --concurrency "$BENCH_OUT_SESSIONS" --size "$BENCH_SIZE" \
    --max-duration "${BENCH_OUT_TIMEOUT}s" --server-pid "$OUT_PID" \
    --metrics-url "http://127.0.0.1:$P_OHTTP/metrics" --deliver-timeout "${BENCH_OUT_TIMEOUT}s" \
    --out "$RESULTS/outbound.json" >/dev/null || log "outbound submit failed"
  local queue_left
  queue_left=$( (cd "$WORK" && env "${OUT_ENV[@]}" "$AK" --data-dir "$OUT_DATA" queue list --json 2>/dev/null) | grep -o '"state": *"[a-z]*"' | grep -vc delivered || true)
  log "outbound: queue rows not delivered afterwards: $queue_left"
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]] && commit="$commit (with uncommitted changes)"
  {
    printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'commit\t%s\n' "$commit"
    printf 'command\t%s\n' "bash bench/run.sh"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    printf 'rustc\t%s\n' "$(rustc -V)"
    printf 'load\t%s before, %s after the outbound part\n' "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'rcpt\t%s\n' "$OUT_RCPT"
  } >"$RESULTS/outbound-meta.tsv"
  if ((BENCH_NODES == 2)) && store_is_shared; then
    run_outbound_two_nodes
  fi
}

# One node against two (BENCH_NODES=2), same run: signed and delivered per second.
outbound_two_nodes_report() {
  python3 - "$RESULTS/outbound.json" "$RESULTS/outbound-2nodes.json" <<'PY'
import json, sys
one, two = (json.load(open(p)) for p in sys.argv[1:3])
def row(name, r):
    return (f"| {name} | {r.get('delivered_per_second') or 0:,.0f} | {r.get('submit_latency_p50_ms') or 0:.1f} / "
            f"{r.get('submit_latency_p99_ms') or 0:.1f} ms | {r.get('delivered')} of {r.get('accepted')} | {r.get('errors')} |")
print("\n| outbound, same run | signed and delivered/s | submission p50 / p99 | delivered | errors |")
print("|---|---:|---|---|---:|")
print(row("one node (direct)", one))
print(row("two nodes (HAProxy → both)", two))
a, b = one.get("delivered_per_second") or 0, two.get("delivered_per_second") or 0
print(f"\nTwo nodes / one node: **{b / a:.2f}**." if a else "")
PY
}

# ---------------------------------------------------------------- main
install_prerequisites
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log "building the load generator"
cargo build --release --locked --manifest-path "$BENCH/loadgen/Cargo.toml" --target-dir "$LOADGEN_TARGET_DIR" >&2

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
  log "warning: load average $LOAD_START on $(nproc) CPUs; other work on this machine will skew the figures"
fi

# ext4 without a journal (this machine) skips, one by one, inodes freed in the
# last 60 s (360 s while their inode table block is dirty) when it allocates
# new ones, and the allocator prefers the block groups with the most free
# inodes: the ones a cleanup just emptied. A run started right after the
# previous run removed its work directory (tens of thousands of files) pays
# that on every message it stores (measured: persistent-connection throughput
# 5,700/s instead of 11,000/s). So a run waits until the previous cleanup is
# BENCH_SETTLE seconds old.
SETTLE_STAMP="$BENCH_WORKDIR/agentkeys-bench.cleaned"
if [[ -f $SETTLE_STAMP ]]; then
  since=$(($(date +%s) - $(stat -c %Y "$SETTLE_STAMP")))
  if ((since < BENCH_SETTLE)); then
    log "the previous run removed its files ${since}s ago; waiting $((BENCH_SETTLE - since))s (BENCH_SETTLE)"
    sleep $((BENCH_SETTLE - since))
  fi
fi
WORK=$(mktemp -d "$BENCH_WORKDIR/agentkeys-bench.XXXXXX")
# Each server's files in block groups of their own (ext2/3/4: the Orlov
# allocator spreads the subdirectories of a "top directory" across groups), so
# one peer's deleted files never slow another's inode allocation. This matters
# on an ext4 without a journal (this machine's root): there the allocator skips
# inodes freed in the last 60-360 s one by one, and Postfix frees one queue file
# per message. Every peer gets the same treatment; elsewhere it is a no-op.
chattr +T "$WORK" 2>/dev/null || log "note: cannot set the top-directory attribute on $WORK (not ext2/3/4?)"
WORK=$(cd "$WORK" && pwd)
chmod 755 "$WORK" # the postfix user must reach its queue and sasldb
FSTYPE=$(stat -f -c %T "$WORK")
[[ $FSTYPE == tmpfs ]] && log "warning: $WORK is on tmpfs, so fsync costs nothing; set BENCH_WORKDIR"

rm -rf "$RESULTS"
mkdir -p "$RESULTS"
if [[ -n $BENCH_PORT_BASE ]]; then
  # A fixed range (a shared machine may assign each user one): BASE .. BASE+18.
  read -r P_SINK P_PF P_PFSUB P_IN P_SUB P_SUBTLS P_HTTP P_OSINK P_OIN P_OSUB P_OSUBTLS P_OHTTP \
    P_PFM P_ODKIM P_ODMARC P_RIN P_RSUB P_RSUBTLS P_RHTTP \
    P_S3 P_IN_B P_SUB_B P_SUBTLS_B P_HTTP_B P_LB1 P_LB2 P_CPG P_CS3 P_IN_C P_SUB_C P_SUBTLS_C P_HTTP_C \
    P_IN_W P_SUB_W P_SUBTLS_W P_HTTP_W P_WRX P_OIN_B P_OSUB_B P_OSUBTLS_B P_OHTTP_B P_OLB \
    < <(seq -s ' ' "$BENCH_PORT_BASE" $((BENCH_PORT_BASE + 41)))
else
  read -r P_SINK P_PF P_PFSUB P_IN P_SUB P_SUBTLS P_HTTP P_OSINK P_OIN P_OSUB P_OSUBTLS P_OHTTP \
    P_PFM P_ODKIM P_ODMARC P_RIN P_RSUB P_RSUBTLS P_RHTTP \
    P_S3 P_IN_B P_SUB_B P_SUBTLS_B P_HTTP_B P_LB1 P_LB2 P_CPG P_CS3 P_IN_C P_SUB_C P_SUBTLS_C P_HTTP_C \
    P_IN_W P_SUB_W P_SUBTLS_W P_HTTP_W P_WRX P_OIN_B P_OSUB_B P_OSUBTLS_B P_OHTTP_B P_OLB \
    < <("$LOADGEN" free-ports --count 42)
fi

has_part agentkeys && setup_agentkeys
if has_part agentkeys && ((BENCH_WEBHOOKS > 0)); then
  { store_is_shared || ((BENCH_NODES == 2)); } && die "BENCH_WEBHOOKS needs the default store and one node"
  setup_webhooks_node
fi
has_part realistic && build_realistic_tools
has_part sink && start_sink
if has_part postfix || has_part realistic; then
  setup_postfix
  start_postfix
fi
has_part agentkeys && start_agentkeys
has_part agentkeys && ((BENCH_WEBHOOKS > 0)) && start_webhooks_node
# Counted first, while the bucket is nearly empty: a node's start-up
# reconciliation lists every inbox in S3, and through the counting proxy that
# took 30 s with 31,000 messages and over 120 s with 62,000.
if has_part agentkeys && store_is_shared && [[ $BENCH_COUNT == 1 ]]; then run_count_phase; fi
has_part outbound && setup_outbound

# Idle connections first, while the servers are fresh (VmHWM is reset anyway).
if has_part agentkeys; then
  log "idle: $BENCH_IDLE_CONNECTIONS connections to agentkeys MX"
  timeout 180 "$LOADGEN" idle --addr "127.0.0.1:$P_IN" --connections "$BENCH_IDLE_CONNECTIONS" \
    --server-pid "$AK_PID" --reset-hwm --label agentkeys-inbound --out "$RESULTS/idle.json" >/dev/null \
    || log "idle (agentkeys, inbound) failed"
  log "idle: $BENCH_IDLE_CONNECTIONS STARTTLS connections to agentkeys submission"
  timeout 180 "$LOADGEN" idle --addr "127.0.0.1:$P_SUB" --connections "$BENCH_IDLE_CONNECTIONS" --starttls \
    --server-pid "$AK_PID" --reset-hwm --label agentkeys-submission --out "$RESULTS/idle-tls.json" >/dev/null \
    || log "idle (agentkeys, submission) failed"
fi
if has_part sink; then
  log "idle: $BENCH_IDLE_CONNECTIONS connections to smtp-sink (reference)"
  timeout 180 "$LOADGEN" idle --addr "127.0.0.1:$P_SINK" --connections "$BENCH_IDLE_CONNECTIONS" \
    --server-pid "$SINK_PID" --reset-hwm --label smtp-sink --out "$RESULTS/idle-sink.json" >/dev/null \
    || log "idle (smtp-sink) failed"
fi

# Submission handshakes.
hs_timeout=$((BENCH_HANDSHAKE_SECONDS + 60))
if has_part postfix; then
  log "handshakes: Postfix submission, ${BENCH_HANDSHAKE_SECONDS}s"
  timeout "$hs_timeout" "$LOADGEN" handshakes --addr "127.0.0.1:$P_PFSUB" --user "$RCPT" --pass "$PF_PASS" \
    --concurrency "$BENCH_HANDSHAKE_CONCURRENCY" --duration "${BENCH_HANDSHAKE_SECONDS}s" \
    --out "$RESULTS/handshakes-postfix.json" >/dev/null || log "handshakes (Postfix) failed"
fi
if has_part agentkeys; then
  log "handshakes: agentkeys submission, ${BENCH_HANDSHAKE_SECONDS}s"
  timeout "$hs_timeout" "$LOADGEN" handshakes --addr "127.0.0.1:$P_SUB" --user "$RCPT" --pass "$AK_KEY" --server-pid "$AK_PID" \
    --concurrency "$BENCH_HANDSHAKE_CONCURRENCY" --duration "${BENCH_HANDSHAKE_SECONDS}s" \
    --out "$RESULTS/handshakes.json" >/dev/null || log "handshakes (agentkeys) failed"
  log "auth-timing: $BENCH_AUTH_ROUNDS attempts per demo-seed case"
  timeout 120 "$LOADGEN" auth-timing --addr "127.0.0.1:$P_SUB" --cases "$WORK/auth-cases.json" \
    --rounds "$BENCH_AUTH_ROUNDS" --lanes 4 --max-duration 90s --out "$RESULTS/auth-timing.json" >/dev/null \
    || log "auth-timing failed"
fi

# Inbound throughput: warm up, then alternate the servers run by run so slow
# drift of the machine affects all of them alike.
targets=()
has_part sink && targets+=("smtp-sink:$P_SINK")
has_part postfix && targets+=("postfix:$P_PF")
if has_part agentkeys; then
  ((BENCH_NODES == 2)) && targets+=("agentkeys-1:$P_LB1")
  targets+=("agentkeys:$AK_MX")
  ((BENCH_WEBHOOKS > 0)) && targets+=("agentkeys-webhooks:$P_IN_W")
fi
: >"$RESULTS/throughput.tsv"
for mode in per-connection persistent; do
  log "throughput, $mode: warm-up ($BENCH_WARMUP messages each)"
  for t in "${targets[@]}"; do
    run_source "${t%%:*}" "$mode" "${t##*:}" warmup "$BENCH_WARMUP" || true
    [[ ${t%%:*} == postfix ]] && postfix_drain
  done
  has_part agentkeys && store_analyze
  for run in $(seq 1 "$BENCH_REPEATS"); do
    for t in "${targets[@]}"; do
      run_source "${t%%:*}" "$mode" "${t##*:}" "$run" "$BENCH_MESSAGES"
      [[ ${t%%:*} == postfix ]] && postfix_drain
    done
  done
done

# Counted before the realistic part, whose Postfix deliveries go to the same log.
PF_SENT_MAIN=0
has_part postfix && PF_SENT_MAIN=$(grep -c "status=sent" "$PF/maillog" || true)

# Realistic inbound: its own server, DNS servers and milters.
has_part realistic && run_realistic

# Outbound last, alone on the machine apart from idle servers.
has_part outbound && run_outbound

# Accounting: every message smtp-source sent was accepted and is where it should be.
sent=$((2 * BENCH_WARMUP + 2 * BENCH_REPEATS * BENCH_MESSAGES))
accounting=()
if has_part postfix; then
  # +1: the probe message sent before the warm-up.
  accounting+=("Postfix delivered $PF_SENT_MAIN of $((sent + 1)) messages to discard(8)")
fi
if has_part agentkeys; then
  kill -0 "$AK_PID" 2>/dev/null || die "agentkeys serve died during the run; see $WORK/agentkeys.log"
  ak_hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$AK_PID/status")
  log "agentkeys VmHWM after the whole run: ${ak_hwm} kB"
  # The blob store keeps one .eml per delivered message (files under blobs/, or
  # s3s-fs's files under the bucket); the index one row per message.
  ak_sent=$(( (BENCH_NODES == 2 ? 2 : 1) * sent ))
  store_is_shared && [[ $BENCH_COUNT == 1 ]] && ak_sent=$((ak_sent + 2 * BENCH_COUNT_MESSAGES))
  ak_stored=$(store_count_eml "$AK_DATA")
  ak_indexed=$(store_query "$AK_DATA" "SELECT count(*) FROM messages" 2>/dev/null || echo '?')
  accounting+=("AgentKeys ($BENCH_STORE, $BENCH_NODES node(s)) stored $ak_stored of $ak_sent messages (.eml objects in its blob store), $ak_indexed index rows")
  if ((BENCH_WEBHOOKS > 0)); then
    kill -0 "$AK_PID_W" 2>/dev/null || die "agentkeys serve (webhooks) died during the run; see $WORK/agentkeys-webhooks.log"
    accounting+=("AgentKeys with webhooks stored $(store_count_eml "$AK_DATA_W") of $sent messages, $(sqlite3 "$AK_DATA_W/meta.sqlite" "SELECT count(*) FROM messages") index rows")
  fi
fi
for line in "${accounting[@]}"; do log "$line"; done

# ---------------------------------------------------------------- report
commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]] && commit="$commit (with uncommitted changes)"
{
  printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'commit\t%s\n' "$commit"
  printf 'command\t%s\n' "bash bench/run.sh"
  printf 'nproc\t%s\n' "$(nproc)"
  printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  printf 'memory\t%s\n' "$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  printf 'kernel\t%s\n' "$(uname -r)"
  printf 'filesystem\t%s\n' "$FSTYPE"
  printf 'load\t%s at start, %s at end\n' "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'rustc\t%s\n' "$(rustc -V)"
  printf 'postfix\t%s\n' "$(postconf -d -h mail_version 2>/dev/null || echo '?')"
  printf 'messages\t%s\n' "$BENCH_MESSAGES"
  printf 'sessions\t%s\n' "$BENCH_SESSIONS"
  printf 'owners\t%s (inbound recipients in as many owners)\n' "$BENCH_OWNERS"
  printf 'size\t%s\n' "$BENCH_SIZE"
  printf 'repeats\t%s\n' "$BENCH_REPEATS"
  acc_text=""
  ((${#accounting[@]})) && acc_text=$(printf '%s; ' "${accounting[@]}")
  printf 'accounting\t%s\n' "${acc_text%; }"
  printf 'store\t%s\n' "$BENCH_STORE"
  printf 'nodes\t%s\n' "$BENCH_NODES"
  store_is_shared && printf 'pg_analyze\t%s\n' "$BENCH_PG_ANALYZE"
} >"$RESULTS/meta.tsv"

"$LOADGEN" report --dir "$RESULTS" >"$RESULTS/main.md"
cp "$RESULTS/main.md" "$RESULTS/latest.md"
if has_part realistic; then
  "$LOADGEN" report --dir "$RESULTS" --realistic >"$RESULTS/realistic.md"
  { printf '\n### Realistic inbound\n\n'; cat "$RESULTS/realistic.md"; } >>"$RESULTS/latest.md"
fi
if has_part outbound; then
  "$LOADGEN" report --dir "$RESULTS" --outbound >"$RESULTS/outbound.md"
  [[ -s $RESULTS/outbound-2nodes.json ]] && outbound_two_nodes_report >>"$RESULTS/outbound.md"
  { printf '\n### Outbound\n\n'; cat "$RESULTS/outbound.md"; } >>"$RESULTS/latest.md"
fi
if has_part agentkeys && ((BENCH_WEBHOOKS > 0)); then
  # The receiver writes its count when stopped.
  kill "$WRX_PID" 2>/dev/null && for _ in $(seq 1 50); do [[ -s $RESULTS/webhook-sink-count.txt ]] && break; sleep 0.1; done
  webhooks_report >"$RESULTS/webhooks.md"
  { printf '\n### Inbound with webhooks\n\n'; cat "$RESULTS/webhooks.md"; } >>"$RESULTS/latest.md"
fi
cat "$RESULTS/latest.md"

# Splices FILE between the lines BEGIN and END of BENCHMARKS.md.
splice() {
  local begin=$1 end=$2 file=$3 doc="$REPO/BENCHMARKS.md"
  if grep -qF "$begin" "$doc" && grep -qF "$end" "$doc"; then
    awk -v begin="$begin" -v end="$end" -v file="$file" '
      $0 == begin { print; while ((getline line < file) > 0) print line; skip = 1; next }
      $0 == end { skip = 0 }
      !skip { print }
    ' "$doc" >"$doc.tmp" && mv "$doc.tmp" "$doc"
    return 0
  fi
  return 1
}

if has_part outbound && [[ -s $RESULTS/outbound.md ]]; then
  if splice '<!-- BEGIN OUTBOUND RESULTS (written by bench/run.sh) -->' '<!-- END OUTBOUND RESULTS -->' "$RESULTS/outbound.md"; then
    log "outbound results written to BENCHMARKS.md"
  else
    log "BENCHMARKS.md has no outbound result markers; results are in $RESULTS/outbound.md"
  fi
fi

if has_part realistic && [[ -s $RESULTS/realistic.md ]]; then
  if splice '<!-- BEGIN REALISTIC RESULTS (written by bench/run.sh) -->' '<!-- END REALISTIC RESULTS -->' "$RESULTS/realistic.md"; then
    log "realistic results written to BENCHMARKS.md"
  else
    log "BENCHMARKS.md has no realistic result markers; results are in $RESULTS/realistic.md"
  fi
fi

if has_part agentkeys && ((BENCH_WEBHOOKS > 0)) && [[ -s $RESULTS/webhooks.md ]]; then
  if splice '<!-- BEGIN WEBHOOK RESULTS (written by bench/run.sh) -->' '<!-- END WEBHOOK RESULTS -->' "$RESULTS/webhooks.md"; then
    log "webhook results written to BENCHMARKS.md"
  else
    log "BENCHMARKS.md has no webhook result markers; results are in $RESULTS/webhooks.md"
  fi
fi

if has_part agentkeys && has_part postfix && has_part sink; then
  if splice '<!-- BEGIN RESULTS (written by bench/run.sh) -->' '<!-- END RESULTS -->' "$RESULTS/main.md"; then
    log "results written to BENCHMARKS.md and $RESULTS/latest.md"
  else
    log "BENCHMARKS.md has no result markers; results are in $RESULTS/latest.md"
  fi
else
  log "partial run ($BENCH_PARTS): results in $RESULTS/latest.md only"
fi

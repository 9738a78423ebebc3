#!/usr/bin/env bash
# MX `250` -> `extract_otp` returning in the daemon (p50/p99), with the bare
# `250` -> SSE event time as the peer, measured alternately in one run.
#
#   bash bench/otp_latency.sh            # ROUNDS=200 per measurement (default)
#
# Builds the release binary and the `otp_latency` example, starts a private
# server on free loopback ports in a temporary directory, provisions an owner,
# an agent, an inbox, a key and a read grant, runs the example (bounded: at most
# 2,000 rounds each and 5 minutes), prints its JSON, stops the server it started
# and removes the directory.
#
# Knobs (environment):
#   ROUNDS=200  PROFILE=release|debug
#   AGENTKEYS_BIN=path OTP_LATENCY_BIN=path  prebuilt server / example (no cargo build)
#   BENCH_WORKDIR=/var/tmp (a real disk: the store fsyncs)   BENCH_RESULTS=dir (the JSON is
#     also written there as otp-latency.json)   BENCH_PORT_BASE=N (s3s-fs on N)
#   BENCH_STORE=sqlite|postgres+s3, BENCH_NODES=1|2, BENCH_PG, BENCH_PG_PARAMS: bench/store.sh.
#     With BENCH_NODES=2 a second node shares the database and bucket; the mail is
#     accepted by node A's MX and the waiter (and the peer's SSE subscriber) talk
#     to node B's HTTP API, so the event crosses nodes through PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="$PWD/bench"

ROUNDS="${ROUNDS:-200}"
PROFILE="${PROFILE:-release}"   # PROFILE=debug only to check the script itself; numbers come from release
BENCH_WORKDIR=${BENCH_WORKDIR:-/var/tmp}
log() { printf '[otp %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=bench/store.sh
source "$BENCH/store.sh"

if [ "$PROFILE" = release ]; then FLAG=--release; else FLAG=; fi
if [ -z "${AGENTKEYS_BIN:-}" ]; then cargo build $FLAG -q -p agentkeys-cli --bin agentkeys; fi
if [ -z "${OTP_LATENCY_BIN:-}" ]; then cargo build $FLAG -q -p agentkeys-agent --example otp_latency; fi
BIN="${AGENTKEYS_BIN:-$PWD/target/$PROFILE/agentkeys}"
EXAMPLE="${OTP_LATENCY_BIN:-$PWD/target/$PROFILE/examples/otp_latency}"

WORK="$(mktemp -d "$BENCH_WORKDIR/agentkeys-otp.XXXXXX")"
SERVER_PIDS=()
cleanup() {
  set +e
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  store_cleanup
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${BENCH_PORT_BASE:-}" ]; then
  P_S3=$BENCH_PORT_BASE
else
  P_S3=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
store_init "$WORK" "$P_S3"

ak() { env -u AGENTKEYS_SERVER -u AGENTKEYS_AGENT_KEY "${STORE_ENV[@]}" "$BIN" --data-dir "$WORK/data" "$@"; }
OWNER=0x0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b
AGENT=0x0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
# Grants need the owner's signature: enroll a master key (sealed under a random
# passphrase in the work directory), then sign `grant create` locally.
export AGENTKEYS_CONFIG_DIR="$WORK/owner"
PASSFILE="$WORK/passphrase"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PASSFILE"
chmod 600 "$PASSFILE"
CODE="$(ak owner add "$OWNER" --json | field enrollment_code)"
store_local_owner_marker "$WORK/data"
ak owner enroll --owner "$OWNER" --code "$CODE" --passphrase-file "$PASSFILE" --json >/dev/null
ak agent add "$AGENT" --owner "$OWNER" --json >/dev/null
INBOX="$(ak inbox create --agent "$AGENT" --name otpbench --json | field address)"
KEY="$(ak key create --agent "$AGENT" --json | field key)"
ak grant create --agent "$AGENT" --inbox "$INBOX" --scopes read --owner "$OWNER" --passphrase-file "$PASSFILE" --json >/dev/null

# Starts a node on DATA_DIR; sets NODE_MX and NODE_HTTP.   start_node LABEL DATA_DIR
start_node() {
  local label=$1 data=$2 out="$WORK/serve-$1.out"
  env "${STORE_ENV[@]}" AGENTKEYS_LISTEN_INBOUND=127.0.0.1:0 AGENTKEYS_LISTEN_SUBMISSION=127.0.0.1:0 \
  AGENTKEYS_LISTEN_SUBMISSION_TLS=127.0.0.1:0 AGENTKEYS_LISTEN_HTTP=127.0.0.1:0 AGENTKEYS_LISTEN_HTTPS=off \
  AGENTKEYS_DELIVERY_ENABLED=false AGENTKEYS_LOG=warn \
    "$BIN" --data-dir "$data" serve >"$out" 2>"$WORK/serve-$label.err" &
  SERVER_PIDS+=("$!")
  for _ in $(seq 1 300); do
    grep -q "HTTP" "$out" 2>/dev/null && grep -q "inbound MX" "$out" && break
    sleep 0.1
  done
  NODE_MX="$(awk '/inbound MX/ {for (i=1;i<=NF;i++) if ($i ~ /^127\.0\.0\.1:/) {print $i; exit}}' "$out")"
  NODE_HTTP="$(awk '/HTTP/ {for (i=1;i<=NF;i++) if ($i ~ /^127\.0\.0\.1:/) {print $i; exit}}' "$out")"
  [ -n "$NODE_MX" ] && [ -n "$NODE_HTTP" ] || { echo "the server ($label) did not start:"; cat "$out" "$WORK/serve-$label.err"; exit 1; }
}

start_node a "$WORK/data"
MX=$NODE_MX
HTTP=$NODE_HTTP
if [ "$BENCH_NODES" = 2 ]; then
  store_second_data "$WORK/data" "$WORK/data-b"
  start_node b "$WORK/data-b"
  HTTP=$NODE_HTTP
  log "mail to node A's MX $MX, waiter and subscriber on node B's HTTP $HTTP"
fi

echo "cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg); store: $BENCH_STORE; nodes: $BENCH_NODES" >&2
OUT="$WORK/otp-latency.json"
AGENTKEYS_SERVER="http://$HTTP" AGENTKEYS_AGENT_KEY="$KEY" BENCH_INBOX="$INBOX" BENCH_MX="$MX" BENCH_ROUNDS="$ROUNDS" \
  "$EXAMPLE" | tee "$OUT"
if [ -n "${BENCH_RESULTS:-}" ]; then
  mkdir -p "$BENCH_RESULTS"
  cp "$OUT" "$BENCH_RESULTS/otp-latency.json"
fi

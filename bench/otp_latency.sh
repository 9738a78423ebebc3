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
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-200}"
PROFILE="${PROFILE:-release}"   # PROFILE=debug only to check the script itself; numbers come from release
if [ "$PROFILE" = release ]; then FLAG=--release; else FLAG=; fi
cargo build $FLAG -q -p agentkeys-cli --bin agentkeys
cargo build $FLAG -q -p agentkeys-agent --example otp_latency
BIN="$PWD/target/$PROFILE/agentkeys"
EXAMPLE="$PWD/target/$PROFILE/examples/otp_latency"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

ak() { env -u AGENTKEYS_SERVER -u AGENTKEYS_AGENT_KEY "$BIN" --data-dir "$WORK/data" "$@"; }
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
ak owner enroll --owner "$OWNER" --code "$CODE" --passphrase-file "$PASSFILE" --json >/dev/null
ak agent add "$AGENT" --owner "$OWNER" --json >/dev/null
INBOX="$(ak inbox create --agent "$AGENT" --name otpbench --json | field address)"
KEY="$(ak key create --agent "$AGENT" --json | field key)"
ak grant create --agent "$AGENT" --inbox "$INBOX" --scopes read --owner "$OWNER" --passphrase-file "$PASSFILE" --json >/dev/null

AGENTKEYS_LISTEN_INBOUND=127.0.0.1:0 AGENTKEYS_LISTEN_SUBMISSION=127.0.0.1:0 \
AGENTKEYS_LISTEN_SUBMISSION_TLS=127.0.0.1:0 AGENTKEYS_LISTEN_HTTP=127.0.0.1:0 AGENTKEYS_LISTEN_HTTPS=off \
AGENTKEYS_DELIVERY_ENABLED=false AGENTKEYS_LOG=warn \
  "$BIN" --data-dir "$WORK/data" serve >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
for _ in $(seq 1 300); do
  grep -q "HTTP" "$WORK/serve.out" 2>/dev/null && grep -q "inbound MX" "$WORK/serve.out" && break
  sleep 0.1
done
MX="$(awk '/inbound MX/ {for (i=1;i<=NF;i++) if ($i ~ /^127\.0\.0\.1:/) {print $i; exit}}' "$WORK/serve.out")"
HTTP="$(awk '/HTTP/ {for (i=1;i<=NF;i++) if ($i ~ /^127\.0\.0\.1:/) {print $i; exit}}' "$WORK/serve.out")"
[ -n "$MX" ] && [ -n "$HTTP" ] || { echo "the server did not start:"; cat "$WORK/serve.out" "$WORK/serve.err"; exit 1; }

echo "cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
AGENTKEYS_SERVER="http://$HTTP" AGENTKEYS_AGENT_KEY="$KEY" BENCH_INBOX="$INBOX" BENCH_MX="$MX" BENCH_ROUNDS="$ROUNDS" \
  "$EXAMPLE"

#!/usr/bin/env bash
# Instructions per inbound message on the MX path, counted by callgrind: a
# measure that does not depend on how busy the machine is (wall-clock figures
# on a shared machine do), to judge a CPU change before keeping it.
#
#   bash bench/profile_mx.sh                 # release build of this tree
#   AGENTKEYS_BIN=path bash bench/profile_mx.sh
#
# Starts `agentkeys serve` under `valgrind --tool=callgrind` with instrumentation
# off, provisions the inbox bench@agents.localhost, warms up, then turns
# collection on, sends PROFILE_MESSAGES messages with Postfix's smtp-source
# (PROFILE_SESSIONS sessions, 10 KB, from loadgen.localhost: no DNS lookups;
# `-d` for persistent connections when PROFILE_MODE=persistent), dumps, and
# prints the instructions per message (everything the server process executed
# while the messages went through, every thread, the kernel's work excluded)
# and the functions with the most inclusive and self cost. The callgrind file
# stays in PROFILE_OUT for callgrind_annotate or kcachegrind.
#
# Knobs: PROFILE_MESSAGES=1000 PROFILE_WARMUP=200 PROFILE_SESSIONS=4
#        PROFILE_MODE=per-connection|persistent PROFILE_OUT=bench/results/profile
#        PROFILE_PORT_BASE=N (ports N..N+3 instead of free ones)
# Loopback only, free ports, bounded; stops only the server it started.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AK="${AGENTKEYS_BIN:-$REPO/target/release/agentkeys}"
PROFILE_MESSAGES=${PROFILE_MESSAGES:-1000}
PROFILE_WARMUP=${PROFILE_WARMUP:-200}
PROFILE_SESSIONS=${PROFILE_SESSIONS:-4}
PROFILE_MODE=${PROFILE_MODE:-per-connection}
PROFILE_OUT=${PROFILE_OUT:-$REPO/bench/results/profile}
OWNER="0xbe4c000000000000000000000000000000000001"
AGENT="0xbe4c0000000000000000000000000000000000a1"

log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v valgrind >/dev/null || die "valgrind is required (apt-get install valgrind)"
command -v smtp-source >/dev/null || die "smtp-source is required (apt-get install postfix)"
if [[ -z ${AGENTKEYS_BIN:-} ]]; then
  (cd "$REPO" && cargo build --release -p agentkeys-cli) >&2
fi
[[ -x $AK ]] || die "$AK not built"

WORK=$(mktemp -d /var/tmp/agentkeys-profile.XXXXXX)
PID=""
cleanup() {
  set +e
  [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$PROFILE_OUT"
DATA="$WORK/data"
ak() { (cd "$WORK" && "$AK" --data-dir "$DATA" "$@"); }

# An owner (enrolled), an agent and the inbox.
code=$(ak owner add "$OWNER" --json | sed -n 's/.*"enrollment_code"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/pass"
(cd "$WORK" && AGENTKEYS_CONFIG_DIR="$WORK/owner" "$AK" --data-dir "$DATA" owner enroll --owner "$OWNER" --code "$code" \
  --passphrase-file "$WORK/pass" --json) >/dev/null
ak agent add "$AGENT" --owner "$OWNER" >/dev/null
ak inbox create --agent "$AGENT" --name bench >/dev/null

if [[ -n ${PROFILE_PORT_BASE:-} ]]; then
  read -r P_IN P_SUB P_TLS P_HTTP < <(seq -s ' ' "$PROFILE_PORT_BASE" $((PROFILE_PORT_BASE + 3)))
else
  read -r P_IN P_SUB P_TLS P_HTTP < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
fi

OUT="$PROFILE_OUT/callgrind.out.$PROFILE_MODE"
rm -f "$OUT"*
(cd "$WORK" && AGENTKEYS_LISTEN_INBOUND="127.0.0.1:$P_IN" AGENTKEYS_LISTEN_SUBMISSION="127.0.0.1:$P_SUB" \
  AGENTKEYS_LISTEN_SUBMISSION_TLS="127.0.0.1:$P_TLS" AGENTKEYS_LISTEN_HTTP="127.0.0.1:$P_HTTP" AGENTKEYS_LISTEN_HTTPS=off \
  AGENTKEYS_MAX_CONNECTIONS_PER_IP=100000 AGENTKEYS_DELIVERY_ENABLED=false \
  exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" \
  "$AK" --data-dir "$DATA" serve) >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 600); do
  (exec 3<>"/dev/tcp/127.0.0.1/$P_IN") 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; die "the server exited"; }
  sleep 0.1
done

source_args=(-s "$PROFILE_SESSIONS" -l 10240 -f sender@loadgen.localhost -t bench@agents.localhost -M loadgen.localhost)
[[ $PROFILE_MODE == persistent ]] && source_args=(-d "${source_args[@]}")
log "warm-up: $PROFILE_WARMUP messages"
timeout 600 smtp-source "${source_args[@]}" -m "$PROFILE_WARMUP" "127.0.0.1:$P_IN"
callgrind_control --instr=on "$PID" >/dev/null
log "measuring: $PROFILE_MESSAGES messages, $PROFILE_MODE, $PROFILE_SESSIONS sessions"
timeout 1200 smtp-source "${source_args[@]}" -m "$PROFILE_MESSAGES" "127.0.0.1:$P_IN"
callgrind_control --dump=measured "$PID" >/dev/null
callgrind_control --instr=off "$PID" >/dev/null
sleep 1
stored=$(find "$DATA/blobs" -name '*.eml' | wc -l)
((stored == PROFILE_WARMUP + PROFILE_MESSAGES)) || die "stored $stored of $((PROFILE_WARMUP + PROFILE_MESSAGES)) messages"

# Sum the "totals:"/"summary:" lines of the dumps taken while measuring.
total=0
for f in "$OUT"*; do
  grep -q '^desc: Trigger: .*measured' "$f" 2>/dev/null || continue
  n=$(awk '/^(summary|totals):/ { print $2; exit }' "$f")
  total=$((total + ${n:-0}))
done
((total > 0)) || die "no measured dump in $OUT*"
per=$((total / PROFILE_MESSAGES))
log "instructions: $total for $PROFILE_MESSAGES messages = $per per message ($PROFILE_MODE)"
printf '%s\t%s\t%s\t%s\n' "$PROFILE_MODE" "$PROFILE_MESSAGES" "$total" "$per" >>"$PROFILE_OUT/instructions.tsv"
for f in "$OUT"*; do
  grep -q '^desc: Trigger: .*measured' "$f" 2>/dev/null || continue
  callgrind_annotate --inclusive=yes "$f" 2>/dev/null | head -60 >"$PROFILE_OUT/inclusive-$PROFILE_MODE-$(basename "$f").txt" || true
  callgrind_annotate "$f" 2>/dev/null | head -60 >"$PROFILE_OUT/self-$PROFILE_MODE-$(basename "$f").txt" || true
done
echo "$per"

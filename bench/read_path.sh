#!/usr/bin/env bash
# Read path benchmark (issue 4). Usage: bash bench/read_path.sh   (see BENCHMARKS.md)
#
# In one run, against peers measured in the same run:
#   - list-page latency: GET /v1/inboxes/{inbox}/messages?limit=50 with a read
#     capability, over one keep-alive HTTP connection, on an inbox holding
#     BENCH_LIST_MESSAGES (100,000) messages: the newest page, and pages at
#     cursors spread over the whole inbox (both orders). Peer: the same page
#     read straight from the same SQLite file with Python's sqlite3 module
#     (in-process, no HTTP, no capability check): the floor under our number.
#   - new-mail event latency: a Server-Sent Events subscriber on an inbox, one
#     SMTP connection sending BENCH_EVENT_MESSAGES messages one at a time; per
#     message the time from the client's end of DATA to the `250` (peer: the raw
#     SMTP round trip, durable write included) and to the `message.received`
#     event, and from the `250` to the event.
#
# Seeding: the 100,000 messages are written as blob files under the inbox's
# prefix (what the MX writes, without the SMTP round trips), then `serve` starts
# and its start-up reconciliation indexes them: the crash-recovery path, timed.
#
# Everything listens on 127.0.0.1, on ports chosen free at start. Every loop is
# bounded in count and time. Only the server this script started is stopped, by PID.
#
# Knobs: BENCH_LIST_MESSAGES=100000 BENCH_LIST_REQUESTS=2000 BENCH_EVENT_MESSAGES=1000
#        BENCH_WORKDIR=/var/tmp (a real disk: fsync is measured)  BENCH_KEEP=1 keeps it
#        AGENTKEYS_BIN=path  use this server binary instead of building agentkeys-cli --release
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$REPO/bench"
OUT="$BENCH/results/read-path"
LOADGEN="$BENCH/loadgen/target/release/loadgen"
AK="${AGENTKEYS_BIN:-$REPO/target/release/agentkeys}"
MESSAGES=${BENCH_LIST_MESSAGES:-100000}
REQUESTS=${BENCH_LIST_REQUESTS:-2000}
EVENTS=${BENCH_EVENT_MESSAGES:-1000}
OWNER=0x00000000000000000000000000000000000be7c4
AGENT=0x00000000000000000000000000000000000be7a1

if [ -z "${AGENTKEYS_BIN:-}" ]; then
  (cd "$REPO" && cargo build --release -p agentkeys-cli --quiet)
fi
(cd "$BENCH/loadgen" && cargo build --release --quiet)
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/read_path.sh needs $tool" >&2; exit 1; }
done

WORK=$(mktemp -d "${BENCH_WORKDIR:-/var/tmp}/agentkeys-readpath.XXXXXX")
DATA="$WORK/data"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  fi
  [ "${BENCH_KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT" "$DATA"

ak() { "$AK" --data-dir "$DATA" "$@"; }
# Grants need the owner's signature: enroll a master key (sealed under a generated
# passphrase in $WORK/owner) and sign `grant create`, applied locally.
mkdir -p "$WORK/owner"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/owner/passphrase"
chmod 600 "$WORK/owner/passphrase"
CODE=$(ak owner add "$OWNER" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["enrollment_code"])')
AGENTKEYS_CONFIG_DIR="$WORK/owner" ak owner enroll --owner "$OWNER" --code "$CODE" \
  --passphrase-file "$WORK/owner/passphrase" --json >/dev/null
ak agent add "$AGENT" --owner "$OWNER" >/dev/null
BIG=$(ak inbox create --agent "$AGENT" --name bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])')
LIVE=$(ak inbox create --agent "$AGENT" --name live --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])')
KEY=$(ak key create --agent "$AGENT" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
AGENTKEYS_CONFIG_DIR="$WORK/owner" ak grant create --agent "$AGENT" --inbox "*@agents.localhost" --scopes read \
  --owner "$OWNER" --passphrase-file "$WORK/owner/passphrase" --json >/dev/null

echo "seeding $MESSAGES messages into $BIG"
SEED_START=$(date +%s.%N)
python3 - "$DATA/blobs/$OWNER/$BIG" "$MESSAGES" <<'PY'
import os, random, sys, time
ALPH = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
def ulid(ms, rnd):
    v = (ms << 80) | rnd
    return "".join(ALPH[(v >> (5 * (25 - i))) & 31] for i in range(26))
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, mode=0o700, exist_ok=True)
now = int(time.time() * 1000)
body = ("The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOP.\r\n" * 24).encode()
for i in range(n):
    name = ulid(now - (n - i), random.getrandbits(80))
    head = f"Received: from seed by mx.agents.localhost; seed\r\nFrom: seed@remote.example\r\nSubject: seed {i}\r\n\r\n".encode()
    with open(os.path.join(d, name + ".eml"), "wb") as f:
        f.write(head + body)
PY
SEED_END=$(date +%s.%N)

read -r P_IN P_SUB P_TLS P_HTTP < <("$LOADGEN" free-ports --count 4)
AGENTKEYS_LISTEN_INBOUND=127.0.0.1:$P_IN AGENTKEYS_LISTEN_SUBMISSION=127.0.0.1:$P_SUB \
AGENTKEYS_LISTEN_SUBMISSION_TLS=127.0.0.1:$P_TLS AGENTKEYS_LISTEN_HTTP=127.0.0.1:$P_HTTP AGENTKEYS_LISTEN_HTTPS=off \
AGENTKEYS_DELIVERY_ENABLED=false AGENTKEYS_LOG=warn \
  "$AK" --data-dir "$DATA" serve >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 1200); do
  grep -q "HTTP " "$WORK/serve.log" && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.1
done
grep -q "HTTP " "$WORK/serve.log" || { echo "server did not start" >&2; exit 1; }
READY=$(date +%s.%N)

cap() {
  curl -sS --max-time 30 -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
    --data-binary "{\"inbox\":\"$1\",\"ttl\":1800}" "http://127.0.0.1:$P_HTTP/v1/credentials/read" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}
CAP_BIG=$(cap "$BIG")
CAP_LIVE=$(cap "$LIVE")

echo "list latency ($REQUESTS requests of each kind)"
"$LOADGEN" list-latency --http "127.0.0.1:$P_HTTP" --inbox "$BIG" --token "$CAP_BIG" \
  --requests "$REQUESTS" --limit 50 --max-duration 300s --out "$OUT/list.json" >/dev/null
echo "peer: the same pages straight from SQLite"
python3 - "$DATA/meta.sqlite" "$OWNER" "$BIG" "$REQUESTS" >"$OUT/list-sqlite.json" <<'PY'
import json, sqlite3, sys, time
path, owner, inbox, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
ids = [r[0] for r in db.execute("SELECT id FROM messages WHERE owner = ? AND inbox = ? ORDER BY id", (owner, inbox))]
cols = "seq, owner, inbox, id, received_at, size"
def page(order, after, before):
    return db.execute(
        f"SELECT {cols} FROM messages WHERE owner = ?1 AND inbox = ?2 AND id > ?3 AND id < ?4 ORDER BY id {order} LIMIT 51",
        (owner, inbox, after, before)).fetchall()
def pct(xs, p):
    xs = sorted(xs); r = p / 100 * (len(xs) - 1); lo = int(r); hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (r - lo)
first, cursors = [], []
for i in range(n):
    t = time.perf_counter(); rows = page("DESC", "", "~"); first.append((time.perf_counter() - t) * 1000)
    assert len(rows) == 51
    at = ids[(i * 7919) % len(ids)]
    t = time.perf_counter()
    page("DESC", "", at) if i % 2 == 0 else page("ASC", at, "~")
    cursors.append((time.perf_counter() - t) * 1000)
summ = lambda xs: {"samples": len(xs), "p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99), "max_ms": max(xs)}
print(json.dumps({"inbox_messages": len(ids), "first_page": summ(first), "cursor_pages": summ(cursors)}, indent=2))
PY

echo "event latency ($EVENTS messages, one at a time)"
"$LOADGEN" event-latency --smtp "127.0.0.1:$P_IN" --http "127.0.0.1:$P_HTTP" --inbox "$LIVE" \
  --token "$CAP_LIVE" --messages "$EVENTS" --size 2048 --max-duration 300s --out "$OUT/events.json" >/dev/null

kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

python3 - "$OUT" "$SEED_START" "$SEED_END" "$READY" "$(nproc)" "$(uptime)" >"$OUT/read-path.md" <<'PY'
import json, sys
out, seed_start, seed_end, ready, cpus, uptime = sys.argv[1], *map(float, sys.argv[2:5]), sys.argv[5], sys.argv[6]
L = json.load(open(f"{out}/list.json")); S = json.load(open(f"{out}/list-sqlite.json")); E = json.load(open(f"{out}/events.json"))
f = lambda x: f"{x:.2f}"
row = lambda name, l: f"| {name} | {l['samples']} | {f(l['p50_ms'])} | {f(l['p90_ms'])} | {f(l['p99_ms'])} | {f(l['max_ms'])} |"
print(f"Machine: {cpus} CPUs; load at the end: `{uptime.strip()}`.")
print(f"Seeded {L['inbox_messages']:,} messages as blob files in {seed_end - seed_start:.1f} s; "
      f"`serve` indexed them at start (reconciliation) and was listening {ready - seed_end:.1f} s after launch.\n")
print(f"List-page latency, `limit={L['limit']}`, one keep-alive connection, ms:\n")
print("| what | requests | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|")
print(row("agentkeys: newest page (HTTP, capability check, index, JSON)", L["first_page"]))
print(row("agentkeys: pages at cursors over the whole inbox (desc/asc)", L["cursor_pages"]))
print(row("peer: same newest page, SQLite in-process (Python sqlite3)", S["first_page"]))
print(row("peer: same cursor pages, SQLite in-process", S["cursor_pages"]))
print(f"\nNew-mail events, {E['messages']} messages one at a time over one SMTP connection, 2 KB body, ms:\n")
print("| what | messages | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|")
print(row("peer: end of DATA → `250` (SMTP round trip, durable write)", E["dot_to_250"]))
print(row("agentkeys: end of DATA → `message.received` at the subscriber", E["dot_to_event"]))
print(row("agentkeys: `250` → event (negative: the event arrived first)", E["reply_to_event"]))
PY
cat "$OUT/read-path.md"

# Splice into BENCHMARKS.md between the read path markers.
COMMIT="$(cd "$REPO" && git log -1 --format='%h %s' | cut -c1-60)$(cd "$REPO" && git diff --quiet HEAD -- . ':!BENCHMARKS.md' || echo ' (with uncommitted changes)')"
python3 - "$REPO/BENCHMARKS.md" "$OUT/read-path.md" "$COMMIT" <<'PY'
import datetime, sys
path, table, commit = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
text = open(path).read()
begin, end = "<!-- BEGIN READ PATH RESULTS (written by bench/read_path.sh) -->", "<!-- END READ PATH RESULTS -->"
if begin in text and end in text:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    head = f"Run {now} on commit `{commit}` with `bash bench/read_path.sh`.\n\n"
    text = text[: text.index(begin) + len(begin)] + "\n" + head + table + text[text.index(end):]
    open(path, "w").write(text)
PY

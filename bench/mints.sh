#!/usr/bin/env bash
# Credential mint benchmark (issue 3). Usage: bash bench/mints.sh   (no root needed)
#
# Read-capability mints per second over HTTP with durable audit: `wrk` with 32
# connections POSTs {"inbox": …} with a Bearer agent key to
# /v1/credentials/read of a fresh `agentkeys serve` (release build) whose data
# directory is on a real disk. Every 200 is a token whose audit record was
# committed (SQLite WAL, synchronous=FULL) before the answer. In the same run,
# alternating with the mint runs, the same wrk load against the same server's
# GET /healthz (no work: the HTTP ceiling of this machine with this load
# generator), and once a loop of single-row SQLite inserts, one durable commit
# each (what one-commit-per-mint could reach on this disk).
#
# Setup goes through the owner's approval gate: the operator adds the owner, the
# owner enrolls a master key (local, against the data directory) and creates
# the read grant with a signed request.
#
# Results: bench/results/mints.md (+ mints.jsonl), spliced into BENCHMARKS.md
# between the MINT RESULTS markers. Everything listens on 127.0.0.1; every load
# loop is bounded in time; only processes this script started are stopped.
#
# Knobs (environment):
#   BENCH_MINT_SECONDS=10 BENCH_MINT_CONNECTIONS=32 BENCH_MINT_THREADS=2
#   BENCH_MINT_REPEATS=3 BENCH_MINT_WARMUP=3 (seconds of untimed mints first)
#   BENCH_SQLITE_INSERTS=500 (the commit-per-insert loop; at most 60 s)
#   BENCH_WORKDIR=/var/tmp (a real disk: fsync is measured)   BENCH_KEEP=1
#   AGENTKEYS_BIN=path  use this server binary instead of building agentkeys-cli
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$REPO/bench"
RESULTS="$BENCH/results"
AK="${AGENTKEYS_BIN:-$REPO/target/release/agentkeys}"
BENCH_MINT_SECONDS=${BENCH_MINT_SECONDS:-10}
BENCH_MINT_CONNECTIONS=${BENCH_MINT_CONNECTIONS:-32}
BENCH_MINT_THREADS=${BENCH_MINT_THREADS:-2}
BENCH_MINT_REPEATS=${BENCH_MINT_REPEATS:-3}
BENCH_MINT_WARMUP=${BENCH_MINT_WARMUP:-3}
BENCH_SQLITE_INSERTS=${BENCH_SQLITE_INSERTS:-500}
BENCH_WORKDIR=${BENCH_WORKDIR:-/var/tmp}
BENCH_KEEP=${BENCH_KEEP:-0}

OWNER="0xbe4c000000000000000000000000000000000002"
AGENT="0xbe4c0000000000000000000000000000000000a2"
INBOX="mints@agents.localhost"

log() { printf '[mints %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"; }

command -v wrk >/dev/null || {
  log "installing wrk"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >/dev/null; then
    apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >/dev/null
  fi
}
command -v wrk >/dev/null || die "wrk is required (apt-get install wrk)"
command -v sqlite3 >/dev/null || die "sqlite3 is required (apt-get install sqlite3)"
command -v python3 >/dev/null || die "python3 is required"

SERVER_PID=""
WORK=""
cleanup() {
  local rc=$?
  set +e
  if [[ -n $SERVER_PID ]]; then
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $BENCH_KEEP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z ${AGENTKEYS_BIN:-} ]]; then
  log "building agentkeys (release)"
  (cd "$REPO" && cargo build --release -p agentkeys-cli) >&2
fi
[[ -x $AK ]] || die "$AK was not built"

WORK=$(mktemp -d "$BENCH_WORKDIR/agentkeys-mints.XXXXXX")
FSTYPE=$(stat -f -c %T "$WORK")
[[ $FSTYPE == tmpfs ]] && log "warning: $WORK is on tmpfs, so fsync costs nothing; set BENCH_WORKDIR"
DATA="$WORK/data"
export AGENTKEYS_CONFIG_DIR="$WORK/owner"
PASSFILE="$WORK/passphrase"
printf 'mint-bench-%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$PASSFILE"
chmod 600 "$PASSFILE"
ak() { (cd "$WORK" && "$AK" --data-dir "$DATA" "$@"); }

log "provisioning through the owner gate in $WORK"
CODE=$(ak owner add "$OWNER" --json | json_field enrollment_code)
[[ $CODE == enr_* ]] || die "owner add printed no enrollment code"
ak owner enroll --owner "$OWNER" --code "$CODE" --passphrase-file "$PASSFILE" --json >/dev/null
ak agent add "$AGENT" --owner "$OWNER" >/dev/null
ak inbox create --agent "$AGENT" --name mints --json >/dev/null
KEY=$(ak key create --agent "$AGENT" --json | json_field key)
[[ $KEY == ak_* ]] || die "key create printed no key"
ak grant create --agent "$AGENT" --inbox "$INBOX" --scopes read --owner "$OWNER" --passphrase-file "$PASSFILE" --json >/dev/null

log "starting agentkeys serve"
(cd "$WORK" && exec env AGENTKEYS_LISTEN_INBOUND=127.0.0.1:0 AGENTKEYS_LISTEN_SUBMISSION=127.0.0.1:0 \
  AGENTKEYS_LISTEN_SUBMISSION_TLS=127.0.0.1:0 AGENTKEYS_LISTEN_HTTP=127.0.0.1:0 AGENTKEYS_LISTEN_HTTPS=off AGENTKEYS_LOG=warn \
  AGENTKEYS_DELIVERY_ENABLED=false "$AK" --data-dir "$DATA" serve >"$WORK/serve.log" 2>&1) &
SERVER_PID=$!
HTTP=""
for _ in $(seq 1 100); do
  HTTP=$(sed -n 's/^  HTTP *\([0-9.:]*\) .*/\1/p' "$WORK/serve.log" | head -n1)
  [[ -n $HTTP ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; die "agentkeys serve exited"; }
  sleep 0.1
done
[[ -n $HTTP ]] || die "agentkeys serve printed no HTTP address"
# The server runs under `env` in a subshell that exec'd: $SERVER_PID is the server.
curl -sf "http://$HTTP/healthz" >/dev/null || die "agentkeys is not healthy"
BODY="{\"inbox\": \"$INBOX\"}"
probe=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  --data-binary "$BODY" "http://$HTTP/v1/credentials/read")
[[ $probe == 200 ]] || die "probe mint answered $probe"
log "server pid $SERVER_PID, HTTP $HTTP, data on $FSTYPE"

rm -rf "$RESULTS/mints.md" "$RESULTS/mints.jsonl"
mkdir -p "$RESULTS"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }

# run_wrk LABEL SECONDS [mint|healthz] → one JSON line in mints.jsonl (unless warm-up)
run_wrk() {
  local label=$1 secs=$2 what=$3 out t0 t1
  local env=(BENCH_MINT_PATH=/healthz BENCH_MINT_KEY= BENCH_MINT_BODY=)
  [[ $what == mint ]] && env=(BENCH_MINT_PATH=/v1/credentials/read "BENCH_MINT_KEY=$KEY" "BENCH_MINT_BODY=$BODY")
  t0=$(cpu_ticks)
  out=$(env "${env[@]}" timeout $((secs + 30)) wrk -t "$BENCH_MINT_THREADS" -c "$BENCH_MINT_CONNECTIONS" \
    -d "${secs}s" --timeout 10s -s "$BENCH/mints.lua" "http://$HTTP" | tail -n 1)
  t1=$(cpu_ticks)
  [[ $out == \{* ]] || die "wrk printed no summary for $label"
  [[ $label == warmup ]] && return 0
  local cpu_s
  cpu_s=$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')
  printf '{"label": "%s", "target": "%s", "server_cpu_s": %s, %s\n' "$label" "$what" "$cpu_s" "${out#\{}" \
    >>"$RESULTS/mints.jsonl"
  log "  $label: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.0f/s p50 %.2f ms p99 %.2f ms non-2xx %d" % (r["requests"]/(r["duration_us"]/1e6), r["p50_us"]/1000, r["p99_us"]/1000, r["non_2xx"]))' "$(tail -n1 "$RESULTS/mints.jsonl")")"
}

log "warm-up: ${BENCH_MINT_WARMUP}s of mints"
run_wrk warmup "$BENCH_MINT_WARMUP" mint
MINTS_BEFORE=$(sqlite3 "$DATA/meta.sqlite" "SELECT count(*) FROM audit_log WHERE operation = 'credential.read'")
for run in $(seq 1 "$BENCH_MINT_REPEATS"); do
  run_wrk "healthz-$run" "$BENCH_MINT_SECONDS" healthz
  run_wrk "mints-$run" "$BENCH_MINT_SECONDS" mint
done
MINTS_AFTER=$(sqlite3 "$DATA/meta.sqlite" "SELECT count(*) FROM audit_log WHERE operation = 'credential.read'")

log "peer: single-row inserts into SQLite (WAL, synchronous=FULL), one commit each"
timeout 90 python3 - "$WORK/insert-loop.sqlite" "$BENCH_SQLITE_INSERTS" >>"$RESULTS/mints.jsonl" <<'EOF'
import json, sqlite3, sys, time
path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, detail TEXT NOT NULL)")
row = "x" * 400  # about the size of a mint's audit record
lat, t0, done = [], time.perf_counter(), 0
while done < n and time.perf_counter() - t0 < 60:
    s = time.perf_counter()
    db.execute("BEGIN IMMEDIATE"); db.execute("INSERT INTO t (detail) VALUES (?)", (row,)); db.execute("COMMIT")
    lat.append(time.perf_counter() - s); done += 1
secs = time.perf_counter() - t0
lat.sort()
pct = lambda p: int(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e6)
print(json.dumps({"label": "sqlite-commit-per-insert", "target": "sqlite", "requests": done,
                  "duration_us": int(secs * 1e6), "non_2xx": 0, "p50_us": pct(50), "p99_us": pct(99)}))
EOF

ak audit verify --json >"$RESULTS/mints-verify.json" || die "audit verify failed after the run"
commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]] && commit="$commit (with uncommitted changes)"

python3 - "$RESULTS/mints.jsonl" "$MINTS_BEFORE" "$MINTS_AFTER" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$commit" \
  "$(nproc)" "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$FSTYPE" "$LOAD_START" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$BENCH_MINT_CONNECTIONS" "$BENCH_MINT_THREADS" "$BENCH_MINT_SECONDS" \
  "$(cat "$RESULTS/mints-verify.json")" >"$RESULTS/mints.md" <<'EOF'
import json, statistics, sys
(path, before, after, date, commit, nproc, cpu, fs, load0, load1, conns, threads, secs, verify) = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
def rate(r): return r["requests"] / (r["duration_us"] / 1e6)
mints = [r for r in rows if r["target"] == "mint"]
health = [r for r in rows if r["target"] == "healthz"]
sqlite = [r for r in rows if r["target"] == "sqlite"]
med = lambda rs: sorted(rs, key=rate)[len(rs) // 2]
m, h = med(mints), med(health)
ok_mints = sum(r["requests"] - r["non_2xx"] for r in mints)
audited = int(after) - int(before)
errors = sum(r["non_2xx"] + r.get("connect_errors", 0) + r.get("read_errors", 0) + r.get("write_errors", 0) + r.get("timeouts", 0) for r in mints)
bar_rate, bar_p99 = rate(m) >= 5000, m["p99_us"] < 20000
print(f"Run {date}, commit {commit}, `bash bench/mints.sh`; {nproc} CPUs ({cpu}), data directory on {fs}; "
      f"load average {load0} at start, {load1} at end. wrk {threads} threads, {conns} connections, {secs} s per run; "
      "mint and healthz runs alternate.\n")
print("| run | target | requests/s | p50 | p90 | p99 | non-2xx / errors | server CPU per request |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    p90 = f'{r["p90_us"]/1000:.2f} ms' if "p90_us" in r else "-"
    errs = r["non_2xx"] + r.get("connect_errors", 0) + r.get("read_errors", 0) + r.get("write_errors", 0) + r.get("timeouts", 0)
    cpu_per = f'{r["server_cpu_s"] * 1e6 / r["requests"]:.0f} µs' if r.get("server_cpu_s") and r["requests"] else "-"
    target = {"mint": "POST /v1/credentials/read", "healthz": "GET /healthz", "sqlite": "SQLite insert, one commit each (1 client)"}[r["target"]]
    print(f'| {r["label"]} | {target} | {rate(r):,.0f} | {r["p50_us"]/1000:.2f} ms | {p90} | {r["p99_us"]/1000:.2f} ms | {errs} | {cpu_per} |')
print()
print(f"- **Mints (median run): {rate(m):,.0f}/s, p50 {m['p50_us']/1000:.2f} ms, p99 {m['p99_us']/1000:.2f} ms** "
      f"against the bar of 5,000/s and p99 < 20 ms: rate {'met' if bar_rate else 'NOT met'}, p99 {'met' if bar_p99 else 'NOT met'}.")
print(f"- Peer, same run: GET /healthz (median run) {rate(h):,.0f}/s, p99 {h['p99_us']/1000:.2f} ms; "
      f"mints are {rate(m)/rate(h):.2f}× that ceiling.")
if sqlite:
    s = sqlite[0]
    print(f"- Peer, same run: one durable SQLite commit per insert, 1 client: {rate(s):,.0f}/s "
          f"(p50 {s['p50_us']/1000:.2f} ms): the ceiling of one commit per mint on this disk.")
print(f"- Accounting: {ok_mints:,} mints answered 200 in the timed runs, {audited:,} `credential.read` records were "
      f"appended meanwhile (≥ because a mint in flight when wrk stops is audited but not counted), {errors} errors; "
      f"`agentkeys audit verify` afterwards: {verify.strip()}.")
EOF
cat "$RESULTS/mints.md"

doc="$REPO/BENCHMARKS.md"
begin='<!-- BEGIN MINT RESULTS (written by bench/mints.sh) -->'
end='<!-- END MINT RESULTS -->'
if grep -qF "$begin" "$doc" && grep -qF "$end" "$doc"; then
  awk -v begin="$begin" -v end="$end" -v file="$RESULTS/mints.md" '
    $0 == begin { print; while ((getline line < file) > 0) print line; skip = 1; next }
    $0 == end { skip = 0 }
    !skip { print }
  ' "$doc" >"$doc.tmp" && mv "$doc.tmp" "$doc"
  log "results written to BENCHMARKS.md and $RESULTS/mints.md"
else
  log "BENCHMARKS.md has no MINT RESULTS markers; results are in $RESULTS/mints.md"
fi

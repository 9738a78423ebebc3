#!/usr/bin/env bash
# Credential mint benchmark (issue 3). Usage: bash bench/mints.sh   (no root needed)
#
# Read-capability mints per second over HTTP with durable audit: `wrk` with 32
# connections POSTs {"inbox": …} with a Bearer agent key to
# /v1/credentials/read of a fresh `agentkeys serve` (release build) whose data
# directory is on a real disk. Every 200 is a token whose audit record was
# committed (SQLite WAL, synchronous=FULL; or PostgreSQL) before the answer. In
# the same run, alternating with the mint runs, the same wrk load against the
# same server's GET /healthz (no work: the HTTP ceiling of this machine with
# this load generator), and once a loop of single-row inserts, one durable
# commit each (what one-commit-per-mint could reach on this disk): SQLite, or
# with BENCH_STORE=postgres+s3 `pgbench` on our database (1 client, then as
# many clients as wrk has connections).
#
# Setup goes through the owner's approval gate: the operator adds the owner, the
# owner enrolls a master key (local, against the data directory) and creates
# the read grant with a signed request.
#
# With BENCH_NODES=2 (postgres+s3), a second node shares the database and HAProxy
# (TCP) is in front: runs alternate healthz (both nodes), mints through HAProxy
# to node A only ("mints-1node") and mints through HAProxy to both ("mints").
# With BENCH_COUNT=1 (postgres+s3), database round trips and S3 requests per
# mint are counted afterwards through proxies in front of a third, untimed node.
#
# Results: $BENCH_RESULTS/mints.md (+ mints.jsonl), spliced into BENCHMARKS.md
# between the MINT RESULTS markers for the default store on one node only.
# Everything listens on 127.0.0.1; every load loop is bounded in time; only
# processes this script started are stopped.
#
# Knobs (environment):
#   BENCH_MINT_SECONDS=10 BENCH_MINT_CONNECTIONS=32 BENCH_MINT_THREADS=2
#   BENCH_MINT_REPEATS=3 BENCH_MINT_WARMUP=3 (seconds of untimed mints first)
#   BENCH_SQLITE_INSERTS=500 (the commit-per-insert loop; at most 60 s)
#   BENCH_PGBENCH_SECONDS=5 (postgres+s3: each pgbench peer run)
#   BENCH_COUNT_SECONDS=3 BENCH_COUNT_IDLE=5 (count phase: seconds of mints, idle window)
#   BENCH_WORKDIR=/var/tmp (a real disk: fsync is measured)   BENCH_KEEP=1
#   BENCH_RESULTS=dir (default bench/results)   BENCH_PORT_BASE=N (ports N..N+12)
#   BENCH_STORE, BENCH_NODES, BENCH_PG, BENCH_PG_PARAMS, BENCH_PG_ANALYZE, BENCH_COUNT: bench/store.sh
#   AGENTKEYS_BIN=path  use this server binary instead of building agentkeys-cli
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$REPO/bench"
RESULTS="${BENCH_RESULTS:-$BENCH/results}"
AK="${AGENTKEYS_BIN:-$REPO/target/release/agentkeys}"
BENCH_MINT_SECONDS=${BENCH_MINT_SECONDS:-10}
BENCH_MINT_CONNECTIONS=${BENCH_MINT_CONNECTIONS:-32}
BENCH_MINT_THREADS=${BENCH_MINT_THREADS:-2}
BENCH_MINT_REPEATS=${BENCH_MINT_REPEATS:-3}
BENCH_MINT_WARMUP=${BENCH_MINT_WARMUP:-3}
BENCH_SQLITE_INSERTS=${BENCH_SQLITE_INSERTS:-500}
BENCH_PGBENCH_SECONDS=${BENCH_PGBENCH_SECONDS:-5}
BENCH_COUNT_SECONDS=${BENCH_COUNT_SECONDS:-3}
BENCH_COUNT_IDLE=${BENCH_COUNT_IDLE:-5}
BENCH_WORKDIR=${BENCH_WORKDIR:-/var/tmp}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-}

OWNER="0xbe4c000000000000000000000000000000000002"
AGENT="0xbe4c0000000000000000000000000000000000a2"
INBOX="mints@agents.localhost"

log() { printf '[mints %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"; }
# shellcheck source=bench/store.sh
source "$BENCH/store.sh"

command -v wrk >/dev/null || {
  log "installing wrk"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >/dev/null; then
    apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >/dev/null
  fi
}
command -v wrk >/dev/null || die "wrk is required (apt-get install wrk)"
command -v python3 >/dev/null || die "python3 is required"
if store_is_shared; then
  PGBENCH=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | tail -n1 || true)
  [[ -x $PGBENCH ]] || die "pgbench is required for BENCH_STORE=postgres+s3 (postgresql-contrib)"
else
  command -v sqlite3 >/dev/null || die "sqlite3 is required (apt-get install sqlite3)"
fi

SERVER_PIDS=()
WORK=""
cleanup() {
  local rc=$?
  set +e
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  store_cleanup
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

# Ports: s3s-fs, HAProxy's two HTTP frontends, the counting proxies (the
# servers themselves take free ports and print them).
if [[ -n $BENCH_PORT_BASE ]]; then
  read -r P_S3 P_LB1 P_LB2 P_CPG P_CS3 < <(seq -s ' ' "$BENCH_PORT_BASE" $((BENCH_PORT_BASE + 4)))
else
  read -r P_S3 P_LB1 P_LB2 P_CPG P_CS3 < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
fi

WORK=$(mktemp -d "$BENCH_WORKDIR/agentkeys-mints.XXXXXX")
FSTYPE=$(stat -f -c %T "$WORK")
[[ $FSTYPE == tmpfs ]] && log "warning: $WORK is on tmpfs, so fsync costs nothing; set BENCH_WORKDIR"
DATA="$WORK/data"
export AGENTKEYS_CONFIG_DIR="$WORK/owner"
PASSFILE="$WORK/passphrase"
printf 'mint-bench-%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$PASSFILE"
chmod 600 "$PASSFILE"
store_init "$WORK" "$P_S3"
ak() { (cd "$WORK" && env "${STORE_ENV[@]}" "$AK" --data-dir "$DATA" "$@"); }

log "provisioning through the owner gate in $WORK (store: $BENCH_STORE, $BENCH_NODES node(s))"
CODE=$(ak owner add "$OWNER" --json | json_field enrollment_code)
[[ $CODE == enr_* ]] || die "owner add printed no enrollment code"
store_local_owner_marker "$DATA"
ak owner enroll --owner "$OWNER" --code "$CODE" --passphrase-file "$PASSFILE" --json >/dev/null
ak agent add "$AGENT" --owner "$OWNER" >/dev/null
ak inbox create --agent "$AGENT" --name mints --json >/dev/null
KEY=$(ak key create --agent "$AGENT" --json | json_field key)
[[ $KEY == ak_* ]] || die "key create printed no key"
ak grant create --agent "$AGENT" --inbox "$INBOX" --scopes read --owner "$OWNER" --passphrase-file "$PASSFILE" --json >/dev/null

# Starts `agentkeys serve` on DATA_DIR with the store environment ENV_ARRAY;
# sets NODE_PID and NODE_HTTP (host:port).   start_node LABEL DATA_DIR ENV_ARRAY
start_node() {
  local label=$1 data=$2
  local -n senv=$3
  log "starting agentkeys serve ($label)"
  (cd "$WORK" && exec env "${senv[@]}" AGENTKEYS_LISTEN_INBOUND=127.0.0.1:0 AGENTKEYS_LISTEN_SUBMISSION=127.0.0.1:0 \
    AGENTKEYS_LISTEN_SUBMISSION_TLS=127.0.0.1:0 AGENTKEYS_LISTEN_HTTP=127.0.0.1:0 AGENTKEYS_LISTEN_HTTPS=off AGENTKEYS_LOG=warn \
    AGENTKEYS_DELIVERY_ENABLED=false "$AK" --data-dir "$data" serve >"$WORK/serve-$label.log" 2>&1) &
  # The server runs under `env` in a subshell that exec'd: $! is the server.
  NODE_PID=$!
  SERVER_PIDS+=("$NODE_PID")
  NODE_HTTP=""
  for _ in $(seq 1 100); do
    NODE_HTTP=$(sed -n 's/^  HTTP *\([0-9.:]*\) .*/\1/p' "$WORK/serve-$label.log" | head -n1)
    [[ -n $NODE_HTTP ]] && break
    kill -0 "$NODE_PID" 2>/dev/null || { cat "$WORK/serve-$label.log" >&2; die "agentkeys serve ($label) exited"; }
    sleep 0.1
  done
  [[ -n $NODE_HTTP ]] || die "agentkeys serve ($label) printed no HTTP address"
  curl -sf "http://$NODE_HTTP/healthz" >/dev/null || die "agentkeys ($label) is not healthy"
}

start_node a "$DATA" STORE_ENV
SERVER_PID=$NODE_PID
HTTP=$NODE_HTTP
NODE_PIDS=("$SERVER_PID")
if ((BENCH_NODES == 2)); then
  store_second_data "$DATA" "$WORK/data-b"
  start_node b "$WORK/data-b" STORE_ENV
  NODE_PIDS+=("$NODE_PID")
  store_haproxy "$WORK/haproxy" "$P_LB1=${HTTP##*:}" "$P_LB2=${HTTP##*:},${NODE_HTTP##*:}"
fi
BODY="{\"inbox\": \"$INBOX\"}"
probe=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  --data-binary "$BODY" "http://$HTTP/v1/credentials/read")
[[ $probe == 200 ]] || die "probe mint answered $probe"
log "server pid(s) ${NODE_PIDS[*]}, HTTP $HTTP, data on $FSTYPE"

rm -rf "$RESULTS/mints.md" "$RESULTS/mints.jsonl" "$RESULTS/mint-counts.json" "$RESULTS"/pg-waits-mints-*.txt
mkdir -p "$RESULTS"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# CPU ticks of the given processes.
cpu_ticks() {
  local p s=0
  for p in "$@"; do s=$((s + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  printf '%s' "$s"
}
audited() { store_query "$DATA" "SELECT count(*) FROM audit_log WHERE operation = 'credential.read'"; }

# run_wrk LABEL SECONDS [mint|healthz] URL PID… → one JSON line in mints.jsonl (unless warm-up)
run_wrk() {
  local label=$1 secs=$2 what=$3 url=$4 out t0 t1 s0 s1
  shift 4
  local env=(BENCH_MINT_PATH=/healthz BENCH_MINT_KEY= BENCH_MINT_BODY=)
  [[ $what == mint ]] && env=(BENCH_MINT_PATH=/v1/credentials/read "BENCH_MINT_KEY=$KEY" "BENCH_MINT_BODY=$BODY")
  t0=$(cpu_ticks "$@")
  s0=$(store_cpu)
  [[ $what == mint && $label != warmup ]] && store_wait_sampler_start "$RESULTS/pg-waits-$label.txt" $((secs + 30))
  out=$(env "${env[@]}" timeout $((secs + 30)) wrk -t "$BENCH_MINT_THREADS" -c "$BENCH_MINT_CONNECTIONS" \
    -d "${secs}s" --timeout 10s -s "$BENCH/mints.lua" "$url" | tail -n 1)
  store_wait_sampler_stop
  t1=$(cpu_ticks "$@")
  s1=$(store_cpu)
  [[ $out == \{* ]] || die "wrk printed no summary for $label"
  [[ $label == warmup ]] && return 0
  local cpu_s store_s
  cpu_s=$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')
  # store_cpu: "POSTGRESQL S3" seconds; both together here.
  store_s=$(awk -v a="$s0" -v b="$s1" 'BEGIN { split(a, x, " "); split(b, y, " "); if (a != "" && b != "") printf "%.2f", y[1] + y[2] - x[1] - x[2]; else printf "null" }')
  printf '{"label": "%s", "target": "%s", "server_cpu_s": %s, "store_cpu_s": %s, %s\n' "$label" "$what" "$cpu_s" "$store_s" \
    "${out#\{}" >>"$RESULTS/mints.jsonl"
  log "  $label: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.0f/s p50 %.2f ms p99 %.2f ms non-2xx %d" % (r["requests"]/(r["duration_us"]/1e6), r["p50_us"]/1000, r["p99_us"]/1000, r["non_2xx"]))' "$(tail -n1 "$RESULTS/mints.jsonl")")"
}

if ((BENCH_NODES == 2)); then
  URL_ALL="http://127.0.0.1:$P_LB2"
else
  URL_ALL="http://$HTTP"
fi
log "warm-up: ${BENCH_MINT_WARMUP}s of mints"
run_wrk warmup "$BENCH_MINT_WARMUP" mint "$URL_ALL" "${NODE_PIDS[@]}"
store_analyze
MINTS_BEFORE=$(audited)
for run in $(seq 1 "$BENCH_MINT_REPEATS"); do
  run_wrk "healthz-$run" "$BENCH_MINT_SECONDS" healthz "$URL_ALL" "${NODE_PIDS[@]}"
  if ((BENCH_NODES == 2)); then
    run_wrk "mints-1node-$run" "$BENCH_MINT_SECONDS" mint "http://127.0.0.1:$P_LB1" "$SERVER_PID"
  fi
  run_wrk "mints-$run" "$BENCH_MINT_SECONDS" mint "$URL_ALL" "${NODE_PIDS[@]}"
done
MINTS_AFTER=$(audited)

if store_is_shared; then
  # pgbench on our database: single-row inserts of about a mint's audit record,
  # one commit each; 1 client, then as many as wrk's connections (PostgreSQL's
  # own group commit). Per-transaction log → p50/p99.
  STORE_PSQL_DB=$STORE_DB store_psql -c "CREATE TABLE bench_commit (seq bigserial PRIMARY KEY, detail text NOT NULL)" >/dev/null
  printf "INSERT INTO bench_commit (detail) VALUES (repeat('x', 400));\n" >"$WORK/insert.sql"
  for clients in 1 "$BENCH_MINT_CONNECTIONS"; do
    log "peer: pgbench, one durable PostgreSQL commit per insert, $clients client(s), ${BENCH_PGBENCH_SECONDS}s"
    rm -f "$WORK"/pgbench_log.*
    (cd "$WORK" && timeout $((BENCH_PGBENCH_SECONDS + 60)) "$PGBENCH" -n -c "$clients" -j "$((clients < 2 ? 1 : 2))" \
      -T "$BENCH_PGBENCH_SECONDS" -f "$WORK/insert.sql" -l "$BENCH_PG/$STORE_DB$BENCH_PG_PARAMS" >"$WORK/pgbench-$clients.out" 2>&1) ||
      { cat "$WORK/pgbench-$clients.out" >&2; die "pgbench failed"; }
    python3 - "$clients" "$BENCH_PGBENCH_SECONDS" "$WORK"/pgbench_log.* >>"$RESULTS/mints.jsonl" <<'EOF'
import json, sys
clients, secs, files = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
lat = []
for f in files:
    for line in open(f):
        parts = line.split()
        if len(parts) >= 3:
            lat.append(int(parts[2]))
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else 0
print(json.dumps({"label": f"pg-commit-per-insert-{clients}", "target": "pgbench", "clients": clients,
                  "requests": len(lat), "duration_us": int(secs * 1e6), "non_2xx": 0,
                  "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99)}))
EOF
  done
else
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
fi

# Count phase: a third node whose database and S3 endpoint are counting proxies.
if store_is_shared && [[ $BENCH_COUNT == 1 ]]; then
  store_count_proxies "$RESULTS/counts" "$P_CPG" "$P_CS3"
  store_second_data "$DATA" "$WORK/data-count"
  start_node count "$WORK/data-count" STORE_COUNT_ENV
  sleep 2
  c0=$(store_count_snapshot)
  sleep "$BENCH_COUNT_IDLE"
  c1=$(store_count_snapshot)
  m0=$(audited)
  t0=$(date +%s.%N)
  env BENCH_MINT_PATH=/v1/credentials/read "BENCH_MINT_KEY=$KEY" "BENCH_MINT_BODY=$BODY" timeout $((BENCH_COUNT_SECONDS + 30)) \
    wrk -t "$BENCH_MINT_THREADS" -c "$BENCH_MINT_CONNECTIONS" -d "${BENCH_COUNT_SECONDS}s" --timeout 10s -s "$BENCH/mints.lua" \
    "http://$NODE_HTTP" >"$WORK/count-wrk.out" || log "count phase: wrk failed"
  t1=$(date +%s.%N)
  sleep 0.5
  m1=$(audited)
  c2=$(store_count_snapshot)
  python3 "$BENCH/count_diff.py" "$BENCH_COUNT_IDLE" "$c0" "$c1" \
    "mint:$((m1 - m0)):$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" "$c2" >"$RESULTS/mint-counts.json"
  log "count phase: $((m1 - m0)) mints; $(python3 "$BENCH/count_diff.py" --brief "$RESULTS/mint-counts.json")"
fi

ak audit verify --json >"$RESULTS/mints-verify.json" || die "audit verify failed after the run"
commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]] && commit="$commit (with uncommitted changes)"
if store_is_shared; then BAR_RATE=3000; else BAR_RATE=5000; fi

python3 - "$RESULTS/mints.jsonl" "$MINTS_BEFORE" "$MINTS_AFTER" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$commit" \
  "$(nproc)" "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$FSTYPE" "$LOAD_START" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$BENCH_MINT_CONNECTIONS" "$BENCH_MINT_THREADS" "$BENCH_MINT_SECONDS" \
  "$(cat "$RESULTS/mints-verify.json")" "$BENCH_STORE" "$BENCH_NODES" "$BAR_RATE" >"$RESULTS/mints.md" <<'EOF'
import json, sys
(path, before, after, date, commit, nproc, cpu, fs, load0, load1, conns, threads, secs, verify, store, nodes, bar) = sys.argv[1:]
bar = int(bar)
rows = [json.loads(l) for l in open(path) if l.strip()]
def rate(r): return r["requests"] / (r["duration_us"] / 1e6)
mints = [r for r in rows if r["target"] == "mint" and not r["label"].startswith("mints-1node")]
one = [r for r in rows if r["label"].startswith("mints-1node")]
health = [r for r in rows if r["target"] == "healthz"]
peers = [r for r in rows if r["target"] in ("sqlite", "pgbench")]
med = lambda rs: sorted(rs, key=rate)[len(rs) // 2]
m, h = med(mints), med(health)
every = mints + one
ok_mints = sum(r["requests"] - r["non_2xx"] for r in every)
audited = int(after) - int(before)
errs = lambda r: r["non_2xx"] + r.get("connect_errors", 0) + r.get("read_errors", 0) + r.get("write_errors", 0) + r.get("timeouts", 0)
errors = sum(errs(r) for r in every)
bar_rate, bar_p99 = rate(m) >= bar, m["p99_us"] < 20000
where = "data directory" if store == "sqlite" else "work directory (s3s-fs root)"
print(f"Run {date}, commit {commit}, `BENCH_STORE={store} BENCH_NODES={nodes} bash bench/mints.sh`; {nproc} CPUs ({cpu}), "
      f"{where} on {fs}; load average {load0} at start, {load1} at end. wrk {threads} threads, {conns} connections, "
      f"{secs} s per run; the runs alternate.\n")
print("| run | target | requests/s | p50 | p90 | p99 | non-2xx / errors | server CPU per request | store CPU per request |")
print("|---|---|---|---|---|---|---|---|---|")
names = {"mint": "POST /v1/credentials/read", "healthz": "GET /healthz",
         "sqlite": "SQLite insert, one commit each (1 client)", "pgbench": "PostgreSQL insert, one commit each (pgbench)"}
for r in rows:
    p90 = f'{r["p90_us"]/1000:.2f} ms' if "p90_us" in r else "-"
    cpu_per = f'{r["server_cpu_s"] * 1e6 / r["requests"]:.0f} µs' if r.get("server_cpu_s") and r["requests"] else "-"
    st_per = f'{r["store_cpu_s"] * 1e6 / r["requests"]:.0f} µs' if r.get("store_cpu_s") and r["requests"] else "-"
    target = names[r["target"]]
    if r["label"].startswith("mints-1node"):
        target += " (HAProxy → node A)"
    elif r["target"] in ("mint", "healthz") and nodes == "2":
        target += " (HAProxy → both nodes)"
    if r["target"] == "pgbench":
        target = f'PostgreSQL insert, one commit each ({r["clients"]} client{"s" if r["clients"] > 1 else ""})'
    print(f'| {r["label"]} | {target} | {rate(r):,.0f} | {r["p50_us"]/1000:.2f} ms | {p90} | {r["p99_us"]/1000:.2f} ms | {errs(r)} | {cpu_per} | {st_per} |')
print()
print(f"- **Mints (median run): {rate(m):,.0f}/s, p50 {m['p50_us']/1000:.2f} ms, p99 {m['p99_us']/1000:.2f} ms** "
      f"against the bar of {bar:,}/s and p99 < 20 ms: rate {'met' if bar_rate else 'NOT met'}, p99 {'met' if bar_p99 else 'NOT met'}.")
if one:
    o = med(one)
    print(f"- Same run, HAProxy to node A only (median): {rate(o):,.0f}/s, p99 {o['p99_us']/1000:.2f} ms; "
          f"two nodes / one node = {rate(m)/rate(o):.2f}.")
print(f"- Peer, same run: GET /healthz (median run) {rate(h):,.0f}/s, p99 {h['p99_us']/1000:.2f} ms; "
      f"mints are {rate(m)/rate(h):.2f}× that ceiling.")
for s in peers:
    print(f"- Peer, same run: {names[s['target']] if s['target'] == 'sqlite' else 'one durable PostgreSQL commit per insert, %d client(s)' % s['clients']}: "
          f"{rate(s):,.0f}/s (p50 {s['p50_us']/1000:.2f} ms, p99 {s['p99_us']/1000:.2f} ms).")
print(f"- Accounting: {ok_mints:,} mints answered 200 in the timed runs, {audited:,} `credential.read` records were "
      f"appended meanwhile (≥ because a mint in flight when wrk stops is audited but not counted), {errors} errors; "
      f"`agentkeys audit verify` afterwards: {verify.strip()}.")
EOF
cat "$RESULTS/mints.md"

doc="$REPO/BENCHMARKS.md"
begin='<!-- BEGIN MINT RESULTS (written by bench/mints.sh) -->'
end='<!-- END MINT RESULTS -->'
if [[ $BENCH_STORE != sqlite || $BENCH_NODES != 1 || -n ${BENCH_RESULTS:-} ]]; then
  log "results in $RESULTS/mints.md (BENCHMARKS.md's mint section is for the default store on one node)"
elif grep -qF "$begin" "$doc" && grep -qF "$end" "$doc"; then
  awk -v begin="$begin" -v end="$end" -v file="$RESULTS/mints.md" '
    $0 == begin { print; while ((getline line < file) > 0) print line; skip = 1; next }
    $0 == end { skip = 0 }
    !skip { print }
  ' "$doc" >"$doc.tmp" && mv "$doc.tmp" "$doc"
  log "results written to BENCHMARKS.md and $RESULTS/mints.md"
else
  log "BENCHMARKS.md has no MINT RESULTS markers; results are in $RESULTS/mints.md"
fi

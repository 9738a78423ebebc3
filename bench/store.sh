# Store and node set-up shared by bench/run.sh, bench/mints.sh and
# bench/otp_latency.sh (sourced, not run). See BENCHMARKS.md, "Scale-out stores".
#
# Knobs (environment):
#   BENCH_STORE=sqlite|postgres+s3   where the AgentKeys server under test keeps
#       metadata and blobs: SQLite and files in its data directory (default), or
#       a PostgreSQL database of its own (created as ak_bench_<random> on
#       BENCH_PG, dropped at the end) and an S3 bucket served by `s3s-fs` on
#       loopback (root in the work directory, so on a real disk).
#   BENCH_NODES=1|2   with 2 (postgres+s3 only), a second `agentkeys serve` on
#       the same database and bucket (its data directory holds a copy of the
#       first node's master.seed) and HAProxy in TCP mode in front of both.
#   BENCH_PG=postgres://postgres@127.0.0.1:5432   the PostgreSQL server (trust auth)
#   BENCH_PG_PARAMS=""   appended to the database URL (e.g. "?sslmode=disable")
#   BENCH_COUNT=1   (postgres+s3) after the timed runs, count database round
#       trips and S3 requests per accepted message / per mint through counting
#       proxies (bench/wirecount.py) in front of a third, untimed node
#
# Every process started here is recorded in STORE_PIDS and stopped by PID in
# store_cleanup, which also drops the database. Requires: log, die (caller's).

BENCH_STORE=${BENCH_STORE:-sqlite}
BENCH_NODES=${BENCH_NODES:-1}
BENCH_PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
BENCH_PG_PARAMS=${BENCH_PG_PARAMS:-}
BENCH_COUNT=${BENCH_COUNT:-1}
STORE_BUCKET=akbench
STORE_PIDS=()
STORE_DB=""
STORE_DBS=()
STORE_ENV=()
STORE_S3_ROOT=""
STORE_S3_PORT=""
STORE_S3_PID=""
STORE_S3_KEY="akbench"
STORE_S3_SECRET=""
STORE_COUNT_DIR=""

case $BENCH_STORE in
  sqlite | postgres+s3) ;;
  *) die "BENCH_STORE must be sqlite or postgres+s3 (was '$BENCH_STORE')" ;;
esac
case $BENCH_NODES in
  1) ;;
  2) [[ $BENCH_STORE == postgres+s3 ]] || die "BENCH_NODES=2 needs BENCH_STORE=postgres+s3 (nodes share the database and bucket)" ;;
  *) die "BENCH_NODES must be 1 or 2 (was '$BENCH_NODES')" ;;
esac

store_is_shared() { [[ $BENCH_STORE == postgres+s3 ]]; }

# psql against the PostgreSQL server's maintenance database, or DB when given.
store_psql() {
  local db=${STORE_PSQL_DB:-postgres}
  psql "$BENCH_PG/$db" -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# Waits (at most ~10 s) until something accepts TCP connections on 127.0.0.1:$1.
store_wait_port() {
  local port=$1
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing listening on 127.0.0.1:$port"
}

# Creates a database of its own; prints its name.
store_new_database() {
  local name
  name="ak_bench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  store_psql -c "CREATE DATABASE $name" >/dev/null || die "cannot create database $name on $BENCH_PG"
  printf '%s' "$name"
}
# Callers run `store_new_database` in a command substitution (a subshell), so
# they record the name themselves: store_track_database NAME.
store_track_database() { STORE_DBS+=("$1"); }

# Sets up the store in work directory WORK; S3_PORT is the port for s3s-fs.
# Afterwards STORE_ENV holds the environment every `agentkeys` command and
# server of the store under test needs (empty for sqlite).
#   store_init WORK S3_PORT
store_init() {
  local work=$1
  STORE_S3_PORT=$2
  STORE_ENV=()
  store_is_shared || return 0
  [[ -z $STORE_S3_PID ]] || die "store_init: already set up"
  command -v psql >/dev/null || die "psql is required for BENCH_STORE=postgres+s3"
  command -v s3s-fs >/dev/null || die "s3s-fs is required (cargo install s3s-fs --version 0.14.1 --features binary --locked)"
  STORE_DB=$(store_new_database)
  store_track_database "$STORE_DB"
  log "store: PostgreSQL database $STORE_DB on $BENCH_PG"
  STORE_S3_ROOT="$work/s3"
  mkdir -p "$STORE_S3_ROOT/$STORE_BUCKET"
  STORE_S3_SECRET="akbench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  RUST_LOG=warn s3s-fs --host 127.0.0.1 --port "$STORE_S3_PORT" --access-key "$STORE_S3_KEY" \
    --secret-key "$STORE_S3_SECRET" "$STORE_S3_ROOT" >"$work/s3s-fs.log" 2>&1 &
  STORE_S3_PID=$!
  STORE_PIDS+=("$STORE_S3_PID")
  store_wait_port "$STORE_S3_PORT"
  log "store: s3s-fs (pid $STORE_S3_PID) on 127.0.0.1:$STORE_S3_PORT, bucket $STORE_BUCKET under $STORE_S3_ROOT"
  STORE_ENV=(
    "AGENTKEYS_DATABASE_URL=$BENCH_PG/$STORE_DB$BENCH_PG_PARAMS"
    "AGENTKEYS_BLOBS=s3://$STORE_BUCKET/mail"
    "AWS_ENDPOINT_URL=http://127.0.0.1:$STORE_S3_PORT"
    "AWS_REGION=us-east-1"
    "AWS_ACCESS_KEY_ID=$STORE_S3_KEY"
    "AWS_SECRET_ACCESS_KEY=$STORE_S3_SECRET"
  )
}

# The store environment with the database and S3 endpoint replaced by counting
# proxies (bench/wirecount.py) on PG_PORT and S3P_PORT; counters go to DIR.
# Sets STORE_COUNT_ENV.   store_count_proxies DIR PG_PORT S3P_PORT
store_count_proxies() {
  local dir=$1 pgp=$2 s3p=$3 here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  STORE_COUNT_DIR=$dir
  mkdir -p "$dir"
  local pg_hostport=${BENCH_PG#*://}
  pg_hostport=${pg_hostport#*@}
  pg_hostport=${pg_hostport%%/*}
  python3 "$here/wirecount.py" pg --listen "$pgp" --upstream "$pg_hostport" --out "$dir/pg.json" >"$dir/pg.log" 2>&1 &
  STORE_PIDS+=("$!")
  python3 "$here/wirecount.py" http --listen "$s3p" --upstream "127.0.0.1:$STORE_S3_PORT" --out "$dir/s3.json" \
    >"$dir/s3.log" 2>&1 &
  STORE_PIDS+=("$!")
  store_wait_port "$pgp"
  store_wait_port "$s3p"
  local user_part=${BENCH_PG#*://}
  user_part=${user_part%%@*}
  STORE_COUNT_ENV=(
    "AGENTKEYS_DATABASE_URL=postgres://$user_part@127.0.0.1:$pgp/$STORE_DB"
    "AGENTKEYS_BLOBS=s3://$STORE_BUCKET/mail"
    "AWS_ENDPOINT_URL=http://127.0.0.1:$s3p"
    "AWS_REGION=us-east-1"
    "AWS_ACCESS_KEY_ID=$STORE_S3_KEY"
    "AWS_SECRET_ACCESS_KEY=$STORE_S3_SECRET"
  )
  log "store: counting proxies for PostgreSQL :$pgp and S3 :$s3p (counters in $dir)"
}

# A snapshot of the counting proxies' counters as one JSON object on stdout
# (waits for their next flush first).
store_count_snapshot() {
  sleep 0.5
  python3 - "$STORE_COUNT_DIR/pg.json" "$STORE_COUNT_DIR/s3.json" <<'EOF'
import json, sys
out = {"counts": {}, "statements": {}}
for p in sys.argv[1:]:
    try:
        d = json.load(open(p))
    except (OSError, ValueError):
        continue
    out["counts"].update(d.get("counts", {}))
    out["statements"].update(d.get("statements", {}))
print(json.dumps(out))
EOF
}

# Seconds of CPU (user + system) used so far by the store's own processes, as
# "POSTGRESQL S3": the PostgreSQL backends connected to our databases (backends
# that already exited are not counted; the pools keep theirs open) and s3s-fs.
# Empty for sqlite.
store_cpu() {
  store_is_shared || return 0
  local pids p files=()
  pids=$(STORE_PSQL_DB=postgres store_psql -c "SELECT pid FROM pg_stat_activity WHERE datname IN ($(store_db_list))" 2>/dev/null)
  for p in $pids; do [[ -r /proc/$p/stat ]] && files+=("/proc/$p/stat"); done
  # Field 2 (comm) has no spaces for these processes, so $14/$15 are utime/stime.
  local hz pg s3
  hz=$(getconf CLK_TCK)
  pg=0
  ((${#files[@]})) && pg=$(awk -v hz="$hz" '{ s += $14 + $15 } END { printf "%.3f", s / hz }' "${files[@]}" 2>/dev/null)
  s3=$(awk -v hz="$hz" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$STORE_S3_PID/stat" 2>/dev/null)
  printf '%s %s\n' "${pg:-0}" "${s3:-0}"
}

# Our databases, quoted and comma-separated, for SQL.
store_db_list() {
  local d out=""
  for d in "${STORE_DBS[@]}"; do out+="${out:+,}'$d'"; done
  printf '%s' "${out:-''}"
}

# How many inbox copies the blob store holds under PREFIX_DIR of the bucket
# (s3s-fs keeps each object as a file) or a data directory's blob tree.
#   store_count_eml DATA_DIR
store_count_eml() {
  local dir
  if store_is_shared; then dir="$STORE_S3_ROOT/$STORE_BUCKET/mail"; else dir="$1/blobs"; fi
  find "$dir" -type f -name '*.eml' 2>/dev/null | wc -l
}

# Makes DATA_B a data directory for a second node sharing the store: the first
# node's master seed (mode 0600), nothing else.   store_second_data DATA_A DATA_B
store_second_data() {
  mkdir -p "$2"
  cp -p "$1/master.seed" "$2/master.seed"
  chmod 600 "$2/master.seed"
}

# HAProxy in TCP mode (roundrobin) with one frontend per argument
# "PORT=BACKEND_PORT[,BACKEND_PORT…]"; config and log in DIR.
#   store_haproxy DIR SPEC…
store_haproxy() {
  local dir=$1
  shift
  command -v haproxy >/dev/null || {
    log "installing haproxy"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy >/dev/null ||
      { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy >/dev/null; }
  }
  command -v haproxy >/dev/null || die "haproxy is required for BENCH_NODES=2 (apt-get install haproxy)"
  mkdir -p "$dir"
  {
    printf 'global\n  maxconn 9000\n\n'
    printf 'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n\n'
    local spec front backs b i=0
    for spec in "$@"; do
      front=${spec%%=*}
      backs=${spec#*=}
      printf 'listen l%s\n  bind 127.0.0.1:%s\n  balance roundrobin\n' "$front" "$front"
      i=0
      for b in ${backs//,/ }; do
        i=$((i + 1))
        printf '  server n%s 127.0.0.1:%s\n' "$i" "$b"
      done
      printf '\n'
    done
  } >"$dir/haproxy.cfg"
  haproxy -c -f "$dir/haproxy.cfg" >/dev/null || die "haproxy rejected $dir/haproxy.cfg"
  # -db: stay in the foreground (so $! is HAProxy and stopping it is by PID).
  haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
  STORE_HAPROXY_PID=$!
  STORE_PIDS+=("$STORE_HAPROXY_PID")
  for spec in "$@"; do store_wait_port "${spec%%=*}"; done
  log "store: HAProxy (pid $STORE_HAPROXY_PID, TCP, roundrobin): $*"
}

# Stops what store_init, store_count_proxies and store_haproxy started (by PID)
# and drops the database. Safe to call twice.
store_cleanup() {
  local pid
  for pid in "${STORE_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${STORE_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  STORE_PIDS=()
  local db
  for db in "${STORE_DBS[@]}"; do
    STORE_PSQL_DB=postgres store_psql -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 &&
      log "store: dropped database $db"
  done
  STORE_DBS=()
  STORE_DB=""
  return 0
}

# The database query DB_QUERY on our database (postgres+s3) or the SQLite file
# of DATA_DIR.   store_query DATA_DIR SQL
store_query() {
  if store_is_shared; then
    STORE_PSQL_DB=$STORE_DB store_psql -c "$2"
  else
    sqlite3 "$1/meta.sqlite" "$2"
  fi
}

# A second store on the same servers for another server of the same run (the
# outbound part): a database of its own and its own key prefix in the bucket.
# Sets STORE_EXTRA_ENV (empty for sqlite).   store_extra_env PREFIX
store_extra_env() {
  STORE_EXTRA_ENV=()
  store_is_shared || return 0
  local db
  db=$(store_new_database)
  store_track_database "$db"
  log "store: PostgreSQL database $db (s3://$STORE_BUCKET/$1) for a second server"
  STORE_EXTRA_ENV=(
    "AGENTKEYS_DATABASE_URL=$BENCH_PG/$db$BENCH_PG_PARAMS"
    "AGENTKEYS_BLOBS=s3://$STORE_BUCKET/$1"
    "AWS_ENDPOINT_URL=http://127.0.0.1:$STORE_S3_PORT"
    "AWS_REGION=us-east-1"
    "AWS_ACCESS_KEY_ID=$STORE_S3_KEY"
    "AWS_SECRET_ACCESS_KEY=$STORE_S3_SECRET"
  )
}

# Owner commands run locally (no --server: `owner enroll`, `grant create`) refuse
# a data directory without meta.sqlite even when the metadata is in PostgreSQL
# (crates/cli/src/local_api.rs `router` checks the SQLite file, not the
# configured location; DataDir::open itself checks the right thing). Until that
# is fixed, an empty meta.sqlite marks the data directory for them; nothing
# opens it, the metadata location is PostgreSQL.   store_local_owner_marker DATA_DIR
store_local_owner_marker() {
  store_is_shared || return 0
  [[ -e $1/meta.sqlite ]] || : >"$1/meta.sqlite"
}

# Samples, every 0.2 s until store_wait_sampler_stop (at most MAX_S seconds),
# what the PostgreSQL backends of our databases that are not idle are doing:
# one line per sample and backend, "wait_event_type:wait_event" ("CPU:-" when
# running), appended to FILE. One psql session for the whole window.
#   store_wait_sampler_start FILE MAX_S ; … ; store_wait_sampler_stop
store_wait_sampler_start() {
  store_is_shared || return 0
  local file=$1 max=$2
  local q="SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-') FROM pg_stat_activity WHERE datname IN ($(store_db_list)) AND state <> 'idle' AND pid <> pg_backend_pid();"
  STORE_SAMPLER_STOP="$file.stop"
  rm -f "$STORE_SAMPLER_STOP"
  (
    end=$((SECONDS + max))
    while [[ ! -e $STORE_SAMPLER_STOP ]] && ((SECONDS < end)); do
      printf '%s\n' "$q"
      sleep 0.2
    done | STORE_PSQL_DB=postgres store_psql >>"$file" 2>/dev/null
  ) &
  STORE_SAMPLER_PID=$!
}
store_wait_sampler_stop() {
  [[ -n ${STORE_SAMPLER_PID:-} ]] || return 0
  : >"$STORE_SAMPLER_STOP"
  wait "$STORE_SAMPLER_PID" 2>/dev/null
  rm -f "$STORE_SAMPLER_STOP"
  STORE_SAMPLER_PID=""
}

# ANALYZE on our databases. This machine's PostgreSQL runs with autovacuum =
# off, so without it the planner keeps the statistics of an empty `messages`
# table and picks messages_by_inbox_seq (owner, inbox) with a filter on id for
# the index transaction's lookup of already indexed rows: a scan of the whole
# inbox per message, under the message_seq row lock (BENCHMARKS.md, "Scale-out
# stores"). BENCH_PG_ANALYZE=1 (default) runs it after every warm-up, as
# autovacuum's auto-analyze would on a server that has it on.
BENCH_PG_ANALYZE=${BENCH_PG_ANALYZE:-1}
store_analyze() {
  store_is_shared && [[ $BENCH_PG_ANALYZE == 1 ]] || return 0
  local db
  for db in "${STORE_DBS[@]}"; do STORE_PSQL_DB=$db store_psql -c "ANALYZE" >/dev/null 2>&1 || log "store: ANALYZE on $db failed"; done
  log "store: ANALYZE on our database(s) (BENCH_PG_ANALYZE=1)"
}

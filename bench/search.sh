#!/usr/bin/env bash
# Search latency at 100,000 messages (issue 13 §4), SQLite FTS5, with two
# peers in the same run: one page of listing, and a LIKE scan over the same
# bodies without a full-text index. See BENCHMARKS.md, "Search (issue 13)".
#
#   bash bench/search.sh                 # debug build (what CI has), 100,000 messages
#   BENCH_RELEASE=1 bash bench/search.sh # optimised build (on a quiet machine)
#   BENCH_N=20000 BENCH_Q=100 bash bench/search.sh
#   BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432/postgres bash bench/search.sh
#                                        # PostgreSQL (a database of its own, dropped at the end)
#   BENCH_EXPLAIN=1 bash bench/search.sh # also print each kind's query plan
#
# Nothing listens anywhere; the database lives in a temporary directory under
# BENCH_DIR (default the temp dir) and is removed at the end. Bounded: N
# inserts, Q queries per kind, BENCH_PEER_Q LIKE scans.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_N:-100000}
Q=${BENCH_Q:-200}
PEER_Q=${BENCH_PEER_Q:-20}
DIR=${BENCH_DIR:-${TMPDIR:-/tmp}}
profile=()
[[ ${BENCH_RELEASE:-0} == 1 ]] && profile=(--release)
extra=()
# Always with the PostgreSQL backend compiled in, so both runs share one build.
profile+=(--features postgres)
[[ -n ${BENCH_POSTGRES:-} ]] && extra+=(--postgres "$BENCH_POSTGRES")
[[ ${BENCH_EXPLAIN:-0} == 1 ]] && extra+=(--explain)
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), build ${profile[*]:-debug}"
CARGO_INCREMENTAL=0 cargo run -q "${profile[@]}" -p agentkeys-store --example search_latency -- \
  -n "$N" -q "$Q" --peer-q "$PEER_Q" --dir "$DIR" "${extra[@]}"
echo "# done $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"

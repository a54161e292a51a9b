#!/usr/bin/env bash
# What TLS costs the mixer per participant at the all-talk load: one room where everyone talks,
# the mixer pinned to one core and loadgen to the other, run over ws:// and over wss:// in turn
# (ROUNDS times each, alternating, since a shared machine drifts), reporting the mixer's CPU.
#
#   loadgen/tls_cost.sh                      # 100 talkers, 30 s per run, 2 rounds
#   N=150 DURATION=20 ROUNDS=3 loadgen/tls_cost.sh
#
# The mixer's CPU is read from /proc/<pid>/stat over a steady window (from 5 s after loadgen
# starts to 5 s before it ends: no joins, no TLS handshakes) and, as loadgen reports it, over the
# whole run. Needs Linux, taskset, openssl, curl; builds release binaries unless SKIP_BUILD=1.
set -euo pipefail

N=${N:-100}
DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-18443}
OUT=${OUT:-$(mktemp -d -t mixer-tls-cost.XXXXXX)}
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
MIXER=$TARGET/release/mixer
LOADGEN=$TARGET/release/loadgen

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release -p mixer -p loadgen --bins >&2
fi

# A throwaway CA and a certificate from it for 127.0.0.1 (P-256, as most servers use).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=mixer tls_cost CA" -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$OUT/server.key" -out "$OUT/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$OUT/ext.cnf"
openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" \
    -CAcreateserial -days 2 -extfile "$OUT/ext.cnf" -out "$OUT/server.pem" 2>/dev/null

ticks() { local s; s=$(cat "/proc/$1/stat"); s=${s##*) }; set -- $s; echo $((${12} + ${13})); }

MIXER_PID=
cleanup() { [[ -n $MIXER_PID ]] && kill "$MIXER_PID" 2>/dev/null; wait 2>/dev/null || :; }
trap cleanup EXIT

# run MODE ROUND: one run over ws or wss; prints one result line.
run() {
    local mode=$1 round=$2 scheme=ws curl_tls=() lg_tls=() mx_tls=()
    if [[ $mode == wss ]]; then
        scheme=wss curl_tls=(--cacert "$OUT/ca.pem") lg_tls=(--ca-file "$OUT/ca.pem")
        mx_tls=(--tls-cert "$OUT/server.pem" --tls-key "$OUT/server.key")
    fi
    local http=${scheme/ws/http}
    taskset -c 0 "$MIXER" serve --listen "127.0.0.1:$PORT" --log warn \
        --max-connections-per-address 0 --mixer-threads 1 --parallel-room-talkers 0 \
        --max-talkers "$N" "${mx_tls[@]}" >"$OUT/mixer-$mode-$round.log" 2>&1 &
    MIXER_PID=$!
    for _ in $(seq 100); do
        curl -sf "${curl_tls[@]}" "$http://127.0.0.1:$PORT/healthz" >/dev/null && break
        sleep 0.1
    done
    taskset -c 1 "$LOADGEN" --url "$scheme://127.0.0.1:$PORT/" "${lg_tls[@]}" --rooms 1 \
        --participants "$N" --talkers "$N" --duration "$DURATION" --mixer-pid "$MIXER_PID" \
        --verify 8 --isolation-db 20 --max-loss 0.1 --min-rx-rate 98 --require-verified \
        --json "$OUT/report-$mode-$round.json" >"$OUT/loadgen-$mode-$round.txt" 2>&1 &
    local lg=$!
    sleep 5
    local t0 c0 t1 c1
    t0=$(date +%s.%N) c0=$(ticks "$MIXER_PID")
    sleep $((DURATION - 10))
    t1=$(date +%s.%N) c1=$(ticks "$MIXER_PID")
    local rc=0
    wait "$lg" || rc=$?
    local misses
    misses=$(curl -sf "${curl_tls[@]}" "$http://127.0.0.1:$PORT/metrics" |
        awk '/^mixer_tick_deadline_misses_total/ {s += $2} END {print s + 0}')
    kill "$MIXER_PID"
    wait "$MIXER_PID" 2>/dev/null || :
    MIXER_PID=
    python3 - "$mode" "$round" "$N" "$t0" "$c0" "$t1" "$c1" "$rc" "$misses" \
        "$OUT/report-$mode-$round.json" <<'EOF'
import json, sys
mode, rnd, n, t0, c0, t1, c1, rc, misses, report = sys.argv[1:]
steady = 100.0 * (int(c1) - int(c0)) / 100.0 / (float(t1) - float(t0))
try:
    r = json.load(open(report))
    whole = r["cpu"]["mixer_pct"]
    loadgen = r["cpu"]["loadgen_pct"]
    verdict = "pass" if r["passed"] else "FAIL"
except Exception as e:
    whole = loadgen = float("nan")
    verdict = "no report (%s)" % e
us = steady / 100.0 * 20_000 / int(n)
print("%-4s round %s: mixer %5.1f %% steady (%5.1f us per participant per 20 ms tick), "
      "%5.1f %% whole run; loadgen %5.1f %%; deadline misses %s; loadgen exit %s, %s"
      % (mode, rnd, steady, us, whole, loadgen, misses, rc, verdict))
EOF
}

echo "N=$N talkers in one room, ${DURATION}s per run, mixer on CPU 0, loadgen on CPU 1; $OUT"
for round in $(seq "$ROUNDS"); do
    run ws "$round"
    run wss "$round"
done

#!/usr/bin/env bash
# A fleet on this machine, without Docker: a private redis-server (persistence off, as the fleet
# wants it) and three mixer nodes on 127.0.0.1:8081-8083, each telling clients its own address.
# Runs until Ctrl-C, then stops the nodes (SIGTERM: each drains, handing its rooms to the nodes
# still up, then exits) and Redis, each by its own PID.
#
# Environment: NODES (3), BASE_PORT (8081), REDIS_PORT (6390), DRAIN_TIMEOUT_MS (2000: a node
# keeps its rooms this long before moving them; a production default is 5 minutes), and any
# MIXER_* variable of `mixer serve` (MIXER_AUTH_KEY_FILE for tokens, say).
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=${NODES:-3}
base_port=${BASE_PORT:-8081}
redis_port=${REDIS_PORT:-6390}
drain_ms=${DRAIN_TIMEOUT_MS:-2000}

command -v redis-server >/dev/null || {
    echo "local-fleet: redis-server is needed (bash .ci/setup installs it)" >&2
    exit 1
}
cargo build --release -p mixer

work=$(mktemp -d)
redis_pid=
node_pids=()
stop() {
    trap - EXIT INT TERM
    # Nodes first, so that they can still reach Redis while they drain.
    for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n $redis_pid ]]; then kill -TERM "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap stop EXIT INT TERM

# Each in a session of its own (setsid), so that Ctrl-C reaches only this script, which stops
# them in order, rather than every process of the terminal at once.
setsid redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$work" --logfile "$work/redis.log" &
redis_pid=$!

for i in $(seq 1 "$nodes"); do
    port=$((base_port + i - 1))
    setsid target/release/mixer serve --listen "127.0.0.1:$port" \
        --redis-url "redis://127.0.0.1:$redis_port/" \
        --public-url "ws://127.0.0.1:$port/" --node-id "mixer-$i" \
        --drain-timeout-ms "$drain_ms" &
    node_pids+=($!)
done
echo "local-fleet: Redis on 127.0.0.1:$redis_port, nodes on ws://127.0.0.1:$base_port/ and up; Ctrl-C stops them" >&2
wait

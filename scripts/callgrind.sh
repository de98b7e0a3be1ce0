#!/usr/bin/env bash
# Instructions per plain HTTP/1.1 request in sluice's user space, with callgrind: two runs
# of a release build (N1 and N2 requests over 8 keep-alive connections, h2load --h1),
# the difference divided by N2 - N1, which cancels startup and shutdown. The figure
# repeats from run to run, unlike CPU time on a busy machine.
#
#   scripts/callgrind.sh [BINARY] [EXTRA SLUICE ARGS...]
#
# Needs valgrind and h2load (Debian: valgrind nghttp2-client). The backends are the
# demo's, started here (127.0.0.1:9001-9003 when free).
#
# scripts/callgrind-h2.sh runs this with its own backend and load, set in the
# environment: CALLGRIND_BACKEND (one backend address), CALLGRIND_LOAD (h2load's
# options), CALLGRIND_N1, CALLGRIND_N2 and CALLGRIND_WHAT (the label printed).
set -euo pipefail
BIN=${1:-target/release/sluice}
shift || true
EXTRA=("$@")
N1=${CALLGRIND_N1:-2000}
N2=${CALLGRIND_N2:-12000}
read -r -a LOAD <<<"${CALLGRIND_LOAD:---h1 -c 8}"
PORT=18231

ARGS=()
if [ -n "${CALLGRIND_BACKEND:-}" ]; then
    ARGS=(-b "$CALLGRIND_BACKEND")
else
    "$BIN" demo --listen 127.0.0.1:0 --admin 127.0.0.1:0 >/tmp/callgrind-demo.out 2>&1 &
    DEMO=$!
    trap 'kill $DEMO 2>/dev/null || true' EXIT
    for _ in $(seq 100); do grep -q balancer /tmp/callgrind-demo.out && break; sleep 0.05; done
    mapfile -t BACKENDS < <(awk '/backend  /{sub("http://","",$2); print $2}' /tmp/callgrind-demo.out)
    for b in "${BACKENDS[@]}"; do ARGS+=(-b "$b"); done
fi

count() { # count N: total instructions for N requests
    local out=/tmp/callgrind.$1
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$BIN" -l 127.0.0.1:$PORT "${ARGS[@]}" --workers 1 --access-log off "${EXTRA[@]}" \
        >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 200); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
        sleep 0.1
    done
    h2load "${LOAD[@]}" -n "$1" "http://127.0.0.1:$PORT/" >/dev/null
    kill -INT $pid
    wait $pid || true
    awk '/^summary:/{print $2}' "$out"
}

a=$(count $N1)
b=$(count $N2)
echo "${CALLGRIND_WHAT:-instructions per request}: $(( (b - a) / (N2 - N1) ))"

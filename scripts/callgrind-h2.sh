#!/usr/bin/env bash
# Instructions per h2c request in sluice's user space, with callgrind: two runs of a
# release build (N1 and N2 requests, h2load with 16 connections of 4 streams each, the
# benchmark's h2c mode), the difference divided by N2 - N1. The backend is nginx
# answering 12 bytes with the bench's header set (Server, Date, Content-Type,
# Content-Length, Connection, X-Backend), since what HTTP/2 costs depends on the
# response head that is re-encoded.
#
#   scripts/callgrind-h2.sh [BINARY] [EXTRA SLUICE ARGS...]
#
# Needs valgrind, h2load and nginx (Debian: valgrind nghttp2-client nginx).
set -euo pipefail
BIN=${1:-target/release/sluice}
shift || true
BACKEND=18311
DIR=$(mktemp -d)

cat >"$DIR/nginx.conf" <<EOF
worker_processes 1;
daemon on;
pid $DIR/nginx.pid;
error_log $DIR/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $DIR/body;
    proxy_temp_path $DIR/proxy;
    fastcgi_temp_path $DIR/fcgi;
    uwsgi_temp_path $DIR/uwsgi;
    scgi_temp_path $DIR/scgi;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$BACKEND;
        add_header X-Backend 1 always;
        location / { default_type text/plain; return 200 "hello world\n"; }
    }
}
EOF
nginx -c "$DIR/nginx.conf"
trap 'nginx -c "$DIR/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$DIR"' EXIT

CALLGRIND_BACKEND=127.0.0.1:$BACKEND CALLGRIND_LOAD="-c 16 -m 4" CALLGRIND_N1=4000 \
    CALLGRIND_N2=24000 CALLGRIND_WHAT="h2c instructions per request" \
    "$(dirname "$0")/callgrind.sh" "$BIN" "$@"

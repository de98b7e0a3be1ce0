#!/usr/bin/env bash
# The test command (README): installs what the tests need when it is missing, then runs
# the whole suite. CI (.ci/run) calls this same script, so a fresh machine and CI agree.
# The tests start their own backends and sluice on 127.0.0.1, and the real servers
# sluice talks to (dnsmasq and etcd for discovery, Redis for shared rate limits) on free
# loopback ports, and headless Chromium for the dashboard; those are installed here,
# with apt-get when running as root.
set -euo pipefail
cd "$(dirname "$0")"

need() { # need COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing $2 for the tests" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        echo "test.sh: the tests need '$1' (Debian package $2); install it and run again" >&2
        exit 1
    fi
}

need dnsmasq dnsmasq-base
need etcd etcd-server
need redis-server redis-server
# The dashboard's test drives a real browser: Chromium through chromedriver.
need chromium chromium
need chromedriver chromium-driver

cargo test --locked "$@"

#!/usr/bin/env bash
# Runs the test suite on a fresh machine: installs what the tests use when it is missing
# (redis-server; DuckDB, pyarrow, delta-rs and Polars for the analyst and Delta tests; moto_server, a local S3-compatible
# server, for the S3 test; promtool and the prometheus server from Debian's prometheus
# package, unpacked under /opt/prom without installing the service (the alerts test runs it); Chromium for the dashboard's browser test; openssl
# for the TLS tests' certificates), then
# `cargo test --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # the TLS tests make their certificates
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
if ! python3 -c 'import duckdb, pyarrow, deltalake, polars' >/dev/null 2>&1 || ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt
fi
if ! command -v promtool >/dev/null 2>&1 && [ ! -x /opt/prom/usr/bin/promtool ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && (apt-get download prometheus >/dev/null 2>&1 || (apt-get update -qq && apt-get download prometheus)) \
    && mkdir -p /opt/prom && dpkg-deb -x prometheus_*.deb /opt/prom)
  rm -rf "$tmp"
fi
export PATH="$PATH:/opt/prom/usr/bin"
python3 scripts/module-cycles.py src   # no import cycle between src/'s top-level modules
exec cargo test --locked "$@"

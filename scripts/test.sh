#!/usr/bin/env bash
# Runs the test suite on a fresh machine: installs what the tests use when it is missing
# (redis-server; DuckDB and pyarrow for the analyst test; moto_server, a local S3-compatible
# server, for the S3 test), then `cargo test --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq redis-server
fi
if ! python3 -c 'import duckdb, pyarrow' >/dev/null 2>&1 || ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt
fi
exec cargo test --locked "$@"

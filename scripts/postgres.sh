#!/usr/bin/env bash
# Make sure a PostgreSQL server listens on 127.0.0.1 with a `retinanet_test` role and database
# (password auth over loopback), then print the test URL as the LAST line of stdout:
#
#   eval "$(bash scripts/postgres.sh | tail -1)"    # sets RETINANET_TEST_POSTGRES_URL
#
# Idempotent: re-running starts nothing that already runs and creates nothing that exists.
# Needs root (or sudo) because it manages the server as the `postgres` OS user. Progress goes to
# stderr so that stdout stays machine-readable. Environment knobs: PGPORT (port for a cluster this
# script creates; default 5432), RETINANET_TEST_PG_PASSWORD (default retinanet_test),
# RETINANET_TEST_PG_DATA (data folder used when Debian's pg_ctlcluster is unavailable).
set -euo pipefail

ROLE=retinanet_test
DB=retinanet_test
PASSWORD="${RETINANET_TEST_PG_PASSWORD:-retinanet_test}"
PORT="${PGPORT:-5432}"
DATA_DIR="${RETINANET_TEST_PG_DATA:-/var/lib/postgresql/retinanet-test}"

log() { echo "postgres.sh: $*" >&2; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres -- "$@"; fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -- "$@"; fi
}

# The newest installed server's bin folder (Debian layout), empty when none is installed.
server_bin() {
  find /usr/lib/postgresql -maxdepth 3 -name initdb -path '*/bin/*' 2>/dev/null |
    sort -V | tail -1 | xargs -r dirname
}

install_if_missing() {
  if [ -n "$(server_bin)" ]; then return; fi
  log "no PostgreSQL server binaries found; installing Debian's postgresql package"
  as_root apt-get -o Acquire::Retries=5 update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y -qq postgresql >&2
}

# Debian/Ubuntu: start (or create) a cluster with pg_ctlcluster; sets PORT to its port.
start_debian_cluster() {
  local version name port status
  read -r version name port status < <(pg_lsclusters --no-header | sort -k1,1V | tail -1 |
    awk '{print $1, $2, $3, $4}') || true
  if [ -z "${version:-}" ]; then
    version="$(basename "$(dirname "$(server_bin)")")"
    log "creating cluster $version/main on port $PORT"
    as_root pg_createcluster "$version" main --port "$PORT" >&2
    name=main port="$PORT" status=down
  fi
  PORT="$port"
  if [ "$status" != online ]; then
    log "starting cluster $version/$name on port $PORT"
    as_root pg_ctlcluster "$version" "$name" start >&2
  fi
  SOCKET_DIR=/var/run/postgresql
}

# Anywhere else: a private cluster under DATA_DIR owned by the postgres user.
start_private_cluster() {
  local bin
  bin="$(server_bin)"
  SOCKET_DIR="$DATA_DIR"
  if [ ! -f "$DATA_DIR/PG_VERSION" ]; then
    log "initdb $DATA_DIR"
    as_root mkdir -p "$DATA_DIR"
    as_root chown postgres: "$DATA_DIR"
    as_root chmod 700 "$DATA_DIR"
    as_postgres "$bin/initdb" -D "$DATA_DIR" --auth-local=peer --auth-host=scram-sha-256 >&2
  fi
  if ! as_postgres "$bin/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1; then
    log "starting $DATA_DIR on 127.0.0.1:$PORT"
    as_postgres "$bin/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w start \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA_DIR" >&2
  fi
}

psql_admin() {
  as_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -d postgres "$@"
}

ensure_role_and_database() {
  # The password is (re)set every time so that a changed RETINANET_TEST_PG_PASSWORD takes effect.
  psql_admin -v role="$ROLE" -v password="$PASSWORD" >&2 <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password') \gexec
SQL
  psql_admin -v role="$ROLE" -v db="$DB" >&2 <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
}

main() {
  install_if_missing
  if command -v pg_lsclusters >/dev/null && command -v pg_ctlcluster >/dev/null; then
    start_debian_cluster
  else
    start_private_cluster
  fi
  local bin
  bin="$(server_bin)"
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 30 || {
    log "server on 127.0.0.1:$PORT did not become ready"
    exit 1
  }
  ensure_role_and_database
  # Prove that password authentication over loopback works before handing out the URL.
  PGPASSWORD="$PASSWORD" psql -X -q -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d "$DB" \
    -c 'SELECT 1' >/dev/null
  log "ready: database $DB on 127.0.0.1:$PORT"
  echo "export RETINANET_TEST_POSTGRES_URL=postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
}

main "$@"

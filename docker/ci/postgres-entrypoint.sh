#!/bin/sh
# The stand-in's start (docker/ci/postgres.Dockerfile): on an empty data folder, create the
# cluster with POSTGRES_USER as superuser (password auth over TCP) and POSTGRES_DB, as the
# official image does; then run the command.
set -eu
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  user="${POSTGRES_USER:-postgres}"
  pwfile="$(mktemp)"
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" >"$pwfile"
  # UTF-8 as the official image (its LANG is en_US.utf8); a bare C locale would be SQL_ASCII,
  # where psycopg returns bytes for text.
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  db="${POSTGRES_DB:-$user}"
  if [ "$db" != postgres ]; then
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start
    createdb -U "$user" "$db"
    pg_ctl -D "$PGDATA" -w -m fast stop
  fi
fi
exec "$@"

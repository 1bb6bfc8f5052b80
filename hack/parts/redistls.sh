# A TLS-only 3-master Redis Cluster (the cluster bus over TLS too), with the
# rig's private CA: what ElastiCache and MemoryDB with in-transit encryption
# look like to a client. Debian's redis-server, our own processes, no
# persistence. A part of its own so the plain Redis part never restarts for it.
# The cluster bus always authenticates both ends, so nodes dial each other
# with the rig's client certificate (the server one is for serverAuth only).
REDIS_TLS_CLUSTER_PORTS=(17011 17012 17013)
REDISTLS_DIR=$RIG_DIR/redistls

redistls_install() { redis_install; }

redistls_cli() {
  local port=$1; shift
  redis-cli -h 127.0.0.1 -p "$port" --tls --cacert "$PKI_DIR/ca.pem" "$@"
}

redistls_formed() { cluster_formed redistls_cli "${REDIS_TLS_CLUSTER_PORTS[@]}"; }
redistls_ok() { cluster_ok redistls_cli "${REDIS_TLS_CLUSTER_PORTS[@]}"; }

redistls_start() {
  local i p addrs=()
  rig_pki
  host_ip_up
  for i in "${!REDIS_TLS_CLUSTER_PORTS[@]}"; do
    p=${REDIS_TLS_CLUSTER_PORTS[i]}
    mkdir -p "$REDISTLS_DIR/$i"
    is_running "redistls-$((i + 1))" || spawn "redistls-$((i + 1))" redis-server --bind 127.0.0.1 \
      --protected-mode no --port 0 --tls-port "$p" --tls-cluster yes --tls-replication yes \
      --tls-cert-file "$PKI_DIR/server.pem" --tls-key-file "$PKI_DIR/server.key" \
      --tls-ca-cert-file "$PKI_DIR/ca.pem" --tls-auth-clients no \
      --tls-client-cert-file "$PKI_DIR/client.pem" --tls-client-key-file "$PKI_DIR/client.key" \
      --cluster-enabled yes --cluster-config-file nodes.conf --dir "$REDISTLS_DIR/$i" \
      --save "" --appendonly no --daemonize no
  done
  for p in "${REDIS_TLS_CLUSTER_PORTS[@]}"; do
    wait_port "$p" 30 || fail_part redistls "cluster node not listening on $p"
    addrs+=("127.0.0.1:$p")
  done
  if ! redistls_formed; then
    log "creating the TLS Redis cluster"
    for p in "${REDIS_TLS_CLUSTER_PORTS[@]}"; do
      redistls_cli "$p" flushall >/dev/null
      redistls_cli "$p" cluster reset hard >/dev/null
    done
    redis-cli --tls --cacert "$PKI_DIR/ca.pem" --cluster create "${addrs[@]}" --cluster-replicas 0 \
      --cluster-yes >>"$RIG_DIR/logs/redistls-create.log" 2>&1 \
      || fail_part redistls "redis-cli --cluster create over TLS failed"
  fi
  for i in $(seq 1 150); do
    redistls_ok && return 0
    sleep 0.2
  done
  fail_part redistls "cluster_state not ok after 30 s"
}

redistls_health() {
  local i
  for i in "${!REDIS_TLS_CLUSTER_PORTS[@]}"; do is_running "redistls-$((i + 1))" || return 1; done
  redistls_ok
}

redistls_stop() {
  local i
  for i in "${!REDIS_TLS_CLUSTER_PORTS[@]}"; do stop_pid "redistls-$((i + 1))"; done
}

redistls_env() {
  local p nodes=()
  for p in "${REDIS_TLS_CLUSTER_PORTS[@]}"; do nodes+=("rediss://127.0.0.1:$p"); done
  echo "BGP_REDIS_TLS_CLUSTER_NODES=$(IFS=,; echo "${nodes[*]}")"
}

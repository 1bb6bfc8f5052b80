# Redis from Debian's package, run as our own processes: a standalone server,
# a 3-master Redis Cluster, and a TLS-only standalone server (certificate from
# the rig's private CA), all on 127.0.0.1 and without persistence.
REDIS_PORT=${BGP_REDIS_PORT:-16379}
REDIS_TLS_PORT=${BGP_REDIS_TLS_PORT:-16380}
REDIS_CLUSTER_PORTS=(17001 17002 17003)
REDIS_DIR=$RIG_DIR/redis

redis_install() {
  local fresh=""
  dpkg -s redis-server >/dev/null 2>&1 || fresh=1
  apt_need redis-server redis-tools
  # The package starts and enables a system redis on :6379. Nothing uses it;
  # stop it when it was this install that brought it.
  if [ -n "$fresh" ]; then
    if [ -d /run/systemd/system ]; then
      systemctl disable --now redis-server >/dev/null 2>&1 || true
    else
      service redis-server stop >/dev/null 2>&1 || true
    fi
  fi
}

redis_cli() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }

redis_spawn() {
  local name=$1 port=$2; shift 2
  mkdir -p "$REDIS_DIR/$name"
  # spawn keeps the process in the foreground of setsid: never daemonize.
  host_ip_up
  spawn "$name" redis-server --bind 127.0.0.1 "$RIG_HOST_IP" --protected-mode no --port "$port" --dir "$REDIS_DIR/$name" \
    --save "" --appendonly no --daemonize no "$@"
}

# Cluster checks shared with the TLS cluster (hack/parts/redistls.sh): CLI is
# the function that talks to one node (redis_cli, redistls_cli), then the ports.
cluster_field() { "$1" "$2" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$3://p"; }

# Formed = every node knows all the others and all slots are assigned
# (nodes.conf keeps that across restarts).
cluster_formed() {
  local cli=$1 p; shift
  for p in "$@"; do
    [ "$(cluster_field "$cli" "$p" cluster_known_nodes)" = "$#" ] || return 1
    [ "$(cluster_field "$cli" "$p" cluster_slots_assigned)" = 16384 ] || return 1
  done
}

cluster_ok() {
  local cli=$1 p; shift
  for p in "$@"; do
    [ "$(cluster_field "$cli" "$p" cluster_state)" = ok ] || return 1
  done
}

redis_cluster_formed() { cluster_formed redis_cli "${REDIS_CLUSTER_PORTS[@]}"; }
redis_cluster_ok() { cluster_ok redis_cli "${REDIS_CLUSTER_PORTS[@]}"; }

redis_start() {
  local i p addrs=()
  redis_spawn redis "$REDIS_PORT"
  rig_pki
  redis_spawn redis-tls 0 --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$PKI_DIR/server.pem" \
    --tls-key-file "$PKI_DIR/server.key" --tls-ca-cert-file "$PKI_DIR/ca.pem" --tls-auth-clients no
  for i in "${!REDIS_CLUSTER_PORTS[@]}"; do
    redis_spawn "redis-cluster-$((i + 1))" "${REDIS_CLUSTER_PORTS[i]}" \
      --cluster-enabled yes --cluster-config-file nodes.conf
  done
  wait_port "$REDIS_PORT" 30 || fail_part redis "not listening on $REDIS_PORT"
  wait_port "$REDIS_TLS_PORT" 30 || fail_part redis "TLS server not listening on $REDIS_TLS_PORT"
  for p in "${REDIS_CLUSTER_PORTS[@]}"; do
    wait_port "$p" 30 || fail_part redis "cluster node not listening on $p"
    addrs+=("127.0.0.1:$p")
  done

  if ! redis_cluster_formed; then
    # Fresh, or left half-made (a node's dir wiped, an interrupted create):
    # the rig's data is disposable, so start the cluster over.
    log "creating the Redis cluster"
    for p in "${REDIS_CLUSTER_PORTS[@]}"; do
      redis_cli "$p" flushall >/dev/null
      redis_cli "$p" cluster reset hard >/dev/null
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
      >>"$RIG_DIR/logs/redis-cluster-create.log" 2>&1 || fail_part redis "redis-cli --cluster create failed"
  fi

  for i in $(seq 1 150); do
    redis_cluster_ok && return 0
    sleep 0.2
  done
  fail_part redis "cluster_state not ok after 30 s"
}

redis_health() {
  [ "$(redis_cli "$REDIS_PORT" ping 2>/dev/null | tr -d '\r')" = PONG ] && redis_cluster_ok \
    && [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_TLS_PORT" --tls --cacert "$PKI_DIR/ca.pem" ping 2>/dev/null | tr -d '\r')" = PONG ]
}

redis_stop() {
  local i names=(redis redis-tls) n
  for i in "${!REDIS_CLUSTER_PORTS[@]}"; do names+=("redis-cluster-$((i + 1))"); done
  # Signal all first so the shutdowns overlap; stop_pid then waits and cleans up.
  for n in "${names[@]}"; do
    if is_running "$n"; then kill -TERM "$(cat "$(pidfile "$n")")" 2>/dev/null || true; fi
  done
  for n in "${names[@]}"; do stop_pid "$n"; done
}

redis_env() {
  local p nodes=()
  for p in "${REDIS_CLUSTER_PORTS[@]}"; do nodes+=("redis://127.0.0.1:$p"); done
  echo "BGP_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
  echo "BGP_REDIS_URL_FOR_PODS=redis://$RIG_HOST_IP:$REDIS_PORT/0"
  echo "BGP_REDIS_CLUSTER_NODES=$(IFS=,; echo "${nodes[*]}")"
  echo "BGP_REDIS_TLS_URL=rediss://127.0.0.1:$REDIS_TLS_PORT/0"
  echo "BGP_REDIS_TLS_CA=$PKI_DIR/ca.pem"
}

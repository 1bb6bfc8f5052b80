# An OIDC token endpoint (hack/parts/oidc.py): OAuth 2.0 client credentials
# issuing RS256 JWTs, which Kafka's OAUTHBEARER listener validates against its
# JWKS. Python stdlib HTTP server in the cache venv; joserfc signs.
OIDC_JOSERFC_VERSION=${BGP_OIDC_JOSERFC_VERSION:-1.8.0}
OIDC_PORT=${BGP_OIDC_PORT:-19180}
# The issuer is one fixed URL: Kafka compares it with the tokens' iss, and
# tokens fetched through the pod-facing address carry the same one.
OIDC_ISSUER=http://127.0.0.1:$OIDC_PORT
OIDC_CLIENT_ID=bgpersist
OIDC_CLIENT_SECRET=bgpersist-oidc-secret
OIDC_AUDIENCE=bgpersist-kafka
OIDC_TOKEN_SECONDS=${BGP_OIDC_TOKEN_SECONDS:-3600}

oidc_install() { py_need "joserfc==$OIDC_JOSERFC_VERSION"; }

oidc_start() {
  # All addresses: the tests use 127.0.0.1, pods on the rig's node $RIG_HOST_IP.
  host_ip_up
  if ! is_running oidc; then
    (exec 3<>/dev/tcp/127.0.0.1/"$OIDC_PORT") 2>/dev/null \
      && fail_part oidc "port $OIDC_PORT is held by another process"
  fi
  # The key is new on each start. A broker that is already running holds the
  # old JWKS: it refuses the first token signed with the new key and fetches
  # the JWKS again on that miss.
  is_running oidc || ! is_running kafka \
    || log "oidc: new signing key; the running Kafka refuses the first OAUTHBEARER login (restart kafka to avoid it)"
  spawn oidc "$PY_VENV/bin/python" "$REPO_ROOT/hack/parts/oidc.py" \
    --listen 0.0.0.0 --port "$OIDC_PORT" --issuer "$OIDC_ISSUER" --audience "$OIDC_AUDIENCE" \
    --client-id "$OIDC_CLIENT_ID" --client-secret "$OIDC_CLIENT_SECRET" \
    --token-seconds "$OIDC_TOKEN_SECONDS"
  local i
  for i in $(seq 1 100); do
    oidc_health && return 0
    is_running oidc || fail_part oidc "process exited"
    sleep 0.2
  done
  fail_part oidc "not answering on $OIDC_PORT after 20 s"
}

oidc_health() { is_running oidc && curl -sf "http://127.0.0.1:$OIDC_PORT/jwks" >/dev/null 2>&1; }
oidc_stop() { stop_pid oidc; }

oidc_env() {
  echo "BGP_OIDC_TOKEN_URL=http://127.0.0.1:$OIDC_PORT/token"
  echo "BGP_OIDC_TOKEN_URL_FOR_PODS=http://$RIG_HOST_IP:$OIDC_PORT/token"
  echo "BGP_OIDC_CLIENT_ID=$OIDC_CLIENT_ID"
  echo "BGP_OIDC_CLIENT_SECRET=$OIDC_CLIENT_SECRET"
  echo "BGP_OIDC_AUDIENCE=$OIDC_AUDIENCE"
  echo "BGP_OIDC_ISSUER=$OIDC_ISSUER"
}

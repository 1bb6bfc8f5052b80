# moto's server mode: one local endpoint for the AWS APIs (Secrets Manager,
# DynamoDB, S3, ...), from PyPI into the cache venv.
MOTO_VERSION=${BGP_MOTO_VERSION:-5.2.5}
MOTO_PORT=${BGP_MOTO_PORT:-15000}

moto_install() {
  py_need "moto[server]==$MOTO_VERSION"
  # py_need only checks presence: enforce the pin on an older venv.
  [ "$("$PY_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))')" = "$MOTO_VERSION" ] \
    || "$PY_VENV/bin/python" -m pip install -q "moto[server]==$MOTO_VERSION"
}

moto_start() {
  # moto serves one address: all of them, so the tests reach it on 127.0.0.1
  # and pods on the rig's node (the operator's secret sync) on $RIG_HOST_IP.
  host_ip_up
  spawn moto "$PY_VENV/bin/moto_server" -H 0.0.0.0 -p "$MOTO_PORT"
  local i
  for i in $(seq 1 150); do
    moto_health && return 0
    is_running moto || fail_part moto "process exited"
    sleep 0.2
  done
  fail_part moto "not answering on $MOTO_PORT after 30 s"
}

moto_health() { curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1; }
moto_stop() { stop_pid moto; }

moto_env() {
  echo "BGP_AWS_ENDPOINT=http://127.0.0.1:$MOTO_PORT"
  echo "BGP_AWS_ENDPOINT_FOR_PODS=http://$RIG_HOST_IP:$MOTO_PORT"
  echo "BGP_AWS_REGION=us-east-1"
  echo "BGP_AWS_ACCESS_KEY_ID=testing"
  echo "BGP_AWS_SECRET_ACCESS_KEY=testing"
}

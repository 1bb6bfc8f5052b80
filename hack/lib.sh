# Shared helpers for the rig scripts. Sourced, never run.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Built parts are cached outside the repo so clean clones reuse them.
CACHE_DIR=${BGP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bgpersist}
# Runtime state (data, logs, pid files) of the running rig.
RIG_DIR=${BGP_RIG_DIR:-$REPO_ROOT/.rig}
ENV_FILE=$RIG_DIR/env
mkdir -p "$CACHE_DIR" "$RIG_DIR/pids" "$RIG_DIR/logs"

# The address pods on the rig's node reach the rig's servers at. Parts that
# pods use listen on it beside 127.0.0.1. It is a /32 on lo: this kernel has
# no dummy interfaces, and a pod's packets to it arrive through the CNI
# bridge and are delivered locally. 198.18.0.0/15 is the range reserved for
# network tests (RFC 2544): nothing outside this machine is ever addressed.
RIG_HOST_IP=${BGP_RIG_HOST_IP:-198.19.0.1}
host_ip_up() {
  ip -4 addr show dev lo | grep -q " $RIG_HOST_IP/" && return 0
  ip addr add "$RIG_HOST_IP/32" dev lo 2>/dev/null || die "cannot add $RIG_HOST_IP to lo (root needed)"
}
host_ip_down() { ip addr del "$RIG_HOST_IP/32" dev lo 2>/dev/null || true; }

log() { printf '[rig %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Print the tail of a part's log so a failed start explains itself.
log_tail() {
  local name=$1 f
  for f in "$RIG_DIR"/logs/"$name"*.log; do
    [ -f "$f" ] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 40 "$f" >&2
  done
}
fail_part() { local name=$1; shift; log "part '$name' failed: $*"; log_tail "$name"; exit 1; }

pidfile() { echo "$RIG_DIR/pids/$1.pid"; }
# A zombie counts as exited: PID 1 here reaps orphans only every ~2 s.
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$st" ] && [ "${st#Z}" = "$st" ]; }
is_running() {
  local f; f=$(pidfile "$1")
  [ -f "$f" ] && alive "$(cat "$f")"
}

# Start a long-running process in its own session, record its PID.
spawn() {
  local name=$1; shift
  if is_running "$name"; then return 0; fi
  setsid "$@" >"$RIG_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$(pidfile "$name")"
}

# Stop exactly what we started: the recorded PID's process group.
stop_pid() {
  local name=$1 f pid i
  f=$(pidfile "$name")
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

wait_port() {
  local port=$1 secs=${2:-60} i
  for i in $(seq 1 $((secs * 5))); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# apt-get install only what is missing; update the index once per run.
APT_UPDATED=""
apt_need() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ -n "$APT_UPDATED" ] || { apt-get update -qq >/dev/null; APT_UPDATED=1; }
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The rig's private CA and the certificates its TLS listeners and clients
# use, made once per rig dir (openssl, keytool from the JDK):
#   ca.pem               the CA (what clients trust)
#   server.pem/.key      127.0.0.1, localhost and the pod-facing address
#   server.p12           the server pair as a PKCS#12 keystore (Kafka)
#   truststore.p12       the CA as a PKCS#12 truststore (Kafka, client auth)
#   client.pem/.key      a client certificate the CA signed (mTLS)
#   other-ca.pem         a CA nothing is signed by (a wrong CA, for tests)
PKI_DIR=$RIG_DIR/pki
PKI_PASSWORD=bgprig-pki
rig_pki() {
  [ -f "$PKI_DIR/.complete" ] && return 0
  command -v keytool >/dev/null || apt_need openjdk-17-jre-headless
  rm -rf "$PKI_DIR"; mkdir -p "$PKI_DIR"
  (
    cd "$PKI_DIR"
    local days=3650
    openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=bgpersist rig CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=unrelated CA" \
      -keyout other-ca.key -out other-ca.pem 2>/dev/null
    sign() { # name cn extensions
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days $days \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    }
    sign server localhost "subjectAltName=IP:127.0.0.1,IP:$RIG_HOST_IP,DNS:localhost
extendedKeyUsage=serverAuth"
    sign client bgpersist "extendedKeyUsage=clientAuth"
    openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name server \
      -out server.p12 -passout "pass:$PKI_PASSWORD"
    keytool -importcert -noprompt -alias ca -file ca.pem -keystore truststore.p12 \
      -storetype PKCS12 -storepass "$PKI_PASSWORD" >/dev/null 2>&1
    chmod 644 ./*.pem ./*.key
  ) || { log "making the rig's certificates failed"; exit 1; }
  touch "$PKI_DIR/.complete"
}

# buildah with its own storage under the cache (vfs: no overlay mounts),
# shared by the pause image (hack/parts/node.sh) and hack/image.
rig_buildah() {
  buildah --root "$CACHE_DIR/buildah/root" --runroot "$CACHE_DIR/buildah/run" --storage-driver vfs "$@"
}

# A dedicated virtualenv in the cache for the Python-packaged parts.
PY_VENV=$CACHE_DIR/venv
py_need() {
  [ -x "$PY_VENV/bin/python" ] || python3 -m venv "$PY_VENV"
  local missing=() spec
  for spec in "$@"; do
    "$PY_VENV/bin/python" -m pip show "${spec%%[=\[]*}" >/dev/null 2>&1 || missing+=("$spec")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "pip install ${missing[*]}"
  "$PY_VENV/bin/python" -m pip install -q "${missing[@]}"
}

# Run a command as an unprivileged user when we are root (Postgres refuses root).
RIG_USER=bgprig
as_rig_user() {
  if [ "$(id -u)" = 0 ]; then
    id "$RIG_USER" >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin "$RIG_USER"
    setpriv --reuid="$RIG_USER" --regid="$RIG_USER" --init-groups "$@"
  else
    "$@"
  fi
}

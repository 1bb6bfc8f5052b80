# kube-apiserver + etcd, built from Go modules and cached by version.
K8S_VERSION=${BGP_K8S_VERSION:-v1.34.4}
ETCD_VERSION=${BGP_ETCD_VERSION:-v3.6.8}
K8S_BIN=$CACHE_DIR/kube-apiserver-$K8S_VERSION/kube-apiserver
ETCD_BIN=$CACHE_DIR/etcd-$ETCD_VERSION/etcd
ETCD_PORT=${BGP_ETCD_PORT:-23790}
ETCD_PEER_PORT=${BGP_ETCD_PEER_PORT:-23800}
APISERVER_PORT=${BGP_APISERVER_PORT:-16443}
K8S_DIR=$RIG_DIR/k8s
KUBECONFIG_FILE=$RIG_DIR/kubeconfig
ADMIN_TOKEN=bgpersist-rig-admin-token

# Builds k8s.io/kubernetes commands (kube-apiserver, kubelet, ...) from Go
# modules into OUT_DIR: one wrapper module whose go.mod points each staging
# repo at its published tag.
build_k8s_commands() {
  local out_dir=$1; shift
  local missing=() c
  for c in "$@"; do [ -x "$out_dir/$c" ] || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v go >/dev/null || die "go is needed to build ${missing[*]}"
  log "building ${missing[*]} $K8S_VERSION (cold: several minutes each on 2 cores)"
  local w; w=$(mktemp -d "$CACHE_DIR/build-k8s.XXXX")
  local minor=${K8S_VERSION#v1.}
  local staging=v0.$minor
  (
    cd "$w"
    go mod init bgprig/k8scommands >/dev/null 2>&1
    {
      printf '//go:build tools\n\npackage tools\n\n'
      for c in "${missing[@]}"; do printf 'import _ "k8s.io/kubernetes/cmd/%s/app"\n' "$c"; done
    } > tools.go
    # k8s.io/kubernetes requires its staging repos at v0.0.0 and replaces them
    # with local paths; point each at its published tag instead.
    local upstream
    upstream=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$upstream" \
      | awk '{print $1}' | while read -r m; do go mod edit -replace="$m=$m@$staging"; done
    go mod tidy >/dev/null
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
    ld="$ld -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
    mkdir -p bin
    for c in "${missing[@]}"; do
      CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "bin/$c" "k8s.io/kubernetes/cmd/$c"
    done
  ) || { rm -rf "$w"; die "build of ${missing[*]} failed"; }
  mkdir -p "$out_dir"
  for c in "${missing[@]}"; do mv "$w/bin/$c" "$out_dir/$c"; done
  rm -rf "$w"
}

build_kube_apiserver() { build_k8s_commands "$(dirname "$K8S_BIN")" kube-apiserver; }

build_etcd() {
  [ -x "$ETCD_BIN" ] && return 0
  command -v go >/dev/null || die "go is needed to build etcd"
  log "building etcd $ETCD_VERSION"
  local w; w=$(mktemp -d "$CACHE_DIR/build-etcd.XXXX")
  (
    cd "$w"
    go mod init bgprig/etcd >/dev/null 2>&1
    cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy >/dev/null
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o etcd .
  ) || { rm -rf "$w"; die "etcd build failed"; }
  mkdir -p "$(dirname "$ETCD_BIN")"
  mv "$w/etcd" "$ETCD_BIN"
  rm -rf "$w"
}

k8s_install() { build_etcd; build_kube_apiserver; }

# The in-cluster address of the API (the `kubernetes` Service's ClusterIP).
SERVICE_CIDR=198.18.16.0/24
APISERVER_SERVICE_IP=198.18.16.1

k8s_certs() {
  # Certificates from before pods reached the API lack its pod-facing names.
  if [ -f "$K8S_DIR/tls.crt" ] && ! openssl x509 -in "$K8S_DIR/tls.crt" -noout -text | grep -q "IP Address:$RIG_HOST_IP"; then
    rm -f "$K8S_DIR"/tls.* "$K8S_DIR"/ca.* "$K8S_DIR"/sa.*
  fi
  [ -f "$K8S_DIR/tls.crt" ] && return 0
  mkdir -p "$K8S_DIR"
  # A CA plus a serving cert: rustls refuses a CA certificate used as the leaf.
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=bgpersist-rig-ca" \
    -keyout "$K8S_DIR/ca.key" -out "$K8S_DIR/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$K8S_DIR/tls.key" -out "$K8S_DIR/tls.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:%s,IP:%s,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' "$RIG_HOST_IP" "$APISERVER_SERVICE_IP" > "$K8S_DIR/ext.cnf"
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >> "$K8S_DIR/ext.cnf"
  openssl x509 -req -in "$K8S_DIR/tls.csr" -CA "$K8S_DIR/ca.crt" -CAkey "$K8S_DIR/ca.key" -CAcreateserial \
    -days 3650 -extfile "$K8S_DIR/ext.cnf" -out "$K8S_DIR/tls.crt" 2>/dev/null
  openssl genrsa -out "$K8S_DIR/sa.key" 2048 2>/dev/null
  openssl rsa -in "$K8S_DIR/sa.key" -pubout -out "$K8S_DIR/sa.pub" 2>/dev/null
  # token,user,uid,"groups"
  echo "$ADMIN_TOKEN,rig-admin,rig-admin,\"system:masters\"" > "$K8S_DIR/tokens.csv"
}

k8s_kubeconfig() {
  cat > "$KUBECONFIG_FILE" <<KC
apiVersion: v1
kind: Config
clusters:
- name: rig
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 < "$K8S_DIR/ca.crt")
users:
- name: rig-admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: rig
  context: {cluster: rig, user: rig-admin}
current-context: rig
KC
}

k8s_start() {
  k8s_certs
  if ! is_running etcd; then
    spawn etcd "$ETCD_BIN" --data-dir "$K8S_DIR/etcd" --name rig \
      --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "rig=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --quota-backend-bytes 4294967296
    wait_port "$ETCD_PORT" 30 || fail_part etcd "not listening on $ETCD_PORT"
  fi
  if ! is_running kube-apiserver; then
    host_ip_up
    # All interfaces, advertised on the pod-facing address: pods on the rig's
    # node reach the API through the `kubernetes` Service (kube-proxy).
    spawn kube-apiserver "$K8S_BIN" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
      --bind-address 0.0.0.0 --advertise-address "$RIG_HOST_IP" --secure-port "$APISERVER_PORT" \
      --tls-cert-file "$K8S_DIR/tls.crt" --tls-private-key-file "$K8S_DIR/tls.key" \
      --token-auth-file "$K8S_DIR/tokens.csv" --authorization-mode RBAC \
      --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$K8S_DIR/sa.pub" \
      --service-account-signing-key-file "$K8S_DIR/sa.key" --service-cluster-ip-range "$SERVICE_CIDR" \
      --enable-priority-and-fairness=false --storage-media-type application/json \
      --kubelet-preferred-address-types InternalIP
  fi
  k8s_kubeconfig
  local i
  for i in $(seq 1 150); do
    if curl -sf --cacert "$K8S_DIR/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1; then
      return 0
    fi
    is_running kube-apiserver || fail_part kube-apiserver "process exited"
    sleep 0.4
  done
  fail_part kube-apiserver "not ready after 60 s"
}

k8s_health() {
  curl -sf --cacert "$K8S_DIR/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

k8s_stop() { stop_pid kube-apiserver; stop_pid etcd; }

k8s_env() {
  echo "BGP_KUBECONFIG=$KUBECONFIG_FILE"
  echo "BGP_APISERVER_URL=https://127.0.0.1:$APISERVER_PORT"
  echo "BGP_K8S_VERSION=$K8S_VERSION"
}

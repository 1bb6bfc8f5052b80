# Part `node`: one real Kubernetes node beside the rig's API server, so what
# users run as pods is tested as pods. containerd (Debian) + runc, the CNI
# bridge, and kubelet, kube-controller-manager, kube-scheduler and kube-proxy
# built from Go modules like kube-apiserver. No registry is reachable: the
# sandbox (pause) image is built here from the kubernetes module's pause.c,
# and images are imported into containerd, never pulled.
#
# Needs the k8s part (its certificates, token and kubeconfig).
NODE_NAME=bgprig-node
NODE_DIR=$RIG_DIR/node
NODE_BIN_DIR=$CACHE_DIR/k8s-node-$K8S_VERSION
NODE_SOCK=$NODE_DIR/containerd.sock
NODE_KUBECONFIG=$NODE_DIR/kubeconfig
# Pods get addresses from this range on the bridge; its gateway is the host.
POD_CIDR=198.18.0.0/24
POD_GATEWAY=198.18.0.1
CNI_BRIDGE=bgpcni0
KUBELET_PORT=${BGP_KUBELET_PORT:-20250}
PAUSE_IMAGE=bgpersist.local/pause:3.10
PAUSE_ARCHIVE=$CACHE_DIR/pause-image-$K8S_VERSION.tar
NODE_COMPONENTS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
# Kernel settings kubelet and the CNI bridge change; put back on stop.
NODE_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward)

node_ctr() { ctr --address "$NODE_SOCK" --namespace k8s.io "$@"; }

build_pause_image() {
  [ -f "$PAUSE_ARCHIVE" ] && return 0
  local src
  src=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$src/build/pause/linux/pause.c" ] || die "pause.c not found in k8s.io/kubernetes@$K8S_VERSION"
  local w; w=$(mktemp -d "$CACHE_DIR/build-pause.XXXX")
  gcc -Os -static -Wall -DVERSION="$K8S_VERSION-bgprig" -o "$w/pause" "$src/build/pause/linux/pause.c" \
    || { rm -rf "$w"; die "pause build failed"; }
  strip "$w/pause"
  local c
  c=$(rig_buildah from scratch)
  rig_buildah copy --chmod 0755 "$c" "$w/pause" /pause >/dev/null
  rig_buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  rig_buildah commit -q "$c" "$PAUSE_IMAGE" >/dev/null
  rig_buildah rm "$c" >/dev/null
  rig_buildah push -q "$PAUSE_IMAGE" "docker-archive:$w/pause.tar:$PAUSE_IMAGE" \
    || { rm -rf "$w"; die "pause image export failed"; }
  mv "$w/pause.tar" "$PAUSE_ARCHIVE"
  rm -rf "$w"
}

node_install() {
  apt_need containerd runc containernetworking-plugins buildah iptables conntrack
  build_k8s_commands "$NODE_BIN_DIR" "${NODE_COMPONENTS[@]}"
  build_pause_image
}

node_write_config() {
  mkdir -p "$NODE_DIR"/{cni/net.d,cni/ipam,manifests,kubelet,containerd}
  # containerd 1.6 (CRI v2 config). cgroupfs: no systemd here.
  # restrict_oom_score_adj: this VM drops CAP_SYS_RESOURCE from root, and runc
  # fails every sandbox ("can't get final child's PID from pipe") without it.
  cat > "$NODE_DIR/containerd.toml" <<TOML
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$NODE_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
TOML
  # No masquerading: pods only talk to this machine (the rig's servers on
  # $RIG_HOST_IP, the API through kube-proxy) and to each other.
  cat > "$NODE_DIR/cni/net.d/10-bgprig.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "bgprig",
  "plugins": [
    {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # The node's components use the rig's admin token (system:masters): the
  # rig's API server authorizes by RBAC only, with no Node authorizer.
  cp "$KUBECONFIG_FILE" "$NODE_KUBECONFIG"
  # Anonymous, always-allow kubelet API on the node address only, so the API
  # server can serve logs and exec without client certificates.
  cat > "$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$NODE_SOCK
staticPodPath: $NODE_DIR/manifests
address: $RIG_HOST_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 20248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
serializeImagePulls: false
# No DNS in pods: everything they use is addressed by IP.
resolvConf: ""
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
protectKernelDefaults: false
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
maxPods: 110
YAML
}

node_save_sysctls() {
  [ -f "$NODE_DIR/sysctls.saved" ] && return 0
  local k
  for k in "${NODE_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done > "$NODE_DIR/sysctls.saved"
}

# The sandbox image, imported when missing: at start, and again by
# hack/image, since the kubelet may garbage-collect it under disk pressure
# (every sandbox then fails trying to pull it).
node_ensure_pause() {
  node_ctr images ls -q | grep -qx "$PAUSE_IMAGE" \
    || node_ctr images import "$PAUSE_ARCHIVE" >/dev/null
}

node_ready() {
  [ "$(kubectl --kubeconfig "$KUBECONFIG_FILE" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

node_start() {
  k8s_health || fail_part node "the k8s part (API server) is not up"
  host_ip_up
  node_write_config
  node_save_sysctls
  # Nothing is ever pulled: an image that is not imported fails at once on
  # a proxy that does not exist, before any registry name is resolved.
  spawn containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    containerd --config "$NODE_DIR/containerd.toml"
  node_isolate_pods
  local i p
  for i in $(seq 1 100); do node_ctr version >/dev/null 2>&1 && break; sleep 0.2; done
  node_ctr version >/dev/null 2>&1 || fail_part containerd "not answering on $NODE_SOCK"
  node_ensure_pause || fail_part containerd "pause image import failed"

  local common=(--kubeconfig "$NODE_KUBECONFIG" --authentication-kubeconfig "$NODE_KUBECONFIG"
    --authorization-kubeconfig "$NODE_KUBECONFIG" --leader-elect=false --bind-address 127.0.0.1)
  # root-ca-file: published as kube-root-ca.crt, which every projected
  # service account volume waits for.
  spawn kube-controller-manager "$NODE_BIN_DIR/kube-controller-manager" "${common[@]}" --secure-port 20257 \
    --root-ca-file "$K8S_DIR/ca.crt" --service-account-private-key-file "$K8S_DIR/sa.key" \
    --allocate-node-cidrs=false --controllers '*'
  spawn kube-scheduler "$NODE_BIN_DIR/kube-scheduler" "${common[@]}" --secure-port 20259
  spawn kube-proxy "$NODE_BIN_DIR/kube-proxy" --kubeconfig "$NODE_KUBECONFIG" \
    --hostname-override "$NODE_NAME" --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
    --conntrack-max-per-core 0 --metrics-bind-address 127.0.0.1:20249 --healthz-bind-address 127.0.0.1:20256
  spawn kubelet "$NODE_BIN_DIR/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_KUBECONFIG" \
    --hostname-override "$NODE_NAME" --node-ip "$RIG_HOST_IP" --root-dir "$NODE_DIR/kubelet" \
    --cert-dir "$NODE_DIR/kubelet/pki"
  for i in $(seq 1 300); do
    node_ready && return 0
    for p in kubelet kube-proxy kube-scheduler kube-controller-manager containerd; do
      is_running "$p" || fail_part "$p" "process exited"
    done
    sleep 0.2
  done
  fail_part kubelet "node $NODE_NAME not Ready after 60 s"
}

node_health() {
  local p
  for p in containerd kubelet kube-proxy kube-scheduler kube-controller-manager; do is_running "$p" || return 1; done
  node_ready
}

# Stops the pods' containers (the shims outlive containerd), then the node's
# processes by PID, then undoes what they left on the host: mounts under the
# node dir, pod network namespaces, the bridge, kube-proxy's chains, sysctls.
node_stop() {
  stop_pid kubelet
  if is_running containerd; then
    local t
    for t in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
    for t in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for t in $(node_ctr containers ls -q 2>/dev/null); do node_ctr containers delete "$t" >/dev/null 2>&1 || true; done
  fi
  stop_pid kube-proxy; stop_pid kube-scheduler; stop_pid kube-controller-manager; stop_pid containerd
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $NODE_SOCK" 2>/dev/null || true
  local m
  if [ -d "$NODE_DIR" ]; then
    for m in $(findmnt -rn -o TARGET | grep "^$NODE_DIR/" | sort -r || true); do umount -l "$m" 2>/dev/null || true; done
  fi
  for m in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}' || true); do ip netns delete "$m" 2>/dev/null || true; done
  ip link delete "$CNI_BRIDGE" 2>/dev/null || true
  rm -rf "$NODE_DIR/cni/ipam"
  if [ -x "$NODE_BIN_DIR/kube-proxy" ]; then "$NODE_BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  node_iptables_cleanup
  node_unisolate_pods
  if [ -f "$NODE_DIR/sysctls.saved" ]; then
    while IFS= read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done < "$NODE_DIR/sysctls.saved"
    rm -f "$NODE_DIR/sysctls.saved"
  fi
  # The Node object goes too: a later start registers it afresh.
  if k8s_health 2>/dev/null; then
    kubectl --kubeconfig "$KUBECONFIG_FILE" delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
}

# Pods talk to this machine only: whatever they send to an address outside
# 198.18.0.0/15 (the pod network, the service range, the rig's address) is
# refused at the bridge instead of being routed off the machine.
NODE_FORWARD_CHAIN=BGPRIG-PODS-OUT
node_isolate_pods() {
  iptables -N "$NODE_FORWARD_CHAIN" 2>/dev/null || iptables -F "$NODE_FORWARD_CHAIN"
  iptables -A "$NODE_FORWARD_CHAIN" -s "$POD_CIDR" ! -d 198.18.0.0/15 -j REJECT
  iptables -C FORWARD -j "$NODE_FORWARD_CHAIN" 2>/dev/null || iptables -I FORWARD 1 -j "$NODE_FORWARD_CHAIN"
}

node_unisolate_pods() {
  while iptables -D FORWARD -j "$NODE_FORWARD_CHAIN" 2>/dev/null; do :; done
  iptables -F "$NODE_FORWARD_CHAIN" 2>/dev/null || true
  iptables -X "$NODE_FORWARD_CHAIN" 2>/dev/null || true
}

# Removes the chains kubelet, kube-proxy and the CNI plugins add (KUBE-*,
# CNI-*) and the rules that jump to them, in every table.
node_iptables_cleanup() {
  command -v iptables >/dev/null || return 0
  local table rule chain
  for table in filter nat mangle; do
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE|CNI)-' | grep -vE '^-A (KUBE|CNI)-' \
      | sed 's/^-A/-D/' | while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done || true
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}' || true); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}' || true); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

node_env() {
  echo "BGP_NODE_NAME=$NODE_NAME"
  echo "BGP_NODE_CONTAINERD_SOCK=$NODE_SOCK"
  echo "BGP_RIG_HOST_IP=$RIG_HOST_IP"
}

# Part `netpol`: a NetworkPolicy enforcer on the rig's node, so the writers'
# policies are tested by the traffic they block. kube-router's network policy
# controller alone (no routing, no service proxy), built from its Go module
# and run as a host process with the node's kubeconfig. It renders policies
# as iptables chains and ipsets in the host's namespace, which the node's
# pods are routed through (the CNI bridge, br_netfilter on).
#
# Why kube-router v2.1.0: sigs.k8s.io/kube-network-policies needs the
# nftables `queue` expression (CONFIG_NFT_QUEUE), which this kernel lacks
# (`nft add rule ... queue num 100` fails with "No such file or directory"),
# and v2.1.0 is the one version of kube-router the Go module proxy serves
# here. Its reported flaws concern a production cluster; here it only reads
# the rig's API server and writes this host's filter table.
#
# Needs the node part (the Node object, its address, the pods' bridge).
NETPOL_VERSION=${BGP_NETPOL_VERSION:-v2.1.0}
NETPOL_BIN=$CACHE_DIR/bin/kube-router-$NETPOL_VERSION
# kube-router ACCEPTs every pod packet that policies allow (all of a pod's
# traffic when no policy selects it) in FORWARD's first rule, before
# kube-proxy's REJECT of a service without endpoints and before the node's
# own isolation of the pods (BGPRIG-PODS-OUT): a packet to such a service
# address would then leave by the default route. This table, in a hook that
# runs before every iptables chain, refuses whatever a pod sends to be
# forwarded anywhere but another pod; pods reach the rig's servers, and the
# API server behind its service address, as local traffic (INPUT), not here.
NETPOL_GUARD_TABLE=bgprig_netpol_guard

netpol_install() {
  apt_need ipset iptables nftables
  [ -x "$NETPOL_BIN" ] && return 0
  command -v go >/dev/null || die "go is needed to build kube-router"
  log "building kube-router $NETPOL_VERSION from its Go module (go install; cold: about 2-3 minutes)"
  local w; w=$(mktemp -d "$CACHE_DIR/build-kube-router.XXXX")
  local ld="-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$NETPOL_VERSION"
  if ! GOBIN=$w CGO_ENABLED=0 go install -trimpath -ldflags "$ld" \
      "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$NETPOL_VERSION" >&2; then
    rm -rf "$w"; die "kube-router build failed"
  fi
  mkdir -p "$(dirname "$NETPOL_BIN")"
  mv "$w/kube-router" "$NETPOL_BIN"
  rm -rf "$w"
}

netpol_guard_up() {
  nft -f - <<NFT
table ip $NETPOL_GUARD_TABLE
delete table ip $NETPOL_GUARD_TABLE
table ip $NETPOL_GUARD_TABLE {
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    ip saddr $POD_CIDR ip daddr != $POD_CIDR reject
  }
}
NFT
}

# Synced at least once: its jump from FORWARD to its own chain exists.
netpol_synced() {
  iptables -S FORWARD 2>/dev/null | grep -q -- '-j KUBE-ROUTER-FORWARD'
}

netpol_start() {
  node_health || fail_part netpol "the node part is not up"
  netpol_guard_up || fail_part netpol "cannot add the nftables guard table $NETPOL_GUARD_TABLE"
  # No health or metrics listener: kube-router binds those on every
  # address. The sync period bounds how long a hand-made change survives.
  spawn netpol "$NETPOL_BIN" --run-firewall=true --run-router=false --run-service-proxy=false \
    --kubeconfig "$NODE_KUBECONFIG" --hostname-override "$NODE_NAME" \
    --service-cluster-ip-range "$SERVICE_CIDR" --enable-ipv4=true --enable-ipv6=false \
    --health-port 0 --metrics-port 0 --iptables-sync-period 30s --v "${BGP_NETPOL_LOG_LEVEL:-0}"
  local i
  for i in $(seq 1 150); do
    netpol_synced && return 0
    is_running netpol || fail_part netpol "process exited"
    sleep 0.2
  done
  fail_part netpol "no KUBE-ROUTER-FORWARD jump in FORWARD after 30 s"
}

netpol_health() {
  is_running netpol && netpol_synced
}

# Stops the process by PID, then removes what it wrote: the jumps from the
# built-in chains to its chains, its chains (KUBE-ROUTER-*, KUBE-POD-FW-*,
# KUBE-NWPLCY-*), its ipsets (KUBE-SRC-*, KUBE-DST-*) and the guard table.
# kube-proxy's chains (KUBE-SERVICES, KUBE-FORWARD, ...) are left alone.
netpol_stop() {
  stop_pid netpol
  local re='KUBE-(ROUTER-[A-Z]+|POD-FW-[A-Z0-9]+|NWPLCY-[A-Z0-9]+)'
  local rule chain set
  iptables -S 2>/dev/null | grep -E "^-A (INPUT|FORWARD|OUTPUT) .*-j $re( |$)" | sed 's/^-A/-D/' \
    | while read -r rule; do eval "iptables $rule" 2>/dev/null || true; done || true
  for chain in $(iptables -S 2>/dev/null | awk -v re="^$re\$" '$1 == "-N" && $2 ~ re {print $2}' || true); do
    iptables -F "$chain" 2>/dev/null || true
  done
  for chain in $(iptables -S 2>/dev/null | awk -v re="^$re\$" '$1 == "-N" && $2 ~ re {print $2}' || true); do
    iptables -X "$chain" 2>/dev/null || true
  done
  if command -v ipset >/dev/null; then
    for set in $(ipset list -n 2>/dev/null | grep -E '^KUBE-(SRC|DST)-' || true); do
      ipset destroy "$set" 2>/dev/null || true
    done
  fi
  nft delete table ip "$NETPOL_GUARD_TABLE" 2>/dev/null || true
}

netpol_env() {
  echo "BGP_NETPOL_ENFORCER=kube-router-$NETPOL_VERSION"
}

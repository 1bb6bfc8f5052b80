//! The optional NetworkPolicy of a resource's writers (bgpersist extension),
//! `common_persistence_specs.network_policy`. Off unless `enabled`; what it
//! allows is derived from the spec (`operator/render/network_policy.rs`),
//! these fields only widen or narrow it. The values are Kubernetes' own
//! types, so their fields are camelCase (`namespaceSelector`, `ipBlock`).

use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyPeer};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct NetworkPolicySettings {
    /// Render one NetworkPolicy per writer: ingress only on the metrics port,
    /// egress only to DNS, HTTPS (cloud APIs), the Kafka bootstrap ports and
    /// the ports of the writer's own store. Off (and any policy the operator
    /// rendered before deleted) when false.
    pub enabled: bool,
    /// Who may reach the metrics port (9090), e.g. the Prometheus namespace
    /// by `namespaceSelector`. Unset: any source, on that port only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub metrics_from: Option<Vec<NetworkPolicyPeer>>,
    /// Where DNS queries may go (port 53, UDP and TCP), e.g. kube-system's
    /// DNS pods. Unset: any destination, on port 53 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub dns_to: Option<Vec<NetworkPolicyPeer>>,
    /// Egress rules added to the derived ones: a proxy, an OTLP collector, a
    /// store reached through a name the spec does not show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub extra_egress: Option<Vec<NetworkPolicyEgressRule>>,
}

/// Spec path of the settings, for admission rules and messages.
pub const PATH: &str = "common_persistence_specs.network_policy";

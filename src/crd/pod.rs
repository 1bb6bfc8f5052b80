//! Settings for writer pods (bgpersist extension): where they run, what they
//! pull with, what they carry. Resource-wide in
//! `common_persistence_specs.writer_pod`, per writer in `writers[].pod`; the
//! writer's wins, key by key for maps, whole for everything else.

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, Toleration, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Volume names and mount paths the writer's own mounts use.
pub const RESERVED_VOLUMES: [&str; 3] = ["tmp", "kafka-sasl", "stores"];

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct WriterPodSettings {
    /// Node labels the writer pods must match (`nodeSelector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the writer pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod (anti-)affinity of the writer pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the writer pods spread over zones and nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the writer pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
    /// Secrets, in the writers' namespace, to pull the writer image with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Extra labels on the writer pods (service mesh, cost allocation).
    /// `bgpersist.dev/` and `app.kubernetes.io/` keys are the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, !k.startsWith('bgpersist.dev/') && !k.startsWith('app.kubernetes.io/'))")
        .message("bgpersist.dev/ and app.kubernetes.io/ labels are set by the operator"))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations on the writer pods (Datadog, Karpenter, Istio).
    /// `bgpersist.dev/` keys are the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, !k.startsWith('bgpersist.dev/'))")
        .message("bgpersist.dev/ annotations are set by the operator"))]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Extra environment of the writer container (AWS_REGION, proxies,
    /// OTEL_*). `BGP_*` variables are rendered from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.all(e, !e.name.startsWith('BGP_') && e.name != 'RUST_LOG')")
        .message("BGP_* variables are rendered from the spec, and RUST_LOG from log_level"))]
    pub env: Option<Vec<EnvVar>>,
    /// The writer's log filter (`RUST_LOG`): a level (`info`, `debug`) or
    /// directives (`info,bgpersist=debug`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(r"^[A-Za-z0-9_:=,.\-]+$"))]
    pub log_level: Option<String>,
    /// Extra volumes of the writer pods (a CA bundle from a ConfigMap, a
    /// CSI secret store). `tmp`, `kafka-sasl` and `stores` are the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.all(v, !(v.name in ['tmp', 'kafka-sasl', 'stores']))")
        .message("volume names tmp, kafka-sasl and stores are the operator's"))]
    pub volumes: Option<Vec<Volume>>,
    /// Where the extra volumes are mounted in the writer container; not
    /// under /etc/bgpersist or at /tmp, which the operator mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self.all(m, !m.mountPath.startsWith('/etc/bgpersist') && m.mountPath != '/tmp')")
        .message("mount paths under /etc/bgpersist and /tmp are the operator's"))]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

impl WriterPodSettings {
    /// `writer`'s settings over `common`'s: maps merged key by key (the
    /// writer's value wins), any other field the writer sets replaces the
    /// resource's.
    pub fn merged(common: Option<&Self>, writer: Option<&Self>) -> Self {
        let (c, w) = (
            common.cloned().unwrap_or_default(),
            writer.cloned().unwrap_or_default(),
        );
        let map =
            |a: Option<BTreeMap<String, String>>, b: Option<BTreeMap<String, String>>| match (a, b)
            {
                (Some(mut a), Some(b)) => {
                    a.extend(b);
                    Some(a)
                }
                (a, b) => b.or(a),
            };
        WriterPodSettings {
            node_selector: map(c.node_selector, w.node_selector),
            tolerations: w.tolerations.or(c.tolerations),
            affinity: w.affinity.or(c.affinity),
            topology_spread_constraints: w
                .topology_spread_constraints
                .or(c.topology_spread_constraints),
            priority_class_name: w.priority_class_name.or(c.priority_class_name),
            image_pull_secrets: w.image_pull_secrets.or(c.image_pull_secrets),
            labels: map(c.labels, w.labels),
            annotations: map(c.annotations, w.annotations),
            env: w.env.or(c.env),
            log_level: w.log_level.or(c.log_level),
            volumes: w.volumes.or(c.volumes),
            volume_mounts: w.volume_mounts.or(c.volume_mounts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writers_settings_win_key_by_key_for_maps_and_whole_otherwise() {
        let common = WriterPodSettings {
            node_selector: Some(BTreeMap::from([
                ("pool".into(), "writers".into()),
                ("zone".into(), "a".into()),
            ])),
            priority_class_name: Some("bulk".into()),
            log_level: Some("info".into()),
            ..Default::default()
        };
        let writer = WriterPodSettings {
            node_selector: Some(BTreeMap::from([("zone".into(), "b".into())])),
            log_level: Some("debug".into()),
            ..Default::default()
        };
        let m = WriterPodSettings::merged(Some(&common), Some(&writer));
        assert_eq!(
            m.node_selector,
            Some(BTreeMap::from([
                ("pool".into(), "writers".into()),
                ("zone".into(), "b".into())
            ]))
        );
        assert_eq!(m.priority_class_name.as_deref(), Some("bulk"));
        assert_eq!(m.log_level.as_deref(), Some("debug"));
        assert_eq!(
            WriterPodSettings::merged(None, None),
            WriterPodSettings::default()
        );
    }
}

//! NetworkPolicy render tests: spec (and synced store URI) in, policy out.

use super::fixtures::{resolved, seed, seed_with};
use super::network_policy::{Endpoint, WriterPolicy, uri_endpoints};
use super::*;
use crate::contract as c;
use crate::crd::StoreKind;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn with_secrets(bp: &BackgroundPersistence, inputs: &SecretInputs) -> Rendered {
    render_with_secrets(bp, &resolved(bp), inputs).unwrap_or_else(|e| panic!("render: {e}"))
}

fn policy(w: &RenderedWriter) -> Value {
    match &w.network_policy {
        WriterPolicy::Apply(p) => serde_json::to_value(p.as_ref()).unwrap_or_default(),
        other => panic!("{}: expected a policy, got {other:?}", w.name),
    }
}

/// One ONLINE_WRITER on Kafka with the policy on and its store URI in a cloud secret.
fn online(extra: Value) -> BackgroundPersistence {
    let mut patch = json!({
        "kafka_bootstrap_servers": "b-1.kafka.example:9096, 10.0.0.7:9094,b-2.kafka.example:9096",
        "store_uri_secrets": {"online_store": "online-uri"},
        "common_persistence_specs": {"network_policy": {"enabled": true}},
        "writers": [{"name": "online", "bus_subscriber_type": "ONLINE_WRITER"}]
    });
    if let (Some(p), Some(e)) = (patch.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    seed_with(patch)
}

fn store_uri(uri: &str) -> SecretInputs {
    let entry = SecretEntry {
        cloud_secret: "online-uri".into(),
        version: "1".into(),
        data: BTreeMap::from([(
            c::ONLINE_STORE_URI_FILE.to_string(),
            SecretBytes::new(uri.as_bytes().to_vec()),
        )]),
    };
    SecretInputs {
        entries: BTreeMap::from([(Slot::StoreUri(StoreKind::OnlineStore), entry)]),
    }
}

fn tcp(p: u16) -> Value {
    json!({"port": p, "protocol": "TCP"})
}

#[test]
fn off_unless_enabled() {
    let r = with_secrets(&seed(), &SecretInputs::default());
    assert!(
        r.writers
            .iter()
            .all(|w| w.network_policy == WriterPolicy::Off)
    );
    let off =
        seed_with(json!({"common_persistence_specs": {"network_policy": {"enabled": false}}}));
    let r = with_secrets(&off, &SecretInputs::default());
    assert!(
        r.writers
            .iter()
            .all(|w| w.network_policy == WriterPolicy::Off)
    );
}

#[test]
fn selects_the_writers_pods_and_opens_only_the_metrics_port() {
    let bp = online(json!({}));
    let r = with_secrets(&bp, &store_uri("redis://:pw@redis.internal:6380/0"));
    let w = &r.writers[0];
    let p = policy(w);
    let np: NetworkPolicy = serde_json::from_value(p.clone()).unwrap_or_default();
    assert_eq!(
        np.metadata.name.as_deref(),
        Some("background-persistence-online")
    );
    assert_eq!(
        np.metadata.namespace.as_deref(),
        Some("background-persistence")
    );
    assert_eq!(
        np.metadata.owner_references,
        w.deployment.metadata.owner_references
    );
    // Exactly the Deployment's selector, so it selects exactly its pods.
    let selector = w.deployment.spec.as_ref().map(|s| s.selector.clone());
    assert_eq!(
        np.spec.as_ref().and_then(|s| s.pod_selector.clone()),
        selector
    );
    assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        p["spec"]["ingress"],
        json!([{"ports": [tcp(c::WRITER_HTTP_PORT as u16)]}]),
        "any source, metrics port only"
    );
}

#[test]
fn egress_is_dns_https_bootstrap_and_store_ports_with_ip_literals_narrowed() {
    let bp = online(json!({}));
    let r = with_secrets(
        &bp,
        &store_uri("redis://:pw@redis.internal:6380/0,redis://10.0.0.9:7000"),
    );
    let p = policy(&r.writers[0]);
    assert_eq!(
        p["spec"]["egress"],
        json!([
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"ports": [tcp(443)]},
            // Names: by port only (Kafka 9096, Redis 6380).
            {"ports": [tcp(6380), tcp(9096)]},
            // IP literals: that address only.
            {"to": [{"ipBlock": {"cidr": "10.0.0.7/32"}}], "ports": [tcp(9094)]},
            {"to": [{"ipBlock": {"cidr": "10.0.0.9/32"}}], "ports": [tcp(7000)]},
        ])
    );
}

#[test]
fn an_unread_store_uri_keeps_the_live_policy() {
    let r = with_secrets(&online(json!({})), &SecretInputs::default());
    assert_eq!(r.writers[0].network_policy, WriterPolicy::KeepLive);
}

#[test]
fn metrics_from_dns_to_and_extra_egress_are_the_users() {
    let prometheus = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}});
    let dns = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                     "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}});
    let proxy = json!({"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}], "ports": [{"port": 3128, "protocol": "TCP"}]});
    let mut bp = online(json!({}));
    bp.spec.common_persistence_specs.network_policy = serde_json::from_value(json!({
        "enabled": true, "metrics_from": [prometheus], "dns_to": [dns], "extra_egress": [proxy]
    }))
    .ok();
    let r = with_secrets(&bp, &store_uri("redis://redis.internal"));
    let p = policy(&r.writers[0]);
    assert_eq!(p["spec"]["ingress"][0]["from"], json!([prometheus]));
    assert_eq!(p["spec"]["egress"][0]["to"], json!([dns]));
    let egress = p["spec"]["egress"].as_array().cloned().unwrap_or_default();
    assert_eq!(egress.last(), Some(&proxy), "extra rules come last");
    assert!(
        egress.contains(&json!({"ports": [tcp(6379), tcp(9096)]})),
        "{egress:?}"
    );
}

#[test]
fn pubsub_writers_need_only_dns_and_https() {
    let bp = seed_with(json!({
        "common_persistence_specs": {"bus_backend": "PUBSUB", "network_policy": {"enabled": true}},
        "writers": [{"name": "m", "bus_subscriber_type": "GO_RESULT_BUS_METRICS_WRITER"}]
    }));
    let p = policy(&with_secrets(&bp, &SecretInputs::default()).writers[0]);
    assert_eq!(p["spec"]["egress"].as_array().map(Vec::len), Some(2));
}

#[test]
fn the_mirror_reaches_its_api_server_and_the_usage_writer_its_store() {
    let bp = seed_with(json!({
        "api_server_host": "http://10.2.0.5:8080/api",
        "common_persistence_specs": {"usage_bus_subscription_id": "u", "bus_backend": "PUBSUB",
                                     "network_policy": {"enabled": true}},
        "writers": [{"name": "mirror", "bus_subscriber_type": "QUERY_MIRROR_CONSUMER"},
                    {"name": "usage", "bus_subscriber_type": "USAGE_BUS_WRITER",
                     "usage_store_uri": "postgresql://u:p@pg.internal/usage"}]
    }));
    let r = with_secrets(&bp, &SecretInputs::default());
    let (mirror, usage) = (policy(&r.writers[0]), policy(&r.writers[1]));
    assert_eq!(
        mirror["spec"]["egress"][2],
        json!({"to": [{"ipBlock": {"cidr": "10.2.0.5/32"}}], "ports": [tcp(8080)]})
    );
    assert_eq!(usage["spec"]["egress"][2], json!({"ports": [tcp(5432)]}));
}

#[test]
fn uri_hosts_and_default_ports() {
    let ep = |h: &str, p: u16| Endpoint {
        host: h.into(),
        port: p,
    };
    assert_eq!(
        uri_endpoints("postgres://u:p%40ss@db.example/x?sslmode=require"),
        [ep("db.example", 5432)]
    );
    assert_eq!(
        uri_endpoints("rediss://[fd00::5]:6390,redis-2:6391"),
        [ep("fd00::5", 6390), ep("redis-2", 6391)]
    );
    assert_eq!(
        uri_endpoints("qdrants://q.example"),
        [ep("q.example", 6333)]
    );
    assert_eq!(uri_endpoints("https://q.example/p"), [ep("q.example", 443)]);
    // Reached through a cloud SDK over HTTPS, which the policy always allows.
    assert!(uri_endpoints("bigquery://project/dataset").is_empty());
    assert!(uri_endpoints("dynamodb://features?region=eu-west-1").is_empty());
    assert!(uri_endpoints("not a uri").is_empty());
}

//! The optional NetworkPolicy of a writer (`common_persistence_specs.network_policy`).
//!
//! One per writer, named like its Deployment and selecting its pods by the
//! Deployment's own selector: writers of one resource reach different stores
//! (the online writer needs Redis, the offline writer Postgres), so one
//! policy per resource would open every store to every writer.
//!
//! NetworkPolicy matches addresses, never names. Bus and store hosts are DNS
//! names as a rule, so egress to them is narrowed by port only; a host given
//! as an IP literal is narrowed to that address (`ipBlock` /32 or /128).

use super::labels;
use super::secret::{SecretInputs, Slot};
use crate::contract as c;
use crate::crd::network_policy::NetworkPolicySettings;
use crate::crd::{BackgroundPersistence, BusBackend, KafkaOAuthMethod, StoreKind};
use crate::operator::model::ResolvedWriter;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// DNS, over UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// HTTPS: the cloud APIs (secret managers, STS, Pub/Sub, BigQuery, DynamoDB,
/// Snowflake, object storage, token endpoints) to any address.
pub const HTTPS_PORT: u16 = 443;
/// librdkafka's port when a bootstrap server names none.
const KAFKA_DEFAULT_PORT: u16 = 9092;

/// What the reconcile does with a writer's NetworkPolicy.
#[derive(Clone, Debug, PartialEq)]
pub enum WriterPolicy {
    /// Not enabled: a policy the operator rendered before is pruned.
    Off,
    /// Apply this.
    Apply(Box<NetworkPolicy>),
    /// The store URI's secret was not read this time (a failed cloud read
    /// keeps the last good Secret): keep the live policy, which allows the
    /// ports of that value, rather than cut the writer off its store.
    KeepLive,
}

/// A host and port the writer connects to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    rw: &ResolvedWriter,
    owner: &OwnerReference,
    secrets: &SecretInputs,
) -> WriterPolicy {
    let Some(settings) = bp
        .spec
        .common_persistence_specs
        .network_policy
        .as_ref()
        .filter(|s| s.enabled)
    else {
        return WriterPolicy::Off;
    };
    let Some(endpoints) = endpoints(bp, rw, secrets) else {
        return WriterPolicy::KeepLive;
    };
    let w = rw.spec;
    WriterPolicy::Apply(Box::new(NetworkPolicy {
        metadata: labels::writer_object_meta(bp, resource, rw, owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::selector(resource, &w.name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: peers(settings.metrics_from.as_ref()),
                ports: Some(vec![tcp(c::WRITER_HTTP_PORT)]),
            }]),
            egress: Some(egress(settings, &endpoints)),
        }),
    }))
}

fn egress(
    settings: &NetworkPolicySettings,
    endpoints: &[Endpoint],
) -> Vec<NetworkPolicyEgressRule> {
    let mut rules = vec![
        NetworkPolicyEgressRule {
            to: peers(settings.dns_to.as_ref()),
            ports: Some(vec![
                port("UDP", i32::from(DNS_PORT)),
                port("TCP", i32::from(DNS_PORT)),
            ]),
        },
        NetworkPolicyEgressRule {
            to: None,
            ports: Some(vec![tcp(i32::from(HTTPS_PORT))]),
        },
    ];
    let mut by_name = BTreeSet::new();
    let mut by_address: BTreeMap<IpAddr, BTreeSet<u16>> = BTreeMap::new();
    for e in endpoints.iter().filter(|e| e.port != HTTPS_PORT) {
        match e.host.parse::<IpAddr>() {
            Ok(ip) => {
                by_address.entry(ip).or_default().insert(e.port);
            }
            Err(_) => {
                by_name.insert(e.port);
            }
        }
    }
    let ports = |set: &BTreeSet<u16>| Some(set.iter().map(|p| tcp(i32::from(*p))).collect());
    if !by_name.is_empty() {
        rules.push(NetworkPolicyEgressRule {
            to: None,
            ports: ports(&by_name),
        });
    }
    for (ip, set) in &by_address {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        rules.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: format!("{ip}/{prefix}"),
                    except: None,
                }),
                ..Default::default()
            }]),
            ports: ports(set),
        });
    }
    rules.extend(settings.extra_egress.iter().flatten().cloned());
    rules
}

/// Where the writer connects, from the spec and the synced store URI; `None`
/// when its store URI is named but its value was not read this time.
pub fn endpoints(
    bp: &BackgroundPersistence,
    rw: &ResolvedWriter,
    secrets: &SecretInputs,
) -> Option<Vec<Endpoint>> {
    let spec = &bp.spec;
    let mut out = Vec::new();
    if spec.common_persistence_specs.bus_backend == BusBackend::Kafka {
        for server in spec
            .kafka_bootstrap_servers
            .iter()
            .flat_map(|s| s.split(','))
        {
            // librdkafka also takes `PLAINTEXT://host:port`.
            let server = server.rsplit("://").next().unwrap_or_default();
            out.extend(host_port(server, KAFKA_DEFAULT_PORT));
        }
        let oidc = spec
            .kafka_oauthbearer
            .as_ref()
            .filter(|o| o.method == KafkaOAuthMethod::Oidc);
        if let Some(url) = oidc.and_then(|o| o.token_endpoint_url.as_deref()) {
            out.extend(uri_endpoints(url));
        }
    }
    if let Some(file) = rw.store_file {
        let value = secrets
            .entries
            .get(&Slot::StoreUri(rw.store))
            .and_then(|e| e.data.get(file))?;
        out.extend(uri_endpoints(&String::from_utf8_lossy(value.expose())));
    }
    match rw.store {
        StoreKind::UsageStore => {
            out.extend(
                rw.spec
                    .usage_store_uri
                    .iter()
                    .flat_map(|u| uri_endpoints(u)),
            );
        }
        StoreKind::QueryMirror => {
            if let Some(host) = spec.api_server_host.as_deref().map(str::trim) {
                // As the mirror reads it: a URL, or a bare host meaning HTTPS.
                let url = if host.contains("://") {
                    host.to_string()
                } else {
                    format!("https://{host}")
                };
                out.extend(uri_endpoints(&url));
            }
        }
        _ => {}
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// A store or service URI's hosts and ports, by its scheme's default port.
/// Schemes reached over HTTPS by a cloud SDK (`dynamodb`, `bigquery`,
/// `snowflake`) or unknown give none: the HTTPS rule covers the former.
pub fn uri_endpoints(uri: &str) -> Vec<Endpoint> {
    let uri = uri.trim();
    let Some((scheme, _)) = uri.split_once("://") else {
        return Vec::new();
    };
    let default_for = |scheme: &str| match scheme.to_ascii_lowercase().as_str() {
        "redis" | "rediss" => Some(6379),
        "postgres" | "postgresql" => Some(5432),
        "qdrant" | "qdrants" => Some(6333),
        "http" => Some(80),
        "https" => Some(HTTPS_PORT),
        _ => None,
    };
    // Cluster seeds and multi-host URIs list hosts separated by commas, each
    // either a full URI or a bare `host:port`.
    let mut out = Vec::new();
    for piece in uri.split(',') {
        let (scheme, rest) = piece.split_once("://").unwrap_or((scheme, piece));
        let Some(default) = default_for(scheme) else {
            continue;
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let hostport = authority.rsplit('@').next().unwrap_or_default();
        out.extend(host_port(hostport, default));
    }
    out
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_port(s: &str, default: u16) -> Option<Endpoint> {
    let s = s.trim();
    let (host, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            (host, rest.strip_prefix(':'))
        }
        None => match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            // A bare IPv6 address has colons and no port.
            _ => (s, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    (!host.is_empty()).then(|| Endpoint {
        host: host.to_string(),
        port,
    })
}

fn peers(list: Option<&Vec<NetworkPolicyPeer>>) -> Option<Vec<NetworkPolicyPeer>> {
    list.filter(|l| !l.is_empty()).cloned()
}

fn tcp(p: i32) -> NetworkPolicyPort {
    port("TCP", p)
}

fn port(protocol: &str, p: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some(protocol.into()),
        end_port: None,
    }
}

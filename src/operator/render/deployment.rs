use super::labels;
use super::names::{kafka_sasl_secret_name, stores_secret_name};
use super::secret::{SecretInputs, Slot};
use crate::contract as c;
use crate::crd::{BackgroundPersistence, BusBackend, ResourceAmounts, WriterSpec};
use crate::operator::model::{ENV_OTLP_ENDPOINT, ResolvedWriter};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, KeyToPath,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Annotation on the pod template whose change rolls the writer.
pub const CONFIG_HASH_ANNOTATION: &str = "bgpersist.dev/config-hash";
/// UID of the non-root user the writer image runs as.
pub const WRITER_UID: i64 = 65532;
/// Environment every writer container gets unless the resource's `pod.env`
/// names the same variable. glibc keeps up to 8 malloc arenas per core and
/// freed memory stays in its arena; a writer's heap is a third of its RSS
/// without this (docs/benchmarks.md, bulk insert).
pub const DEFAULT_WRITER_ENV: &[(&str, &str)] = &[("MALLOC_ARENA_MAX", "1")];

/// A writer's Deployment and what the status reports about it.
pub struct WriterDeployment {
    pub deployment: Deployment,
    pub image: String,
    /// The pod template's `bgpersist.dev/config-hash`.
    pub config_hash: String,
    pub replicas: i32,
}

pub fn render(
    bp: &BackgroundPersistence,
    resource: &str,
    rw: &ResolvedWriter,
    owner: &OwnerReference,
    secrets: &SecretInputs,
) -> WriterDeployment {
    let w = rw.spec;
    let pod = crate::crd::pod::WriterPodSettings::merged(
        bp.spec.common_persistence_specs.writer_pod.as_ref(),
        w.pod.as_ref(),
    );
    let image = rw.image.clone();
    let replicas = rw.replicas;
    let (sasl, store_file) = (rw.kafka_sasl, rw.store_file);

    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("256Mi".into())),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if sasl {
        // Credentials as read-only files, never environment variables.
        mounts.push(VolumeMount {
            name: "kafka-sasl".into(),
            mount_path: c::KAFKA_SASL_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "kafka-sasl".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(kafka_sasl_secret_name(resource)),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(file) = store_file {
        // Only this writer's store URI, as a read-only file.
        mounts.push(VolumeMount {
            name: "stores".into(),
            mount_path: c::STORES_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "stores".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(stores_secret_name(resource)),
                items: Some(vec![KeyToPath {
                    key: file.into(),
                    path: file.into(),
                    ..Default::default()
                }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    mounts.extend(pod.volume_mounts.clone().unwrap_or_default());
    volumes.extend(pod.volumes.clone().unwrap_or_default());
    let mut env = env(bp, resource, rw);
    if let Some(level) = &pod.log_level {
        env.push(EnvVar {
            name: "RUST_LOG".into(),
            value: Some(level.clone()),
            ..Default::default()
        });
    }
    let pod_env = pod.env.clone().unwrap_or_default();
    // Defaults the resource's own env replaces: the operator's trace
    // endpoint, then DEFAULT_WRITER_ENV.
    let otlp = rw.otlp_endpoint.as_deref().map(|e| (ENV_OTLP_ENDPOINT, e));
    for (name, value) in otlp.into_iter().chain(DEFAULT_WRITER_ENV.iter().copied()) {
        if !pod_env.iter().any(|e| e.name == name) {
            env.push(EnvVar {
                name: name.into(),
                value: Some(value.into()),
                ..Default::default()
            });
        }
    }
    env.extend(pod_env);
    // The versions (never the values) of the secrets this writer mounts: a
    // rotation rolls exactly the writers that read the rotated secret.
    let versions: Vec<(Slot, &str)> = rw
        .slots()
        .into_iter()
        .filter_map(|slot| Some((slot, secrets.version(slot)?)))
        .collect();

    let container = Container {
        name: "writer".into(),
        image: Some(image.clone()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: c::WRITER_HTTP_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: resources(w.request.as_ref(), w.limit.as_ref()),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        // A writer that exits at start says why in its last stderr line: the
        // pod status keeps it, and the operator puts it on the resource.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let pod_spec = PodSpec {
        service_account_name: Some(
            bp.spec
                .common_persistence_specs
                .service_account_name
                .clone(),
        ),
        automount_service_account_token: Some(false),
        // Long enough for a writer to drain, write and commit on SIGTERM.
        termination_grace_period_seconds: Some(60),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WRITER_UID),
            run_as_group: Some(WRITER_UID),
            fs_group: Some(WRITER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: pod.node_selector.clone(),
        tolerations: pod.tolerations.clone(),
        affinity: pod.affinity.clone(),
        topology_spread_constraints: pod.topology_spread_constraints.clone(),
        priority_class_name: pod.priority_class_name.clone(),
        image_pull_secrets: pod.image_pull_secrets.clone(),
        ..Default::default()
    };
    let config_hash = hash_of(&pod_spec, &versions);
    let pod_labels = labels::writer(resource, w);
    let mut template_labels = pod.labels.clone().unwrap_or_default();
    template_labels.extend(pod_labels.clone());
    let mut template_annotations = pod.annotations.clone().unwrap_or_default();
    template_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.clone());
    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(rw.object_name.clone()),
            namespace: Some(bp.spec.common_persistence_specs.namespace.clone()),
            labels: Some(pod_labels.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            // An autoscaled writer's count belongs to the autoscaler: leaving it
            // out of the applied configuration keeps the operator from owning it.
            replicas: w.autoscaling.is_none().then_some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels::selector(resource, &w.name)),
                ..Default::default()
            },
            // Never two generations consuming at once beyond one surge pod.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(template_annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    WriterDeployment {
        deployment,
        image,
        config_hash,
        replicas,
    }
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    }
}

fn resources(
    request: Option<&ResourceAmounts>,
    limit: Option<&ResourceAmounts>,
) -> Option<ResourceRequirements> {
    fn amounts(a: Option<&ResourceAmounts>) -> Option<BTreeMap<String, Quantity>> {
        let a = a?;
        let m: BTreeMap<String, Quantity> = [("cpu", &a.cpu), ("memory", &a.memory)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), Quantity(v.clone()))))
            .collect();
        (!m.is_empty()).then_some(m)
    }
    let (requests, limits) = (amounts(request), amounts(limit));
    (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    })
}

fn env(bp: &BackgroundPersistence, resource: &str, rw: &ResolvedWriter) -> Vec<EnvVar> {
    let (w, sasl, store_file) = (rw.spec, rw.kafka_sasl, rw.store_file);
    let spec = &bp.spec;
    let common = &spec.common_persistence_specs;
    let kind = w.bus_subscriber_type.kind();
    let to_string = |v: &dyn erased::Wire| v.wire();
    let mut vars: Vec<(&str, Option<String>)> = vec![
        (c::ENV_RESOURCE, Some(resource.to_string())),
        (c::ENV_WRITER_NAME, Some(w.name.clone())),
        (
            c::ENV_WRITER_TYPE,
            Some(w.bus_subscriber_type.as_str().to_string()),
        ),
        (c::ENV_BUS_BACKEND, Some(to_string(&common.bus_backend))),
        (
            c::ENV_SUBSCRIPTION,
            kind.consumes.value(spec).map(str::to_string),
        ),
        (c::ENV_PUBLISH_TOPIC, publish_topic(bp, w)),
        (c::ENV_DLQ_TOPIC, common.kafka_dlq_topic.clone()),
        (c::ENV_METADATA_PROVIDER, spec.metadata_provider.clone()),
        (
            c::ENV_MAX_BATCH_SIZE,
            w.max_batch_size.map(|v| v.to_string()),
        ),
        (
            c::ENV_BATCH_GROWTH,
            w.max_batch_growth.map(|v| v.to_string()),
        ),
        (
            c::ENV_MAX_BATCH_BYTES,
            w.max_batch_bytes.map(|v| v.to_string()),
        ),
        (
            c::ENV_CONCURRENCY,
            w.message_processing_concurrency.map(|v| v.to_string()),
        ),
        (c::ENV_STORAGE_CACHE_PREFIX, w.storage_cache_prefix.clone()),
        (
            c::ENV_HTTP_ADDR,
            Some(format!("0.0.0.0:{}", c::WRITER_HTTP_PORT)),
        ),
        (
            c::ENV_STORE_URI_FILE,
            store_file.map(|f| format!("{}/{f}", c::STORES_MOUNT)),
        ),
    ];
    if common.bus_backend == BusBackend::Kafka {
        vars.extend([
            (
                c::ENV_KAFKA_BOOTSTRAP_SERVERS,
                spec.kafka_bootstrap_servers.clone(),
            ),
            (
                c::ENV_KAFKA_SECURITY_PROTOCOL,
                spec.kafka_security_protocol.map(|v| to_string(&v)),
            ),
            (
                c::ENV_KAFKA_SASL_MECHANISM,
                spec.effective_sasl_mechanism().map(|v| to_string(&v)),
            ),
            (c::ENV_KAFKA_CONSUMER_GROUP, Some(rw.consumer_group.clone())),
            (c::ENV_KAFKA_CLIENT_ID_PREFIX, spec.client_id_prefix.clone()),
            (
                c::ENV_KAFKA_SSL_KEYSTORE_LOCATION,
                spec.ssl_keystore_location.clone(),
            ),
            (
                c::ENV_KAFKA_SSL_TRUSTSTORE_LOCATION,
                spec.ssl_truststore_location.clone(),
            ),
            (
                c::ENV_KAFKA_ARGS,
                (!rw.kafka_args.is_empty())
                    .then(|| serde_json::to_string(&rw.kafka_args).unwrap_or_default()),
            ),
            (
                c::ENV_KAFKA_SASL_DIR,
                sasl.then(|| c::KAFKA_SASL_MOUNT.to_string()),
            ),
        ]);
        if let Some(o) = &spec.kafka_oauthbearer {
            vars.extend([
                (c::ENV_KAFKA_OAUTH_METHOD, Some(to_string(&o.method))),
                (c::ENV_KAFKA_OAUTH_TOKEN_URL, o.token_endpoint_url.clone()),
                (c::ENV_KAFKA_OAUTH_CLIENT_ID, o.client_id.clone()),
                (c::ENV_KAFKA_OAUTH_SCOPE, o.scope.clone()),
                (c::ENV_KAFKA_OAUTH_AWS_REGION, o.aws_region.clone()),
            ]);
        }
    }
    use crate::crd::StoreKind as S;
    match kind.store {
        S::OnlineStore => vars.push((c::ENV_REDIS_IS_CLUSTERED, spec.redis_is_clustered.clone())),
        S::OfflineStore => vars.extend([
            (c::ENV_UPLOAD_BUCKET, common.bigquery_upload_bucket.clone()),
            (
                c::ENV_OFFLINE_STORE_DB_TYPE,
                w.offline_store_inserter_db_type.clone(),
            ),
            (
                c::ENV_SNOWFLAKE_STORAGE_INTEGRATION,
                spec.snowflake_storage_integration_name.clone(),
            ),
            (
                c::ENV_QUERY_TABLE_WRITE_DROP_RATIO,
                w.query_table_write_drop_ratio.clone(),
            ),
        ]),
        S::MetricsBus => vars.extend([
            (
                c::ENV_SKIP_FEATURE_METRICS,
                w.results_writer_skip_producing_feature_metrics
                    .map(|b| b.to_string()),
            ),
            (
                c::ENV_PUBLISH_EXACTLY_ONCE,
                (w.metrics_exactly_once == Some(true)).then(|| "true".to_string()),
            ),
        ]),
        S::UsageStore => vars.push((c::ENV_USAGE_STORE_URI, w.usage_store_uri.clone())),
        S::QueryMirror => vars.push((c::ENV_API_SERVER_HOST, spec.api_server_host.clone())),
        S::MetricsStore | S::VectorStore => {}
    }
    vars.into_iter()
        .filter_map(|(name, value)| {
            value.map(|value| EnvVar {
                name: name.into(),
                value: Some(value),
                ..Default::default()
            })
        })
        .collect()
}

/// The topic a republishing writer sends to.
fn publish_topic(bp: &BackgroundPersistence, w: &WriterSpec) -> Option<String> {
    use crate::crd::StoreKind as S;
    let common = &bp.spec.common_persistence_specs;
    match w.bus_subscriber_type.kind().store {
        S::MetricsBus => common.metrics_bus_topic_id.clone(),
        S::OfflineStore if w.bus_subscriber_type == crate::crd::WriterType::OfflineWriter => {
            common.bigquery_streaming_write_topic.clone()
        }
        _ => None,
    }
}

/// Short, stable hash of what the pods run, and of the versions of the
/// secrets they mount; a change rolls the writer. With no secret versions it
/// is the hash of the pod spec alone.
fn hash_of(spec: &PodSpec, versions: &[(Slot, &str)]) -> String {
    let mut bytes = serde_json::to_vec(spec).unwrap_or_default();
    for (slot, version) in versions {
        bytes.extend_from_slice(format!("\n{}={version}", slot.id()).as_bytes());
    }
    let digest = Sha256::digest(&bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Spec enums as the strings users write.
mod erased {
    pub trait Wire {
        fn wire(&self) -> String;
    }
    impl<T: serde::Serialize> Wire for T {
        fn wire(&self) -> String {
            match serde_json::to_value(self) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(other) => other.to_string(),
                Err(_) => String::new(),
            }
        }
    }
}

//! Checks that need more than the CRD's schema and CEL rules (and repeat the
//! catalog's, in case an older CRD without them is installed). A writer that
//! fails is not applied at all; a spec-level problem stops the whole apply.

use crate::crd::{BackgroundPersistence, BusBackend, KafkaSaslMechanism, WriterSpec};
use crate::operator::model::{self, ResolvedWriter};
use crate::operator::render::deployment_name;
use crate::quantity;

/// One refusal: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The writer it concerns; None for the spec as a whole.
    pub writer: Option<String>,
    /// Path under `spec`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.writer {
            Some(w) => write!(f, "writer {w}: spec.{}: {}", self.field, self.reason),
            None => write!(f, "spec.{}: {}", self.field, self.reason),
        }
    }
}

#[derive(Debug)]
pub struct Validated<'a> {
    /// The writers without a problem, resolved for render.
    pub writers: Vec<ResolvedWriter<'a>>,
    pub problems: Vec<Problem>,
}

impl Validated<'_> {
    /// Problems that block every writer.
    pub fn fatal(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.writer.is_none())
    }
}

/// Validation with no operator defaults (render tests, `kubectl bgpersist render`).
pub fn validate(bp: &BackgroundPersistence) -> Validated<'_> {
    validate_with(bp, &model::Defaults::default())
}

pub fn validate_with<'a>(
    bp: &'a BackgroundPersistence,
    defaults: &model::Defaults,
) -> Validated<'a> {
    let spec = &bp.spec;
    let resource = bp.metadata.name.as_deref().unwrap_or_default();
    let mut problems = Vec::new();
    let spec_problem = |field: &str, reason: &str| Problem {
        writer: None,
        field: field.into(),
        reason: reason.into(),
    };

    if spec.common_persistence_specs.bus_backend == BusBackend::Kafka
        && !spec.writers.is_empty()
        && spec
            .kafka_bootstrap_servers
            .as_deref()
            .is_none_or(|s| s.trim().is_empty())
    {
        problems.push(spec_problem(
            "kafka_bootstrap_servers",
            "required when bus_backend is KAFKA",
        ));
    }
    let sasl_protocol = matches!(
        spec.kafka_security_protocol,
        Some(
            crate::crd::KafkaSecurityProtocol::SaslPlaintext
                | crate::crd::KafkaSecurityProtocol::SaslSsl
        )
    );
    let msk_iam = spec
        .kafka_oauthbearer
        .as_ref()
        .is_some_and(|o| o.method == crate::crd::KafkaOAuthMethod::AwsMskIam);
    if spec.common_persistence_specs.bus_backend == BusBackend::Kafka
        && sasl_protocol
        && spec.kafka_sasl_secret.is_none()
        && !msk_iam
    {
        problems.push(spec_problem(
            "kafka_sasl_secret",
            "required with kafka_security_protocol SASL_PLAINTEXT or SASL_SSL (the credentials), unless kafka_oauthbearer uses AWS_MSK_IAM",
        ));
    }
    if spec.kafka_sasl_secret.is_some() && spec.common_persistence_specs.secret_client.is_none() {
        problems.push(spec_problem(
            "common_persistence_specs.secret_client",
            "required when kafka_sasl_secret is set",
        ));
    }
    if spec.store_uri_secrets.as_ref().is_some_and(|s| s.any())
        && spec.common_persistence_specs.secret_client.is_none()
    {
        problems.push(spec_problem(
            "common_persistence_specs.secret_client",
            "required when store_uri_secrets is set",
        ));
    }

    for (field, reason) in kafka_args_problems(spec.additional_kafka_args.as_ref()) {
        problems.push(Problem {
            writer: None,
            field: format!("additional_kafka_args{field}"),
            reason,
        });
    }

    let mut ok = Vec::new();
    for (i, w) in spec.writers.iter().enumerate() {
        let before = problems.len();
        let mut refuse = |field: String, reason: String| {
            problems.push(Problem {
                writer: Some(w.name.clone()),
                field,
                reason,
            });
        };
        if spec.writers[..i].iter().any(|o| o.name == w.name) {
            refuse(
                format!("writers[{i}].name"),
                format!("duplicate writer name {:?}", w.name),
            );
        }
        let derived = deployment_name(resource, &w.name);
        if derived.len() > crate::crd::rules::MAX_DERIVED_NAME {
            refuse(
                format!("writers[{i}].name"),
                format!(
                    "{derived:?} is {} characters, more than {}",
                    derived.len(),
                    crate::crd::rules::MAX_DERIVED_NAME
                ),
            );
        }
        let kind = w.bus_subscriber_type.kind();
        for field in std::iter::once(&kind.consumes).chain(kind.also_requires) {
            if field.value(spec).is_none() {
                refuse(
                    field.path().into(),
                    format!("required by {}", w.bus_subscriber_type),
                );
            }
        }
        let resolved = match model::resolve(bp, resource, w, defaults) {
            Ok(r) => Some(r),
            Err(e) => {
                refuse(e.field(i), e.to_string());
                None
            }
        };
        if w.default_replica_count.is_some_and(|r| r < 0) {
            refuse(
                format!("writers[{i}].default_replica_count"),
                "must not be negative".into(),
            );
        }
        if w.metrics_exactly_once == Some(true)
            && (spec.common_persistence_specs.bus_backend != BusBackend::Kafka
                || !crate::crd::rules::EXACTLY_ONCE_TYPES.contains(&w.bus_subscriber_type))
        {
            refuse(
                format!("writers[{i}].metrics_exactly_once"),
                crate::crd::rules::EXACTLY_ONCE_ONLY.into(),
            );
        }
        for (field, reason) in kafka_args_problems(w.additional_kafka_args.as_ref()) {
            refuse(format!("writers[{i}].additional_kafka_args{field}"), reason);
        }
        for (field, reason) in autoscaling_problems(spec, w) {
            refuse(format!("writers[{i}].autoscaling{field}"), reason);
        }
        for (what, amounts) in [("request", &w.request), ("limit", &w.limit)] {
            let Some(a) = amounts else { continue };
            for (res, v) in [("cpu", &a.cpu), ("memory", &a.memory)] {
                let Some(v) = v.as_deref() else { continue };
                let field = format!("writers[{i}].{what}.{res}");
                match quantity::parse(v) {
                    None => refuse(field, format!("{v:?} is not a Kubernetes quantity")),
                    Some(q) if q < 0.0 => refuse(field, "must not be negative".into()),
                    Some(q) if q == 0.0 && what == "limit" => {
                        refuse(field, "a limit of 0 can never run a pod".into())
                    }
                    Some(_) => {}
                }
            }
        }
        if let (Some(req), Some(lim)) = (&w.request, &w.limit) {
            for (res, r, l) in [
                ("cpu", &req.cpu, &lim.cpu),
                ("memory", &req.memory, &lim.memory),
            ] {
                if let (Some(r), Some(l)) = (
                    r.as_deref().and_then(quantity::parse),
                    l.as_deref().and_then(quantity::parse),
                ) && r > l
                {
                    refuse(
                        format!("writers[{i}].request.{res}"),
                        "must not exceed the limit".into(),
                    );
                }
            }
        }
        if problems.len() == before
            && let Some(r) = resolved
        {
            ok.push(r);
        }
    }
    Validated {
        writers: ok,
        problems,
    }
}

/// Refused keys and values of an `additional_kafka_args` map, each as
/// (`[key]` path suffix, reason naming the key).
fn kafka_args_problems(
    args: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    use crate::crd::kafka_args::{refusal, value_refusal};
    args.into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let why = refusal(k).or_else(|| value_refusal(k.trim(), v))?;
            Some((format!("[{k}]"), why))
        })
        .collect()
}

/// The autoscaling block's problems, each as (path below `autoscaling`, reason).
fn autoscaling_problems(
    spec: &crate::crd::BackgroundPersistenceSpec,
    w: &WriterSpec,
) -> Vec<(&'static str, String)> {
    let Some(a) = &w.autoscaling else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if a.max_replicas < 1 {
        out.push((".max_replicas", "must be at least 1".to_string()));
    }
    if a.min() < 0 {
        out.push((".min_replicas", "must not be negative".into()));
    } else if a.min() > a.max_replicas {
        out.push((
            ".min_replicas",
            "must not exceed autoscaling.max_replicas".into(),
        ));
    }
    let kafka = spec.common_persistence_specs.bus_backend == BusBackend::Kafka;
    if !kafka && a.lag_threshold.is_some() {
        out.push((
            ".lag_threshold",
            "is for KAFKA; on PUBSUB the backlog per replica is the writer's hpa_target_average_value".into(),
        ));
    }
    if kafka && (spec.ssl_keystore_location.is_some() || spec.ssl_truststore_location.is_some()) {
        out.push((
            "",
            format!(
                "not supported with ssl_keystore_location or ssl_truststore_location: {}",
                crate::crd::rules::AUTOSCALING_REMOTE_TLS
            ),
        ));
    }
    if kafka && spec.kafka_sasl_mechanism == Some(KafkaSaslMechanism::OauthBearer) {
        out.push((
            "",
            format!(
                "not supported with kafka_sasl_mechanism OAUTHBEARER: {}",
                crate::crd::rules::AUTOSCALING_OAUTHBEARER
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::render::fixtures::{defaults, seed_with};
    use serde_json::json;

    /// Problems under the chart's operator, which runs the seed's writers
    /// with its own image (the seed names placeholders for the others).
    fn problems(patch: serde_json::Value) -> Vec<String> {
        let bp = seed_with(patch);
        validate_with(&bp, &defaults())
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    /// Problems under an operator with no image of its own.
    fn problems_without_operator_image(patch: serde_json::Value) -> Vec<String> {
        let bp = seed_with(patch);
        validate(&bp)
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn a_writer_without_image_runs_the_operators_own_or_is_refused_naming_the_fields() {
        let bp = seed_with(json!({"common_persistence_specs": {"bus_writer_image_go": null}}));
        let defaults = model::Defaults {
            writer_image: Some("registry.example/bgpersist:1".into()),
            ..Default::default()
        };
        let v = validate_with(&bp, &defaults);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert!(
            v.writers
                .iter()
                .all(|w| w.image == "registry.example/bgpersist:1")
        );
        let p = problems_without_operator_image(
            json!({"common_persistence_specs": {"bus_writer_image_go": null}}),
        );
        assert!(
            p.iter()
                .any(|p| p.contains("bus_writer_image_rust, bus_writer_image_go")
                    && p.contains("install the operator with its chart")),
            "{p:?}"
        );
        // A Rust image named by the resource wins over the operator's.
        let bp =
            seed_with(json!({"common_persistence_specs": {"bus_writer_image_rust": "mine:2"}}));
        let v = validate_with(&bp, &defaults);
        assert!(v.writers.iter().all(|w| w.image == "mine:2"));
    }

    #[test]
    fn kafka_args_the_writer_owns_are_refused_with_the_key_named() {
        let p = problems(json!({
            "additional_kafka_args": {"sasl.jaas.config": "x", "compression.type": "zstd"},
            "writers": [{"name": "w", "bus_subscriber_type": "ONLINE_WRITER",
                "additional_kafka_args": {"group.id": "mine", "auto.offset.reset": "newest"}}]
        }));
        assert_eq!(
            p,
            vec![
                "spec.additional_kafka_args[sasl.jaas.config]: sasl.jaas.config is not a librdkafka property: a Java client setting: put the credentials in kafka_sasl_secret",
                "writer w: spec.writers[0].additional_kafka_args[auto.offset.reset]: auto.offset.reset \"newest\" is not one of earliest, smallest, beginning, latest, largest, end",
                "writer w: spec.writers[0].additional_kafka_args[group.id]: group.id is set by the writer: the writer's consumer group (kafka_consumer_group_override, group_id_prefix)",
            ]
        );
    }

    #[test]
    fn seed_is_valid() {
        assert_eq!(problems(json!({})), Vec::<String>::new());
    }

    #[test]
    fn missing_subscription_names_writer_and_field() {
        let p =
            problems(json!({"common_persistence_specs": {"metrics_bus_subscription_id": null}}));
        assert_eq!(
            p,
            vec![
                "writer go-metrics-bus-writer: spec.common_persistence_specs.metrics_bus_subscription_id: required by GO_METRICS_BUS_WRITER"
            ]
        );
    }

    #[test]
    fn request_above_limit_is_refused() {
        let bp = seed_with(json!({}));
        let mut bp2 = bp.clone();
        bp2.spec.writers[0].request = Some(crate::crd::ResourceAmounts {
            cpu: Some("2".into()),
            memory: None,
        });
        let v = validate_with(&bp2, &defaults());
        assert_eq!(v.writers.len(), 1, "only the other writer stays");
        assert!(
            v.problems[0]
                .to_string()
                .contains("writers[0].request.cpu: must not exceed the limit")
        );
    }

    #[test]
    fn kafka_without_bootstrap_is_fatal() {
        let bp = seed_with(json!({"kafka_bootstrap_servers": null}));
        let v = validate(&bp);
        assert_eq!(v.fatal().count(), 1);
        assert!(v.fatal().any(|p| p.field == "kafka_bootstrap_servers"));
    }

    #[test]
    fn autoscaling_bounds_are_checked_for_that_writer() {
        let p = problems(json!({"writers": [
            {"name": "a", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
             "autoscaling": {"min_replicas": 5, "max_replicas": 2}},
            {"name": "b", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
             "autoscaling": {"max_replicas": 2, "lag_threshold": 100}}]}));
        assert_eq!(
            p,
            vec![
                "writer a: spec.writers[0].autoscaling.min_replicas: must not exceed autoscaling.max_replicas"
            ]
        );
        let p = problems(
            json!({"common_persistence_specs": {"bus_backend": "PUBSUB"},
            "writers": [{"name": "a", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
             "autoscaling": {"max_replicas": 2, "lag_threshold": 100}}]}),
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("writer a: spec.writers[0].autoscaling.lag_threshold: is for KAFKA")
        );
    }

    #[test]
    fn exactly_once_only_for_publishing_writers_on_kafka() {
        let p = problems(json!({"writers": [
            {"name": "a", "bus_subscriber_type": "METRICS_WRITER", "metrics_exactly_once": true},
            {"name": "b", "bus_subscriber_type": "GO_METRICS_BUS_WRITER", "metrics_exactly_once": true},
            {"name": "c", "bus_subscriber_type": "GO_METRICS_BUS_WRITER", "metrics_exactly_once": false}]}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("writer b: spec.writers[1].metrics_exactly_once: "));
        let p = problems(
            json!({"common_persistence_specs": {"bus_backend": "PUBSUB"}, "writers": [
            {"name": "a", "bus_subscriber_type": "METRICS_WRITER", "metrics_exactly_once": true}]}),
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("Pub/Sub has no transactions"), "{p:?}");
    }

    #[test]
    fn autoscaling_with_oauthbearer_is_refused() {
        let p = problems(json!({"kafka_sasl_mechanism": "OAUTHBEARER", "writers": [
            {"name": "a", "bus_subscriber_type": "GO_METRICS_BUS_WRITER", "autoscaling": {"max_replicas": 3}}]}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("writer a: spec.writers[0].autoscaling: not supported with kafka_sasl_mechanism OAUTHBEARER"));
    }

    #[test]
    fn missing_image_is_refused_for_that_writer() {
        let p = problems_without_operator_image(
            json!({"common_persistence_specs": {"bus_writer_image_go": null}}),
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|m| m.contains("bus_writer_image_go")));
    }

    #[test]
    fn the_image_a_writer_runs_must_be_a_reference_naming_the_field_it_came_from() {
        // The seed's placeholders are refused only when a writer would run them.
        let p = problems_without_operator_image(json!({}));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p.iter().all(|m| m
                .contains("spec.common_persistence_specs.bus_writer_image_go: writer go-")
                && m.contains("\"<go bus writer image>\" is not an image reference")),
            "{p:?}"
        );
        assert_eq!(problems(json!({})), Vec::<String>::new());
        let p = problems(json!({"writers": [
            {"name": "w", "bus_subscriber_type": "ONLINE_WRITER", "image": "acme/writer :1"}]}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("writer w: spec.writers[0].image: writer w: \"acme/writer :1\""),
            "{p:?}"
        );
        let bp = seed_with(json!({}));
        let bad_operator = model::Defaults {
            writer_image: Some("bgpersist:".into()),
            ..Default::default()
        };
        let v = validate_with(&bp, &bad_operator);
        assert!(
            v.problems
                .iter()
                .all(|p| p.field == "BGP_WRITER_IMAGE (the operator's own image)"),
            "{:?}",
            v.problems
        );
        assert_eq!(v.writers.len(), 0);
    }
}

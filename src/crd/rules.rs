//! Admission rules (CEL) derived from the writer catalog, added to the
//! generated CRD so the API server refuses an unrunnable resource outright.

use super::catalog::BusField;
use super::kafka_args;
use super::spec::BackgroundPersistence;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, ValidationRule,
};
use kube::CustomResourceExt;
use kube::core::{Message, Reason, Rule};

fn type_list(types: &[super::WriterType]) -> String {
    let quoted: Vec<String> = types.iter().map(|t| format!("'{t}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// CEL `has()` test for a spec path relative to `self` (the spec), also refusing blanks.
fn present(path: &str) -> String {
    format!("(has(self.{path}) && self.{path}.trim() != '')")
}

/// Rules evaluated with `self` bound to `spec`.
pub fn spec_rules() -> Vec<Rule> {
    // Messages are static: the API server's cost estimator refuses message
    // expressions that index filtered lists, so the message names the field and
    // the writer types that need it (status names the writer itself).
    let mut rules = Vec::new();
    for field in BusField::all_required() {
        let types = field.required_by();
        rules.push(
            Rule::new(format!(
                "!self.writers.exists(w, w.bus_subscriber_type in {}) || {}",
                type_list(&types),
                present(field.path())
            ))
            .message(Message::Message(format!(
                "{} is required by writers of type {}",
                field.path(),
                names(&types)
            )))
            .field_path(format!(".{}", field.path()))
            .reason(Reason::FieldValueRequired),
        );
    }
    // No image rule: a writer without one runs the operator's own image
    // when the operator has one (the chart hands it), else status says so.
    rules.push(
        Rule::new(format!(
            "self.common_persistence_specs.bus_backend != 'KAFKA' || size(self.writers) == 0 || {}",
            present("kafka_bootstrap_servers")
        ))
        .message("kafka_bootstrap_servers is required when common_persistence_specs.bus_backend is KAFKA")
        .field_path(".kafka_bootstrap_servers")
        .reason(Reason::FieldValueRequired),
    );
    rules.push(
        Rule::new("!has(self.kafka_security_protocol) || !(self.kafka_security_protocol in ['SASL_PLAINTEXT', 'SASL_SSL']) || has(self.kafka_sasl_secret) || (has(self.kafka_oauthbearer) && self.kafka_oauthbearer.method == 'AWS_MSK_IAM')")
            .message("kafka_security_protocol SASL_PLAINTEXT or SASL_SSL needs kafka_sasl_secret holding the credentials (or kafka_oauthbearer with method AWS_MSK_IAM)")
            .field_path(".kafka_sasl_secret")
            .reason(Reason::FieldValueRequired),
    );
    rules.push(
        Rule::new("self.writers.all(w, !has(w.limit) || ((!has(w.limit.cpu) || !isQuantity(w.limit.cpu) || quantity(w.limit.cpu).isGreaterThan(quantity('0'))) && (!has(w.limit.memory) || !isQuantity(w.limit.memory) || quantity(w.limit.memory).isGreaterThan(quantity('0')))))")
            .message("writers[].limit: a cpu or memory limit of 0 can never run a pod")
            .field_path(".writers")
            .reason(Reason::FieldValueInvalid),
    );
    rules.push(
        Rule::new("!has(self.kafka_sasl_mechanism) || !has(self.kafka_security_protocol) || self.kafka_security_protocol in ['SASL_PLAINTEXT', 'SASL_SSL']")
            .message("kafka_sasl_mechanism needs kafka_security_protocol SASL_PLAINTEXT or SASL_SSL")
            .field_path(".kafka_sasl_mechanism")
            .reason(Reason::FieldValueInvalid),
    );
    rules.push(
        Rule::new("!has(self.kafka_sasl_secret) || has(self.common_persistence_specs.secret_client)")
            .message("kafka_sasl_secret needs common_persistence_specs.secret_client (AWS, GCP or KUBERNETES) to say where the secret lives")
            .field_path(".kafka_sasl_secret")
            .reason(Reason::FieldValueRequired),
    );
    rules.push(
        Rule::new("self.common_persistence_specs.bus_backend == 'KAFKA' || self.writers.all(w, !has(w.autoscaling) || !has(w.autoscaling.lag_threshold))")
            .message("writers[].autoscaling.lag_threshold is for KAFKA; on PUBSUB the backlog per replica is the writer's hpa_target_average_value")
            .field_path(".writers")
            .reason(Reason::FieldValueInvalid),
    );
    rules.push(
        Rule::new(format!("(has(self.kafka_sasl_mechanism) && self.kafka_sasl_mechanism == '{OAUTHBEARER}') == has(self.kafka_oauthbearer)"))
            .message(Message::Message(format!("kafka_sasl_mechanism {OAUTHBEARER} and kafka_oauthbearer go together: kafka_oauthbearer says where tokens come from (OIDC or AWS_MSK_IAM)")))
            .field_path(".kafka_oauthbearer")
            .reason(Reason::FieldValueRequired),
    );
    rules.push(
        Rule::new("(!has(self.ssl_keystore_location) && !has(self.ssl_truststore_location)) || (has(self.kafka_security_protocol) && self.kafka_security_protocol in ['SSL', 'SASL_SSL'])")
            .message("ssl_keystore_location and ssl_truststore_location need kafka_security_protocol SSL or SASL_SSL")
            .field_path(".kafka_security_protocol")
            .reason(Reason::FieldValueInvalid),
    );
    rules.push(
        Rule::new("(!has(self.ssl_keystore_location) && !has(self.ssl_truststore_location)) || self.writers.all(w, !has(w.autoscaling))")
            .message(Message::Message(format!("writers[].autoscaling is not supported with ssl_keystore_location or ssl_truststore_location: {AUTOSCALING_REMOTE_TLS}")))
            .field_path(".writers")
            .reason(Reason::FieldValueForbidden),
    );
    rules.push(
        Rule::new("!has(self.kafka_oauthbearer) || self.kafka_oauthbearer.method != 'OIDC' || has(self.kafka_sasl_secret)")
            .message("kafka_oauthbearer.method OIDC needs kafka_sasl_secret holding the client secret (\"client_secret\")")
            .field_path(".kafka_sasl_secret")
            .reason(Reason::FieldValueRequired),
    );
    rules.push(
        Rule::new(format!("self.common_persistence_specs.bus_backend != 'KAFKA' || !has(self.kafka_sasl_mechanism) || self.kafka_sasl_mechanism != '{OAUTHBEARER}' || self.writers.all(w, !has(w.autoscaling))"))
            .message(Message::Message(format!("writers[].autoscaling is not supported with kafka_sasl_mechanism {OAUTHBEARER}: {AUTOSCALING_OAUTHBEARER}")))
            .field_path(".writers")
            .reason(Reason::FieldValueForbidden),
    );
    rules.push(
        Rule::new(format!(
            "self.writers.all(w, !has(w.metrics_exactly_once) || !w.metrics_exactly_once || (self.common_persistence_specs.bus_backend == 'KAFKA' && w.bus_subscriber_type in {}))",
            type_list(&EXACTLY_ONCE_TYPES)
        ))
        .message(Message::Message(EXACTLY_ONCE_ONLY.to_string()))
        .field_path(".writers")
        .reason(Reason::FieldValueForbidden),
    );
    rules.push(
        Rule::new("!has(self.store_uri_secrets) || has(self.common_persistence_specs.secret_client)")
            .message("store_uri_secrets needs common_persistence_specs.secret_client (AWS, GCP or KUBERNETES) to say where the secrets live")
            .field_path(".store_uri_secrets")
            .reason(Reason::FieldValueRequired),
    );
    rules.extend(network_policy_rules());
    rules
}

/// `common_persistence_specs.network_policy`: what would open everything, or
/// what the API server would refuse only when the operator applies it.
fn network_policy_rules() -> Vec<Rule> {
    let np = format!("self.{}", super::network_policy::PATH);
    let has = |field: &str| format!("has({np}) && has({np}.{field})");
    let peer = "has(p.podSelector) || has(p.namespaceSelector) || has(p.ipBlock)";
    vec![
        Rule::new(format!(
            "!({}) || {np}.extra_egress.all(r, (has(r.to) && size(r.to) > 0) || (has(r.ports) && size(r.ports) > 0))",
            has("extra_egress")
        ))
        .message("network_policy.extra_egress: a rule with neither `to` nor `ports` allows all egress; name its peers or ports")
        .field_path(format!(".{}.extra_egress", super::network_policy::PATH))
        .reason(Reason::FieldValueInvalid),
        Rule::new(format!(
            "!({}) || {np}.metrics_from.all(p, {peer})",
            has("metrics_from")
        ))
        .message("network_policy.metrics_from: each peer needs podSelector, namespaceSelector or ipBlock")
        .field_path(format!(".{}.metrics_from", super::network_policy::PATH))
        .reason(Reason::FieldValueInvalid),
        Rule::new(format!("!({}) || {np}.dns_to.all(p, {peer})", has("dns_to")))
            .message("network_policy.dns_to: each peer needs podSelector, namespaceSelector or ipBlock")
            .field_path(format!(".{}.dns_to", super::network_policy::PATH))
            .reason(Reason::FieldValueInvalid),
    ]
}

const OAUTHBEARER: &str = "OAUTHBEARER";
/// The writer types that can publish in Kafka transactions.
pub const EXACTLY_ONCE_TYPES: [super::WriterType; 2] = [
    super::WriterType::MetricsWriter,
    super::WriterType::GoResultBusMetricsWriter,
];
/// Why `metrics_exactly_once` is refused elsewhere (shared with the operator's own check).
pub const EXACTLY_ONCE_ONLY: &str = "writers[].metrics_exactly_once is for METRICS_WRITER and GO_RESULT_BUS_METRICS_WRITER on bus_backend KAFKA (Pub/Sub has no transactions)";
/// Why autoscaling is refused with a keystore or truststore in object storage.
pub const AUTOSCALING_REMOTE_TLS: &str = "KEDA's Kafka scaler cannot read them from object storage; put the PEM material in kafka_sasl_secret (ssl_ca_pem, ssl_certificate_pem, ssl_key_pem) instead";
/// Why autoscaling is refused with OAUTHBEARER (shared with the operator's own check).
pub const AUTOSCALING_OAUTHBEARER: &str = "bgpersist does not hand OAUTHBEARER tokens to KEDA's Kafka scaler yet; scale these writers with replicas";

fn names(types: &[super::WriterType]) -> String {
    types
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Longest object name the operator derives (`<resource>-<writer>`): a DNS
/// label, so it also fits in label values.
pub const MAX_DERIVED_NAME: usize = 63;

/// Rules evaluated with `self` bound to the whole object (they need metadata.name).
pub fn root_rules() -> Vec<Rule> {
    vec![
        Rule::new(format!(
            "self.spec.writers.all(w, size(self.metadata.name) + 1 + size(w.name) <= {MAX_DERIVED_NAME})"
        ))
        .message(Message::Message(format!(
            "spec.writers[].name: <metadata.name>-<writer name> names the writer's Deployment and must be at most {MAX_DERIVED_NAME} characters"
        )))
        .reason(Reason::FieldValueInvalid),
    ]
}

/// The CRD as installed: the derived schema plus the catalog's rules.
pub fn crd_with_rules() -> CustomResourceDefinition {
    let mut crd = BackgroundPersistence::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        push_rules(schema, root_rules());
        if let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) {
            // Only the spec: the rules read nothing in status, and status
            // messages (conditions, writers) outgrow a 253-byte cap.
            bound_strings(spec);
            push_rules(spec, spec_rules());
            for args in kafka_args_schemas(spec) {
                bound_map_values(args);
                push_rules(args, kafka_args_rules());
            }
        }
    }
    crd
}

/// The `additional_kafka_args` maps: the resource's and each writer's.
fn kafka_args_schemas(spec: &mut JSONSchemaProps) -> Vec<&mut JSONSchemaProps> {
    const FIELD: &str = "additional_kafka_args";
    let Some(props) = spec.properties.as_mut() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut writer_args = None;
    for (name, schema) in props.iter_mut() {
        match name.as_str() {
            FIELD => out.push(schema),
            "writers" => {
                writer_args = match schema.items.as_mut() {
                    Some(JSONSchemaPropsOrArray::Schema(item)) => {
                        item.properties.as_mut().and_then(|p| p.get_mut(FIELD))
                    }
                    _ => None,
                }
            }
            _ => {}
        }
    }
    out.extend(writer_args);
    out
}

/// One rule per refused key (`self` is the map), so the API server's message
/// names the key; and the values of `auto.offset.reset`.
pub fn kafka_args_rules() -> Vec<Rule> {
    let mut rules: Vec<Rule> = kafka_args::OWNED
        .iter()
        .chain(kafka_args::JAVA_ONLY)
        .filter_map(|(key, _)| {
            let why = kafka_args::refusal(key)?;
            Some(
                Rule::new(format!("!('{key}' in self)"))
                    .message(Message::Message(why))
                    .reason(Reason::FieldValueForbidden),
            )
        })
        .collect();
    rules.push(
        Rule::new(format!(
            "!('auto.offset.reset' in self) || self['auto.offset.reset'] in [{}]",
            kafka_args::OFFSET_RESETS
                .iter()
                .map(|v| format!("'{v}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .message(Message::Message(format!(
            "auto.offset.reset must be one of {}",
            kafka_args::OFFSET_RESETS.join(", ")
        )))
        .reason(Reason::FieldValueInvalid),
    );
    rules
}

/// Longest property value in `additional_kafka_args`.
const MAX_KAFKA_ARG_VALUE: i64 = 4096;

fn bound_map_values(map: &mut JSONSchemaProps) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool;
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = map.additional_properties.as_mut() {
        values.max_length.get_or_insert(MAX_KAFKA_ARG_VALUE);
    }
}

/// Longest string accepted where a field sets no bound of its own. CEL rule
/// cost is estimated from declared sizes, so every string needs one.
pub const DEFAULT_MAX_STRING: i64 = 253;

fn bound_strings(schema: &mut JSONSchemaProps) {
    if schema.type_.as_deref() == Some("string")
        && schema.max_length.is_none()
        && schema.enum_.is_none()
    {
        schema.max_length = Some(DEFAULT_MAX_STRING);
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        bound_strings(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        bound_strings(items);
    }
}

fn push_rules(schema: &mut JSONSchemaProps, rules: Vec<Rule>) {
    let list = schema.x_kubernetes_validations.get_or_insert_with(Vec::new);
    for r in rules {
        list.push(ValidationRule {
            rule: r.rule,
            message: match &r.message {
                Some(Message::Message(m)) => Some(m.clone()),
                _ => None,
            },
            message_expression: match &r.message {
                Some(Message::Expression(m)) => Some(m.clone()),
                _ => None,
            },
            reason: r.reason.as_ref().map(|reason| {
                serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "FieldValueInvalid".into())
            }),
            field_path: r.field_path,
            optional_old_self: r.optional_old_self,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_level_rule_names_its_field() {
        for rule in spec_rules() {
            assert!(
                rule.field_path
                    .as_deref()
                    .is_some_and(|p| p.starts_with('.')),
                "no fieldPath: {}",
                rule.rule
            );
        }
    }

    /// `kubectl explain` has something to say about every field.
    #[test]
    fn every_field_is_described() {
        let crd = serde_json::to_value(crd_with_rules()).unwrap_or_default();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert!(
            schema["description"]
                .as_str()
                .is_some_and(|d| !d.contains("Auto-generated")),
            "the top-level description is kube-rs's placeholder"
        );
        fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
            if let Some(props) = node["properties"].as_object() {
                for (k, v) in props {
                    let p = format!("{path}.{k}");
                    if v.get("description").is_none()
                        && !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    {
                        missing.push(p.clone());
                    }
                    walk(v, &p, missing);
                }
            }
            if node.get("items").is_some() {
                walk(&node["items"], &format!("{path}[]"), missing);
            }
        }
        let mut missing = Vec::new();
        walk(schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }
}

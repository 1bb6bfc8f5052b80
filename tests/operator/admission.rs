//! Malformed resources are refused by the API server (schema and CEL rules),
//! each with a message naming the field.

use crate::{install_crd, seed_resource, seed_value};
use bgpersist::crd::BackgroundPersistence;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

async fn refused(patch: Value, edit: impl Fn(&mut Value)) -> anyhow::Result<String> {
    let client = install_crd().await?;
    let mut v = seed_value(patch)?;
    edit(&mut v);
    let api: Api<BackgroundPersistence> = Api::all(client);
    // Send raw JSON so values the Rust types would refuse still reach the server.
    let body = serde_json::to_vec(&v)?;
    let req = http::Request::post("/apis/bgpersist.dev/v1alpha1/backgroundpersistences")
        .header("content-type", "application/json")
        .body(body)?;
    let result: Result<BackgroundPersistence, kube::Error> =
        api.clone().into_client().request(req).await;
    match result {
        Ok(created) => {
            let name = created.metadata.name.unwrap_or_default();
            let _ = api.delete(&name, &Default::default()).await;
            anyhow::bail!("the API server accepted it")
        }
        Err(kube::Error::Api(s)) => Ok(s.message),
        Err(e) => Err(e.into()),
    }
}

fn none(_: &mut Value) {}

async fn assert_refused(what: &str, patch: Value, edit: impl Fn(&mut Value), needle: &str) {
    match refused(patch, edit).await {
        Ok(message) => assert!(
            message.contains(needle),
            "{what}: message does not name {needle:?}: {message}"
        ),
        Err(e) => panic!("{what}: expected a refusal naming {needle:?}, got: {e}"),
    }
}

#[tokio::test]
async fn seed_example_is_accepted() -> anyhow::Result<()> {
    let client = install_crd().await?;
    let bp = seed_resource(json!({}))?;
    let api: Api<BackgroundPersistence> = Api::all(client);
    let created = api.create(&PostParams::default(), &bp).await?;
    assert_eq!(
        created.spec, bp.spec,
        "the server stores the seed unchanged (no defaulting drift)"
    );
    api.delete(
        &bp.metadata.name.clone().unwrap_or_default(),
        &Default::default(),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn unknown_writer_type() {
    let p = json!({"writers": [{"name": "w", "bus_subscriber_type": "FAX_WRITER"}]});
    assert_refused(
        "unknown type",
        p,
        none,
        "spec.writers[0].bus_subscriber_type",
    )
    .await;
}

#[tokio::test]
async fn negative_replicas() {
    let p = json!({"writers": [{"name": "w", "bus_subscriber_type": "GO_METRICS_BUS_WRITER", "default_replica_count": -1}]});
    assert_refused(
        "negative replicas",
        p,
        none,
        "spec.writers[0].default_replica_count",
    )
    .await;
}

#[tokio::test]
async fn malformed_quantity() {
    let p = json!({"writers": [{"name": "w", "bus_subscriber_type": "GO_METRICS_BUS_WRITER", "request": {"cpu": "lots"}}]});
    assert_refused("malformed quantity", p, none, "spec.writers[0].request.cpu").await;
}

#[tokio::test]
async fn duplicate_writer_names() {
    let w = json!({"name": "same", "bus_subscriber_type": "GO_METRICS_BUS_WRITER"});
    assert_refused(
        "duplicate names",
        json!({"writers": [w.clone(), w]}),
        none,
        "spec.writers[1]",
    )
    .await;
}

#[tokio::test]
async fn required_bus_id_missing() {
    let p = json!({"common_persistence_specs": {"metrics_bus_subscription_id": null}});
    assert_refused(
        "missing bus id",
        p,
        none,
        "metrics_bus_subscription_id is required by writers of type",
    )
    .await;
}

#[tokio::test]
async fn name_too_long_once_prefixed() {
    let long = "w".repeat(60);
    let p = json!({"writers": [{"name": long, "bus_subscriber_type": "GO_METRICS_BUS_WRITER"}]});
    assert_refused("too long once prefixed", p, none, "spec.writers[].name").await;
}

#[tokio::test]
async fn wrong_bus_backend() {
    let p = json!({"common_persistence_specs": {"bus_backend": "RABBITMQ"}});
    assert_refused(
        "bus backend",
        p,
        none,
        "spec.common_persistence_specs.bus_backend",
    )
    .await;
}

#[tokio::test]
async fn missing_namespace() {
    let p = json!({"common_persistence_specs": {"namespace": null}});
    assert_refused(
        "missing namespace",
        p,
        none,
        "spec.common_persistence_specs.namespace",
    )
    .await;
}

#[tokio::test]
async fn invalid_namespace() {
    let p = json!({"common_persistence_specs": {"namespace": "Bad_Namespace"}});
    assert_refused(
        "invalid namespace",
        p,
        none,
        "spec.common_persistence_specs.namespace",
    )
    .await;
}

#[tokio::test]
async fn invalid_writer_name() {
    let p =
        json!({"writers": [{"name": "Writer_1", "bus_subscriber_type": "GO_METRICS_BUS_WRITER"}]});
    assert_refused("invalid writer name", p, none, "spec.writers[0].name").await;
}

#[tokio::test]
async fn kafka_without_bootstrap_servers() {
    assert_refused(
        "no bootstrap",
        json!({"kafka_bootstrap_servers": null}),
        none,
        "kafka_bootstrap_servers",
    )
    .await;
}

#[tokio::test]
async fn sasl_secret_without_secret_client() {
    let p = json!({"common_persistence_specs": {"secret_client": null}});
    assert_refused("sasl without client", p, none, "secret_client").await;
}

#[tokio::test]
async fn sasl_mechanism_on_plaintext() {
    let p = json!({"kafka_security_protocol": "PLAINTEXT"});
    assert_refused("sasl on plaintext", p, none, "kafka_sasl_mechanism").await;
}

#[tokio::test]
async fn unknown_security_protocol() {
    assert_refused(
        "protocol",
        json!({"kafka_security_protocol": "TLS"}),
        none,
        "spec.kafka_security_protocol",
    )
    .await;
}

#[tokio::test]
async fn redis_is_clustered_not_a_flag() {
    assert_refused(
        "redis flag",
        json!({"redis_is_clustered": "maybe"}),
        none,
        "spec.redis_is_clustered",
    )
    .await;
}

#[tokio::test]
async fn too_many_writers() {
    let writers: Vec<Value> = (0..33)
        .map(|i| json!({"name": format!("w{i}"), "bus_subscriber_type": "GO_METRICS_BUS_WRITER"}))
        .collect();
    assert_refused(
        "too many",
        json!({"writers": writers}),
        none,
        "spec.writers",
    )
    .await;
}

#[tokio::test]
async fn writers_without_images_are_accepted_for_the_operators_own_image() -> anyhow::Result<()> {
    // The operator runs them on its own image; without one, status says so.
    let client = install_crd().await?;
    let bp = seed_resource(json!({"common_persistence_specs": {"bus_writer_image_go": null}}))?;
    let api: Api<BackgroundPersistence> = Api::all(client);
    let created = api.create(&PostParams::default(), &bp).await?;
    assert_eq!(created.spec, bp.spec);
    api.delete(
        &bp.metadata.name.clone().unwrap_or_default(),
        &Default::default(),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn drop_ratio_above_one() {
    let p = json!({"writers": [{"name": "w", "bus_subscriber_type": "GO_METRICS_BUS_WRITER", "query_table_write_drop_ratio": "1.5"}]});
    assert_refused(
        "drop ratio",
        p,
        none,
        "spec.writers[0].query_table_write_drop_ratio",
    )
    .await;
}

#[tokio::test]
async fn exactly_once_on_a_writer_that_does_not_publish() {
    let p = json!({"writers": [{"name": "w", "bus_subscriber_type": "GO_METRICS_BUS_WRITER", "metrics_exactly_once": true}]});
    assert_refused(
        "exactly once",
        p,
        none,
        "metrics_exactly_once is for METRICS_WRITER",
    )
    .await;
}

#[tokio::test]
async fn unknown_secret_client() {
    let p = json!({"common_persistence_specs": {"secret_client": "AZURE"}});
    assert_refused(
        "secret client",
        p,
        none,
        "spec.common_persistence_specs.secret_client",
    )
    .await;
}

#[tokio::test]
async fn bulk_insert_without_bucket() {
    let p = json!({"common_persistence_specs": {"bigquery_upload_bucket": null},
        "writers": [{"name": "bulk", "bus_subscriber_type": "OFFLINE_STORE_BULK_INSERT_WRITER"}]});
    assert_refused("no bucket", p, none, "bigquery_upload_bucket").await;
}

#[tokio::test]
async fn writers_not_a_list() {
    assert_refused(
        "writers type",
        json!({}),
        |v| v["spec"]["writers"] = json!("all of them"),
        "spec.writers",
    )
    .await;
}

fn autoscaled(autoscaling: Value) -> Value {
    json!({"writers": [{"name": "w", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
        "autoscaling": autoscaling}]})
}

#[tokio::test]
async fn bad_autoscaling_blocks() {
    let cases: [(&str, Value, &str); 5] = [
        (
            "min above max",
            autoscaled(json!({"min_replicas": 5, "max_replicas": 2})),
            "spec.writers[0].autoscaling: Invalid value: \"object\": autoscaling.min_replicas must not exceed autoscaling.max_replicas",
        ),
        (
            "no max",
            autoscaled(json!({"min_replicas": 1})),
            "spec.writers[0].autoscaling.max_replicas: Required value",
        ),
        (
            "max zero",
            autoscaled(json!({"max_replicas": 0})),
            "spec.writers[0].autoscaling.max_replicas",
        ),
        (
            "negative activation",
            autoscaled(json!({"max_replicas": 3, "activation_lag_threshold": -1})),
            "spec.writers[0].autoscaling.activation_lag_threshold",
        ),
        (
            "polling every 0 s",
            autoscaled(json!({"max_replicas": 3, "polling_interval_seconds": 0})),
            "spec.writers[0].autoscaling.polling_interval_seconds",
        ),
    ];
    for (what, patch, needle) in cases {
        assert_refused(what, patch, none, needle).await;
    }
}

#[tokio::test]
async fn lag_threshold_on_pubsub() {
    let mut p = autoscaled(json!({"max_replicas": 3, "lag_threshold": 100}));
    p["common_persistence_specs"] = json!({"bus_backend": "PUBSUB"});
    assert_refused(
        "lag threshold on Pub/Sub",
        p,
        none,
        "writers[].autoscaling.lag_threshold is for KAFKA",
    )
    .await;
}

#[tokio::test]
async fn autoscaling_with_oauthbearer() {
    let mut p = autoscaled(json!({"max_replicas": 3}));
    p["kafka_sasl_mechanism"] = json!("OAUTHBEARER");
    p["kafka_oauthbearer"] = json!({"method": "AWS_MSK_IAM"});
    assert_refused(
        "OAUTHBEARER",
        p,
        none,
        "writers[].autoscaling is not supported with kafka_sasl_mechanism OAUTHBEARER",
    )
    .await;
}

#[tokio::test]
async fn good_autoscaling_block_is_accepted_unchanged() -> anyhow::Result<()> {
    let client = install_crd().await?;
    let bp = seed_resource(autoscaled(json!({"min_replicas": 0, "max_replicas": 5,
        "lag_threshold": 100, "activation_lag_threshold": 3,
        "polling_interval_seconds": 15, "cooldown_period_seconds": 60})))?;
    let api: Api<BackgroundPersistence> = Api::all(client);
    let created = api.create(&PostParams::default(), &bp).await?;
    assert_eq!(created.spec, bp.spec, "stored as written (no defaulting)");
    api.delete(
        &bp.metadata.name.clone().unwrap_or_default(),
        &Default::default(),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn kafka_args_the_writer_owns_are_refused_naming_the_key() {
    let p = json!({"additional_kafka_args": {"compression.type": "zstd", "enable.auto.commit": "true"}});
    assert_refused(
        "owned key, resource-wide",
        p,
        none,
        "spec.additional_kafka_args: Forbidden: enable.auto.commit is set by the writer",
    )
    .await;
    let p = json!({"writers": [{"name": "w", "bus_subscriber_type": "ONLINE_WRITER",
        "additional_kafka_args": {"sasl.jaas.config": "org.apache...;"}}]});
    assert_refused(
        "Java-only key, per writer",
        p,
        none,
        "spec.writers[0].additional_kafka_args: Forbidden: sasl.jaas.config is not a librdkafka property",
    )
    .await;
    let p = json!({"additional_kafka_args": {"auto.offset.reset": "newest"}});
    assert_refused(
        "unknown start",
        p,
        none,
        "auto.offset.reset must be one of earliest",
    )
    .await;
    let p = json!({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"});
    assert_refused(
        "GSSAPI is not built in",
        p,
        none,
        "spec.kafka_sasl_mechanism: Unsupported value: \"GSSAPI\"",
    )
    .await;
}

#[tokio::test]
async fn oauthbearer_needs_its_token_source() {
    let p = json!({"kafka_sasl_mechanism": "OAUTHBEARER"});
    assert_refused(
        "OAUTHBEARER without a source",
        p,
        none,
        "kafka_sasl_mechanism OAUTHBEARER and kafka_oauthbearer go together",
    )
    .await;
    let p = json!({"kafka_oauthbearer": {"method": "AWS_MSK_IAM"}});
    assert_refused(
        "a source without OAUTHBEARER",
        p,
        none,
        "kafka_sasl_mechanism OAUTHBEARER and kafka_oauthbearer go together",
    )
    .await;
    let p = json!({"kafka_sasl_mechanism": "OAUTHBEARER",
        "kafka_oauthbearer": {"method": "OIDC", "client_id": "writers"}});
    assert_refused(
        "OIDC without its endpoint",
        p,
        none,
        "kafka_oauthbearer.method OIDC needs token_endpoint_url and client_id",
    )
    .await;
    let p = json!({"kafka_sasl_mechanism": "OAUTHBEARER", "kafka_sasl_secret": null,
        "kafka_oauthbearer": {"method": "OIDC", "client_id": "writers",
            "token_endpoint_url": "https://login.example.com/oauth2/token"}});
    assert_refused(
        "OIDC without the client secret",
        p,
        none,
        "kafka_oauthbearer.method OIDC needs kafka_sasl_secret",
    )
    .await;
    let p = json!({"kafka_sasl_mechanism": "OAUTHBEARER",
        "kafka_oauthbearer": {"method": "OIDC", "client_id": "writers",
            "token_endpoint_url": "login.example.com/token"}});
    assert_refused(
        "a token URL that is not http(s)",
        p,
        none,
        "spec.kafka_oauthbearer.token_endpoint_url",
    )
    .await;
}

#[tokio::test]
async fn keystore_and_truststore_locations_need_tls_and_an_object_uri() {
    let p = json!({"kafka_security_protocol": "SASL_PLAINTEXT",
        "ssl_keystore_location": "s3://certs/kafka/client.p12"});
    assert_refused(
        "a keystore without TLS",
        p,
        none,
        "ssl_keystore_location and ssl_truststore_location need kafka_security_protocol SSL or SASL_SSL",
    )
    .await;
    let p = json!({"ssl_truststore_location": "/etc/ssl/ca.pem"});
    assert_refused("a local path", p, none, "spec.ssl_truststore_location").await;
    let mut p = autoscaled(json!({"max_replicas": 3}));
    p["ssl_keystore_location"] = json!("gs://certs/kafka/client.p12");
    assert_refused(
        "autoscaled with a keystore in object storage",
        p,
        none,
        "writers[].autoscaling is not supported with ssl_keystore_location",
    )
    .await;
}

#[tokio::test]
async fn oidc_and_msk_iam_token_sources_are_accepted() -> anyhow::Result<()> {
    let client = install_crd().await?;
    let api: Api<BackgroundPersistence> = Api::all(client);
    for patch in [
        json!({"kafka_sasl_mechanism": "OAUTHBEARER",
            "kafka_oauthbearer": {"method": "OIDC", "client_id": "writers", "scope": "kafka",
                "token_endpoint_url": "https://login.example.com/oauth2/token"}}),
        json!({"kafka_sasl_mechanism": "OAUTHBEARER", "kafka_sasl_secret": null,
            "kafka_oauthbearer": {"method": "AWS_MSK_IAM", "aws_region": "eu-west-1"}}),
        json!({"ssl_keystore_location": "s3://certs/kafka/client.p12",
            "ssl_truststore_location": "gs://certs/kafka/ca.pem"}),
    ] {
        let bp = seed_resource(patch)?;
        let created = api.create(&PostParams::default(), &bp).await?;
        assert_eq!(created.spec, bp.spec);
        api.delete(
            &bp.metadata.name.clone().unwrap_or_default(),
            &Default::default(),
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn kafka_args_prefixes_and_a_sasl_protocol_without_mechanism_are_accepted()
-> anyhow::Result<()> {
    let client = install_crd().await?;
    let bp = seed_resource(json!({
        "kafka_sasl_mechanism": null,
        "client_id_prefix": "team-a.",
        "group_id_prefix": "team-a.",
        "additional_kafka_args": {"compression.type": "zstd", "auto.offset.reset": "latest"},
    }))?;
    let api: Api<BackgroundPersistence> = Api::all(client);
    let created = api.create(&PostParams::default(), &bp).await?;
    assert_eq!(created.spec, bp.spec);
    api.delete(
        &bp.metadata.name.clone().unwrap_or_default(),
        &Default::default(),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn pod_settings_cannot_take_what_the_operator_sets() {
    let cases = [
        (
            json!({"common_persistence_specs": {"writer_pod": {"labels": {"bgpersist.dev/writer": "x"}}}}),
            "spec.common_persistence_specs.writer_pod.labels: Invalid value",
            "bgpersist.dev/ and app.kubernetes.io/ labels are set by the operator",
        ),
        (
            json!({"writers": [{"name": "w", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
                "pod": {"env": [{"name": "BGP_SUBSCRIPTION", "value": "other"}]}}]}),
            "spec.writers[0].pod.env",
            "BGP_* variables are rendered from the spec",
        ),
        (
            json!({"common_persistence_specs": {"writer_pod": {"volumes": [{"name": "tmp", "emptyDir": {}}]}}}),
            "spec.common_persistence_specs.writer_pod.volumes",
            "volume names tmp, kafka-sasl and stores are the operator's",
        ),
        (
            json!({"common_persistence_specs": {"writer_pod": {"volume_mounts": [{"name": "x", "mountPath": "/etc/bgpersist/kafka-sasl"}]}}}),
            "spec.common_persistence_specs.writer_pod.volume_mounts",
            "mount paths under /etc/bgpersist and /tmp are the operator's",
        ),
        (
            json!({"common_persistence_specs": {"writer_pod": {"log_level": "info; rm -rf"}}}),
            "spec.common_persistence_specs.writer_pod.log_level",
            "should match",
        ),
    ];
    for (patch, field, reason) in cases {
        assert_refused(field, patch.clone(), none, field).await;
        assert_refused(reason, patch, none, reason).await;
    }
}

#[tokio::test]
async fn what_can_never_work_is_refused_naming_the_field() {
    let p = json!({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_secret": null});
    assert_refused(
        "SASL without credentials: field",
        p.clone(),
        none,
        "spec.kafka_sasl_secret",
    )
    .await;
    assert_refused(
        "SASL without credentials: reason",
        p,
        none,
        "kafka_security_protocol SASL_PLAINTEXT or SASL_SSL needs kafka_sasl_secret",
    )
    .await;
    let p = json!({"writers": [{"name": "w", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
        "request": {"cpu": "-200m"}}]});
    assert_refused("a negative cpu request", p, none, "must not be negative").await;
    let p = json!({"writers": [{"name": "w", "bus_subscriber_type": "GO_METRICS_BUS_WRITER",
        "limit": {"memory": "0"}}]});
    assert_refused(
        "a zero memory limit",
        p,
        none,
        "writers[].limit: a cpu or memory limit of 0 can never run a pod",
    )
    .await;
}

#[tokio::test]
async fn network_policy_extra_egress_that_opens_everything() {
    let p = json!({"common_persistence_specs": {"network_policy": {"enabled": true, "extra_egress": [{}]}}});
    assert_refused(
        "egress rule without peers or ports",
        p,
        none,
        "network_policy.extra_egress",
    )
    .await;
}

#[tokio::test]
async fn network_policy_metrics_from_empty_peer() {
    let p = json!({"common_persistence_specs": {"network_policy": {"enabled": true, "metrics_from": [{}]}}});
    assert_refused(
        "metrics peer without selector",
        p,
        none,
        "network_policy.metrics_from",
    )
    .await;
}

#[tokio::test]
async fn malformed_image_references() {
    for (what, patch, field) in [
        (
            "a space in the Rust image",
            json!({"common_persistence_specs": {"bus_writer_image_rust": "acme/writer :1"}}),
            "bus_writer_image_rust",
        ),
        (
            "an empty tag on a writer's image",
            json!({"writers": [{"name": "w", "bus_subscriber_type": "ONLINE_WRITER", "image": "acme/writer:"}]}),
            "writers[0].image",
        ),
    ] {
        assert_refused(what, patch, none, field).await;
    }
}

//! The contract between the operator and the writer binary: the environment
//! variables and file paths the operator renders and the writer reads.

/// Writer type (`bus_subscriber_type`).
pub const ENV_WRITER_TYPE: &str = "BGP_WRITER_TYPE";
/// Writer name from the spec.
pub const ENV_WRITER_NAME: &str = "BGP_WRITER_NAME";
/// Name of the owning BackgroundPersistence.
pub const ENV_RESOURCE: &str = "BGP_RESOURCE";
/// "KAFKA" or "PUBSUB".
pub const ENV_BUS_BACKEND: &str = "BGP_BUS_BACKEND";
/// Subscription (Kafka: topic) the writer consumes.
pub const ENV_SUBSCRIPTION: &str = "BGP_SUBSCRIPTION";
/// Topic the writer publishes to, for writers that republish.
pub const ENV_PUBLISH_TOPIC: &str = "BGP_PUBLISH_TOPIC";
/// Dead-letter topic.
pub const ENV_DLQ_TOPIC: &str = "BGP_DLQ_TOPIC";
pub const ENV_KAFKA_BOOTSTRAP_SERVERS: &str = "BGP_KAFKA_BOOTSTRAP_SERVERS";
pub const ENV_KAFKA_SECURITY_PROTOCOL: &str = "BGP_KAFKA_SECURITY_PROTOCOL";
pub const ENV_KAFKA_SASL_MECHANISM: &str = "BGP_KAFKA_SASL_MECHANISM";
/// Consumer group: the writer's override, else `bgpersist.<resource>.<writer>`.
pub const ENV_KAFKA_CONSUMER_GROUP: &str = "BGP_KAFKA_CONSUMER_GROUP";
/// Extra librdkafka properties (`additional_kafka_args`, the resource's and
/// the writer's merged), as a JSON object of strings.
pub const ENV_KAFKA_ARGS: &str = "BGP_KAFKA_ARGS";
/// Prefix of the writer's Kafka client id (`client_id_prefix`).
pub const ENV_KAFKA_CLIENT_ID_PREFIX: &str = "BGP_KAFKA_CLIENT_ID_PREFIX";
/// OAUTHBEARER (`kafka_oauthbearer`): `OIDC` or `AWS_MSK_IAM`, and the
/// settings of each; the OIDC client secret is a file of the Kafka secret.
pub const ENV_KAFKA_OAUTH_METHOD: &str = "BGP_KAFKA_OAUTH_METHOD";
pub const ENV_KAFKA_OAUTH_TOKEN_URL: &str = "BGP_KAFKA_OAUTH_TOKEN_URL";
pub const ENV_KAFKA_OAUTH_CLIENT_ID: &str = "BGP_KAFKA_OAUTH_CLIENT_ID";
pub const ENV_KAFKA_OAUTH_SCOPE: &str = "BGP_KAFKA_OAUTH_SCOPE";
pub const ENV_KAFKA_OAUTH_AWS_REGION: &str = "BGP_KAFKA_OAUTH_AWS_REGION";
/// `ssl_keystore_location` / `ssl_truststore_location`: a PKCS#12 keystore
/// and a PEM CA bundle named by `s3://` or `gs://` URI, fetched at start.
pub const ENV_KAFKA_SSL_KEYSTORE_LOCATION: &str = "BGP_KAFKA_SSL_KEYSTORE_LOCATION";
pub const ENV_KAFKA_SSL_TRUSTSTORE_LOCATION: &str = "BGP_KAFKA_SSL_TRUSTSTORE_LOCATION";
/// Directory holding the Kafka SASL credential files (`username`, `password`).
pub const ENV_KAFKA_SASL_DIR: &str = "BGP_KAFKA_SASL_DIR";
pub const ENV_REDIS_IS_CLUSTERED: &str = "BGP_REDIS_IS_CLUSTERED";
pub const ENV_API_SERVER_HOST: &str = "BGP_API_SERVER_HOST";
pub const ENV_UPLOAD_BUCKET: &str = "BGP_UPLOAD_BUCKET";
pub const ENV_METADATA_PROVIDER: &str = "BGP_METADATA_PROVIDER";
pub const ENV_SNOWFLAKE_STORAGE_INTEGRATION: &str = "BGP_SNOWFLAKE_STORAGE_INTEGRATION";
pub const ENV_MAX_BATCH_SIZE: &str = "BGP_MAX_BATCH_SIZE";
pub const ENV_BATCH_GROWTH: &str = "BGP_BATCH_GROWTH";
pub const ENV_MAX_BATCH_BYTES: &str = "BGP_MAX_BATCH_BYTES";
pub const ENV_CONCURRENCY: &str = "BGP_MESSAGE_PROCESSING_CONCURRENCY";
pub const ENV_QUERY_TABLE_WRITE_DROP_RATIO: &str = "BGP_QUERY_TABLE_WRITE_DROP_RATIO";
pub const ENV_SKIP_FEATURE_METRICS: &str = "BGP_SKIP_FEATURE_METRICS";
/// "true": METRICS_WRITER publishes in Kafka transactions (exactly-once).
pub const ENV_PUBLISH_EXACTLY_ONCE: &str = "BGP_PUBLISH_EXACTLY_ONCE";
pub const ENV_STORAGE_CACHE_PREFIX: &str = "BGP_STORAGE_CACHE_PREFIX";
pub const ENV_OFFLINE_STORE_DB_TYPE: &str = "BGP_OFFLINE_STORE_DB_TYPE";
pub const ENV_USAGE_STORE_URI: &str = "BGP_USAGE_STORE_URI";
/// Address the writer serves /metrics, /healthz and /readyz on.
pub const ENV_HTTP_ADDR: &str = "BGP_HTTP_ADDR";

/// Port of the writer's metrics and health endpoints.
pub const WRITER_HTTP_PORT: i32 = 9090;
/// Where the Kafka SASL secret is mounted.
pub const KAFKA_SASL_MOUNT: &str = "/etc/bgpersist/kafka-sasl";
/// File names, under `KAFKA_SASL_MOUNT`, of the Kafka SASL credentials.
pub const KAFKA_SASL_USERNAME_FILE: &str = "username";
pub const KAFKA_SASL_PASSWORD_FILE: &str = "password";
/// TLS material beside them, all optional, as PEM: the CA bundle that signs
/// the brokers' certificates, and a client certificate and key for mTLS.
pub const KAFKA_CA_FILE: &str = "ca.pem";
pub const KAFKA_CERT_FILE: &str = "cert.pem";
pub const KAFKA_KEY_FILE: &str = "key.pem";
/// The client key's password, when the key is encrypted.
pub const KAFKA_KEY_PASSWORD_FILE: &str = "key_password";
/// The OIDC client secret, for OAUTHBEARER.
pub const KAFKA_CLIENT_SECRET_FILE: &str = "client_secret";
/// The password of the keystore at `ssl_keystore_location`.
pub const KAFKA_KEYSTORE_PASSWORD_FILE: &str = "keystore_password";
/// Every file the Kafka secret may hold, in the order written.
pub const KAFKA_SECRET_FILES: [&str; 8] = [
    KAFKA_SASL_USERNAME_FILE,
    KAFKA_SASL_PASSWORD_FILE,
    KAFKA_CA_FILE,
    KAFKA_CERT_FILE,
    KAFKA_KEY_FILE,
    KAFKA_KEY_PASSWORD_FILE,
    KAFKA_CLIENT_SECRET_FILE,
    KAFKA_KEYSTORE_PASSWORD_FILE,
];
/// Files that only work together: a value with one and not the other is unusable.
pub const KAFKA_SECRET_PAIRS: [(&str, &str); 2] = [
    (KAFKA_SASL_USERNAME_FILE, KAFKA_SASL_PASSWORD_FILE),
    (KAFKA_CERT_FILE, KAFKA_KEY_FILE),
];

/// Where a writer's store connection URI is mounted, when the spec names a
/// cloud secret for its store (`store_uri_secrets`). Only the writer's own
/// store's file is present.
pub const STORES_MOUNT: &str = "/etc/bgpersist/stores";
/// Full path of the writer's store URI file (under `STORES_MOUNT`), when mounted.
pub const ENV_STORE_URI_FILE: &str = "BGP_STORE_URI_FILE";
/// File names under `STORES_MOUNT`, one per store.
pub const ONLINE_STORE_URI_FILE: &str = "online_store_uri";
pub const OFFLINE_STORE_URI_FILE: &str = "offline_store_uri";
pub const METRICS_STORE_URI_FILE: &str = "metrics_store_uri";
pub const USAGE_STORE_URI_FILE: &str = "usage_store_uri";
pub const VECTOR_STORE_URI_FILE: &str = "vector_store_uri";

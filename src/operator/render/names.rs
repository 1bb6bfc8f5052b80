//! Names of rendered objects, derived from the resource and writer names. A
//! leaf module: every renderer may use it, it uses none of them.

/// A writer's Deployment; its PDB, ScaledObject and TriggerAuthentication
/// share the name.
pub fn deployment_name(resource: &str, writer: &str) -> String {
    format!("{resource}-{writer}")
}

/// Name of the Secret holding the Kafka SASL credentials, synced from the cloud secret.
pub fn kafka_sasl_secret_name(resource: &str) -> String {
    format!("{resource}-kafka-sasl")
}

/// Name of the Secret holding the store connection URIs.
pub fn stores_secret_name(resource: &str) -> String {
    format!("{resource}-stores")
}

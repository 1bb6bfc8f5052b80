//! `additional_kafka_args` (seed 000): librdkafka properties a user adds,
//! resource-wide and per writer (the writer's win). Keys the writer must own
//! are refused, at admission (one CEL rule per key, so the message names it)
//! and again by the operator's validation; Java-client spellings librdkafka
//! would reject are refused with what to use instead, or translated where
//! librdkafka has the same setting under another value. See docs/kafka.md.

use std::collections::BTreeMap;

/// Keys the writer sets itself, and why a user may not.
pub const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set from kafka_bootstrap_servers"),
    (
        "group.id",
        "the writer's consumer group (kafka_consumer_group_override, group_id_prefix)",
    ),
    (
        "client.id",
        "set from client_id_prefix and the writer's name",
    ),
    (
        "enable.auto.commit",
        "the writer commits only offsets of messages it wrote",
    ),
    (
        "enable.auto.offset.store",
        "the writer commits only offsets of messages it wrote",
    ),
    ("security.protocol", "set from kafka_security_protocol"),
    ("sasl.mechanism", "set from kafka_sasl_mechanism"),
    ("sasl.mechanisms", "set from kafka_sasl_mechanism"),
    ("sasl.username", "read from kafka_sasl_secret"),
    ("sasl.password", "read from kafka_sasl_secret"),
    ("transactional.id", "set by metrics_exactly_once"),
    (
        "isolation.level",
        "set by metrics_exactly_once (read_committed)",
    ),
    (
        "enable.idempotence",
        "the dead-letter producer is always idempotent",
    ),
    ("acks", "dead letters are always written with acks=all"),
    (
        "statistics.interval.ms",
        "the writer reads its consumer lag from statistics",
    ),
];

/// Java-client settings librdkafka has no equivalent for, and what to use.
pub const JAVA_ONLY: &[(&str, &str)] = &[
    (
        "sasl.jaas.config",
        "a Java client setting: put the credentials in kafka_sasl_secret",
    ),
    (
        "ssl.truststore.location",
        "a Java (JKS) setting: librdkafka reads a PEM CA bundle (ssl.ca.location)",
    ),
    (
        "ssl.truststore.password",
        "a Java (JKS) setting: librdkafka reads a PEM CA bundle (ssl.ca.location)",
    ),
    (
        "ssl.truststore.type",
        "a Java (JKS) setting: librdkafka reads a PEM CA bundle (ssl.ca.location)",
    ),
    (
        "ssl.keystore.type",
        "librdkafka reads PKCS#12 keystores only (ssl.keystore.location)",
    ),
    (
        "key.deserializer",
        "a Java client setting: the writers read the bus's own format",
    ),
    (
        "value.deserializer",
        "a Java client setting: the writers read the bus's own format",
    ),
    (
        "key.serializer",
        "a Java client setting: the writers write the bus's own format",
    ),
    (
        "value.serializer",
        "a Java client setting: the writers write the bus's own format",
    ),
    (
        "max.poll.records",
        "a Java client setting: the writer's batch size is max_batch_size",
    ),
];

/// `auto.offset.reset` values librdkafka takes; the start of a new group.
pub const OFFSET_RESETS: &[&str] = &[
    "earliest",
    "smallest",
    "beginning",
    "latest",
    "largest",
    "end",
];

/// Why `key` may not be set, or None when it may.
pub fn refusal(key: &str) -> Option<String> {
    let key = key.trim();
    if let Some((_, why)) = OWNED.iter().find(|(k, _)| *k == key) {
        return Some(format!("{key} is set by the writer: {why}"));
    }
    JAVA_ONLY
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, why)| format!("{key} is not a librdkafka property: {why}"))
}

/// Why `value` is refused for `key` (only values the operator understands
/// are checked; librdkafka reports the rest when the writer starts).
pub fn value_refusal(key: &str, value: &str) -> Option<String> {
    (key == "auto.offset.reset" && !OFFSET_RESETS.contains(&value.trim())).then(|| {
        format!(
            "auto.offset.reset {value:?} is not one of {}",
            OFFSET_RESETS.join(", ")
        )
    })
}

/// The Java class names of the built-in assignors, as librdkafka names them.
const ASSIGNORS: &[(&str, &str)] = &[
    ("org.apache.kafka.clients.consumer.RangeAssignor", "range"),
    (
        "org.apache.kafka.clients.consumer.RoundRobinAssignor",
        "roundrobin",
    ),
    (
        "org.apache.kafka.clients.consumer.CooperativeStickyAssignor",
        "cooperative-sticky",
    ),
];

/// A Java spelling librdkafka has under another value; other pairs unchanged.
pub fn translate(key: &str, value: &str) -> String {
    match key {
        "partition.assignment.strategy" => value
            .split(',')
            .map(str::trim)
            .map(|v| {
                ASSIGNORS
                    .iter()
                    .find(|(java, _)| *java == v)
                    .map_or(v, |(_, ours)| ours)
            })
            .collect::<Vec<_>>()
            .join(","),
        // The Java client turns hostname verification off with an empty value.
        "ssl.endpoint.identification.algorithm" if value.trim().is_empty() => "none".into(),
        _ => value.to_string(),
    }
}

/// The properties one writer gets: the resource's, then the writer's (which
/// win), translated.
pub fn merged(
    resource: Option<&BTreeMap<String, String>>,
    writer: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    resource
        .into_iter()
        .chain(writer)
        .flatten()
        .map(|(k, v)| (k.trim().to_string(), translate(k.trim(), v)))
        .collect()
}

/// Where a new consumer group starts, as KEDA's `offsetResetPolicy` names it.
pub fn start_offset(args: &BTreeMap<String, String>) -> &'static str {
    match args.get("auto.offset.reset").map(|v| v.trim()) {
        Some("latest" | "largest" | "end") => "latest",
        _ => "earliest",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn owned_and_java_keys_are_refused_with_the_key_named() {
        let why = refusal("group.id").unwrap_or_default();
        assert!(why.starts_with("group.id is set by the writer"), "{why}");
        let why = refusal("sasl.jaas.config").unwrap_or_default();
        assert!(why.contains("kafka_sasl_secret"), "{why}");
        assert_eq!(refusal("compression.type"), None);
        assert_eq!(refusal("fetch.max.bytes"), None);
        assert!(value_refusal("auto.offset.reset", "newest").is_some());
        assert_eq!(value_refusal("auto.offset.reset", "latest"), None);
    }

    #[test]
    fn docs_name_every_refused_key() {
        let doc = include_str!("../../docs/kafka.md");
        for (key, _) in OWNED.iter().chain(JAVA_ONLY) {
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/kafka.md does not name {key}"
            );
        }
    }

    #[test]
    fn java_spellings_are_translated_and_the_writer_wins() {
        let m = merged(
            Some(&map(&[
                (
                    "partition.assignment.strategy",
                    "org.apache.kafka.clients.consumer.CooperativeStickyAssignor",
                ),
                ("fetch.min.bytes", "1"),
            ])),
            Some(&map(&[
                ("fetch.min.bytes", "1024"),
                ("ssl.endpoint.identification.algorithm", ""),
            ])),
        );
        assert_eq!(
            m,
            map(&[
                ("fetch.min.bytes", "1024"),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("ssl.endpoint.identification.algorithm", "none"),
            ])
        );
        assert_eq!(start_offset(&m), "earliest");
        assert_eq!(
            start_offset(&map(&[("auto.offset.reset", "largest")])),
            "latest"
        );
    }
}

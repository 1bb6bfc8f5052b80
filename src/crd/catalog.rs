//! The writer catalog: one row per `bus_subscriber_type`, naming the image it
//! runs, the bus IDs it needs and the store it writes. Admission rules,
//! validation and rendering all read this one table.

use serde::{Deserialize, Serialize};

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WriterType {
    OnlineWriter,
    MetricsWriter,
    MetricsBusWriter,
    OfflineWriter,
    OfflineStoreBulkInsertWriter,
    OfflineStoreStreamingInsertWriter,
    UsageBusWriter,
    QueryMirrorConsumer,
    OnlineVectorStoreWriter,
    GoMetricsBusWriter,
    GoResultBusMetricsWriter,
}

/// Which of the common images runs a writer type by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageField {
    Go,
    Python,
    Bswl,
}

/// Where a writer type writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreKind {
    OnlineStore,
    MetricsBus,
    MetricsStore,
    OfflineStore,
    UsageStore,
    QueryMirror,
    VectorStore,
}

/// A spec field a writer type may require.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusField {
    ResultBusOnlineStoreSubscriptionId,
    ResultBusMetricsSubscriptionId,
    ResultBusOfflineStoreSubscriptionId,
    MetricsBusSubscriptionId,
    MetricsBusTopicId,
    BigqueryParquetUploadSubscriptionId,
    BigqueryStreamingWriteSubscriptionId,
    BigqueryUploadBucket,
    OperationSubscriptionId,
    UsageBusSubscriptionId,
    VectorBusSubscriptionId,
    ApiServerHost,
}

/// One catalog row.
#[derive(Clone, Copy, Debug)]
pub struct WriterKind {
    pub writer_type: WriterType,
    pub image: ImageField,
    /// The subscription (Kafka: topic) it consumes.
    pub consumes: BusField,
    /// Further fields it cannot run without (a topic it publishes to, a bucket, a host).
    pub also_requires: &'static [BusField],
    pub store: StoreKind,
}

use BusField as F;
use WriterType as T;

pub const CATALOG: &[WriterKind] = &[
    row(
        T::OnlineWriter,
        ImageField::Python,
        F::ResultBusOnlineStoreSubscriptionId,
        &[],
        StoreKind::OnlineStore,
    ),
    row(
        T::MetricsWriter,
        ImageField::Python,
        F::ResultBusMetricsSubscriptionId,
        &[F::MetricsBusTopicId],
        StoreKind::MetricsBus,
    ),
    row(
        T::MetricsBusWriter,
        ImageField::Python,
        F::MetricsBusSubscriptionId,
        &[],
        StoreKind::MetricsStore,
    ),
    row(
        T::OfflineWriter,
        ImageField::Python,
        F::ResultBusOfflineStoreSubscriptionId,
        &[],
        StoreKind::OfflineStore,
    ),
    row(
        T::OfflineStoreBulkInsertWriter,
        ImageField::Python,
        F::BigqueryParquetUploadSubscriptionId,
        &[F::BigqueryUploadBucket],
        StoreKind::OfflineStore,
    ),
    row(
        T::OfflineStoreStreamingInsertWriter,
        ImageField::Bswl,
        F::BigqueryStreamingWriteSubscriptionId,
        &[],
        StoreKind::OfflineStore,
    ),
    row(
        T::UsageBusWriter,
        ImageField::Python,
        F::UsageBusSubscriptionId,
        &[],
        StoreKind::UsageStore,
    ),
    row(
        T::QueryMirrorConsumer,
        ImageField::Python,
        F::OperationSubscriptionId,
        &[F::ApiServerHost],
        StoreKind::QueryMirror,
    ),
    row(
        T::OnlineVectorStoreWriter,
        ImageField::Python,
        F::VectorBusSubscriptionId,
        &[],
        StoreKind::VectorStore,
    ),
    row(
        T::GoMetricsBusWriter,
        ImageField::Go,
        F::MetricsBusSubscriptionId,
        &[],
        StoreKind::MetricsStore,
    ),
    row(
        T::GoResultBusMetricsWriter,
        ImageField::Go,
        F::ResultBusMetricsSubscriptionId,
        &[F::MetricsBusTopicId],
        StoreKind::MetricsBus,
    ),
];

const fn row(
    writer_type: WriterType,
    image: ImageField,
    consumes: BusField,
    also_requires: &'static [BusField],
    store: StoreKind,
) -> WriterKind {
    WriterKind {
        writer_type,
        image,
        consumes,
        also_requires,
        store,
    }
}

impl WriterType {
    pub const ALL: [WriterType; 11] = [
        T::OnlineWriter,
        T::MetricsWriter,
        T::MetricsBusWriter,
        T::OfflineWriter,
        T::OfflineStoreBulkInsertWriter,
        T::OfflineStoreStreamingInsertWriter,
        T::UsageBusWriter,
        T::QueryMirrorConsumer,
        T::OnlineVectorStoreWriter,
        T::GoMetricsBusWriter,
        T::GoResultBusMetricsWriter,
    ];

    /// This type's catalog row.
    pub fn kind(self) -> &'static WriterKind {
        // Every variant has exactly one row; the catalog test proves it.
        CATALOG
            .iter()
            .find(|k| k.writer_type == self)
            .unwrap_or(&CATALOG[0])
    }

    /// The wire name, as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            T::OnlineWriter => "ONLINE_WRITER",
            T::MetricsWriter => "METRICS_WRITER",
            T::MetricsBusWriter => "METRICS_BUS_WRITER",
            T::OfflineWriter => "OFFLINE_WRITER",
            T::OfflineStoreBulkInsertWriter => "OFFLINE_STORE_BULK_INSERT_WRITER",
            T::OfflineStoreStreamingInsertWriter => "OFFLINE_STORE_STREAMING_INSERT_WRITER",
            T::UsageBusWriter => "USAGE_BUS_WRITER",
            T::QueryMirrorConsumer => "QUERY_MIRROR_CONSUMER",
            T::OnlineVectorStoreWriter => "ONLINE_VECTOR_STORE_WRITER",
            T::GoMetricsBusWriter => "GO_METRICS_BUS_WRITER",
            T::GoResultBusMetricsWriter => "GO_RESULT_BUS_METRICS_WRITER",
        }
    }
}

impl std::fmt::Display for WriterType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StoreKind {
    /// The stores reached through a connection URI (`store_uri_secrets`); the
    /// others are a bus topic or the API server.
    pub const WITH_URI: [StoreKind; 5] = [
        StoreKind::OnlineStore,
        StoreKind::OfflineStore,
        StoreKind::MetricsStore,
        StoreKind::UsageStore,
        StoreKind::VectorStore,
    ];

    /// The `store_uri_secrets` key naming this store's URI secret.
    pub fn uri_secret_key(self) -> Option<&'static str> {
        match self {
            StoreKind::OnlineStore => Some("online_store"),
            StoreKind::OfflineStore => Some("offline_store"),
            StoreKind::MetricsStore => Some("metrics_store"),
            StoreKind::UsageStore => Some("usage_store"),
            StoreKind::VectorStore => Some("vector_store"),
            StoreKind::MetricsBus | StoreKind::QueryMirror => None,
        }
    }
}

impl BusField {
    /// Path of the field under `spec`, as users write it.
    pub fn path(self) -> &'static str {
        match self {
            F::ResultBusOnlineStoreSubscriptionId => {
                "common_persistence_specs.result_bus_online_store_subscription_id"
            }
            F::ResultBusMetricsSubscriptionId => {
                "common_persistence_specs.result_bus_metrics_subscription_id"
            }
            F::ResultBusOfflineStoreSubscriptionId => {
                "common_persistence_specs.result_bus_offline_store_subscription_id"
            }
            F::MetricsBusSubscriptionId => "common_persistence_specs.metrics_bus_subscription_id",
            F::MetricsBusTopicId => "common_persistence_specs.metrics_bus_topic_id",
            F::BigqueryParquetUploadSubscriptionId => {
                "common_persistence_specs.bigquery_parquet_upload_subscription_id"
            }
            F::BigqueryStreamingWriteSubscriptionId => {
                "common_persistence_specs.bigquery_streaming_write_subscription_id"
            }
            F::BigqueryUploadBucket => "common_persistence_specs.bigquery_upload_bucket",
            F::OperationSubscriptionId => "common_persistence_specs.operation_subscription_id",
            F::UsageBusSubscriptionId => "common_persistence_specs.usage_bus_subscription_id",
            F::VectorBusSubscriptionId => "common_persistence_specs.vector_bus_subscription_id",
            F::ApiServerHost => "api_server_host",
        }
    }

    /// Every field some writer type requires.
    pub fn all_required() -> Vec<BusField> {
        let mut out: Vec<BusField> = Vec::new();
        for k in CATALOG {
            for f in std::iter::once(&k.consumes).chain(k.also_requires) {
                if !out.contains(f) {
                    out.push(*f);
                }
            }
        }
        out
    }

    /// The writer types that require this field.
    pub fn required_by(self) -> Vec<WriterType> {
        CATALOG
            .iter()
            .filter(|k| k.consumes == self || k.also_requires.contains(&self))
            .map(|k| k.writer_type)
            .collect()
    }
}

impl ImageField {
    pub fn path(self) -> &'static str {
        match self {
            ImageField::Go => "common_persistence_specs.bus_writer_image_go",
            ImageField::Python => "common_persistence_specs.bus_writer_image_python",
            ImageField::Bswl => "common_persistence_specs.bus_writer_image_bswl",
        }
    }

    pub fn used_by(self) -> Vec<WriterType> {
        CATALOG
            .iter()
            .filter(|k| k.image == self)
            .map(|k| k.writer_type)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_exactly_one_row() {
        for t in WriterType::ALL {
            assert_eq!(
                CATALOG.iter().filter(|k| k.writer_type == t).count(),
                1,
                "{t}"
            );
            assert_eq!(t.kind().writer_type, t);
        }
        assert_eq!(CATALOG.len(), WriterType::ALL.len());
    }

    #[test]
    fn wire_names_match_serde() {
        for t in WriterType::ALL {
            assert_eq!(
                serde_json::to_value(t).ok(),
                Some(serde_json::Value::String(t.as_str().into()))
            );
        }
    }
}

//! Which module runs each writer type: one folder per `bus_subscriber_type`
//! (the catalog's row, `crd/catalog.rs`), and [`run`], the one table from
//! `BGP_WRITER_TYPE` to the sink it opens. Every sink then takes the same
//! path (`runtime::start`). The binary only wires signals and HTTP.

pub mod metrics_bus_writer;
pub mod metrics_writer;
pub mod offline_store_bulk_insert_writer;
pub mod offline_store_streaming_insert_writer;
pub mod offline_writer;
pub mod online_vector_store_writer;
pub mod online_writer;
pub mod query_mirror_consumer;
pub mod usage_bus_writer;

use crate::crd::WriterType;
use crate::writer::config::WriterConfig;
use crate::writer::error::WriterError;
use crate::writer::runtime::start::{Wiring, on_bus};
use crate::writer::stores::offline::sink::Decoder;
use crate::writer::stores::offline::{OfflineSink, Store, open_store};
use metrics_bus_writer::MetricsStoreSink;
use metrics_writer::FeatureMetricsSink;
use metrics_writer::exactly_once::{self, ExactlyOnce};
use offline_store_bulk_insert_writer::BulkDecoder;
use offline_store_streaming_insert_writer::StreamingDecoder;
use offline_writer::ResultDecoder;
use online_vector_store_writer::VectorSink;
use online_writer::OnlineSink;
use query_mirror_consumer::{MirrorMetrics, MirrorSink};
use usage_bus_writer::UsageSink;

/// Opens the configured writer type's sink and runs it until `wiring.stop`
/// (or a failure); `wiring.ready` turns true once the bus has answered.
pub async fn run(
    wiring: Wiring<'_>,
    mirror_metrics: Option<MirrorMetrics>,
) -> Result<(), WriterError> {
    let cfg = wiring.cfg;
    match cfg.writer_type {
        WriterType::OnlineWriter => {
            let uri = cfg
                .store_uri("online_store")
                .map_err(|e| WriterError::config("online store", e))?;
            let sink = OnlineSink::open(&uri, cfg)
                .await
                .map_err(WriterError::Config)?;
            on_bus(sink, wiring).await
        }
        WriterType::OfflineWriter => {
            let sink = offline_sink(cfg, ResultDecoder).await?;
            on_bus(sink, wiring).await
        }
        WriterType::OfflineStoreStreamingInsertWriter => {
            let sink = offline_sink(cfg, StreamingDecoder).await?;
            on_bus(sink, wiring).await
        }
        WriterType::OfflineStoreBulkInsertWriter => {
            let decoder = BulkDecoder::new(cfg.upload_bucket.as_deref());
            let sink = offline_sink(cfg, decoder).await?;
            on_bus(sink, wiring).await
        }
        WriterType::MetricsWriter | WriterType::GoResultBusMetricsWriter
            if exactly_once::requested(cfg.publish_exactly_once.as_deref())
                .map_err(|e| WriterError::Config(e.to_string()))? =>
        {
            let writer = ExactlyOnce::connect(cfg, wiring.metrics)
                .map_err(|e| WriterError::Config(e.to_string()))?;
            wiring.ready.set_ready(true);
            writer
                .run(wiring.stop)
                .await
                .map_err(|e| WriterError::Runtime(e.to_string()))
        }
        WriterType::MetricsWriter | WriterType::GoResultBusMetricsWriter => {
            let sink = FeatureMetricsSink::open(cfg)
                .await
                .map_err(|e| WriterError::Config(e.to_string()))?;
            on_bus(sink, wiring).await
        }
        WriterType::MetricsBusWriter | WriterType::GoMetricsBusWriter => {
            let uri = cfg
                .store_uri("metrics_store")
                .map_err(|e| WriterError::config("metrics store", e))?;
            let sink = MetricsStoreSink::open(&uri)
                .map_err(|e| WriterError::config("metrics store", e))?;
            on_bus(sink, wiring).await
        }
        WriterType::UsageBusWriter => {
            let uri = cfg
                .store_uri("usage_store")
                .map_err(|e| WriterError::config("usage store", e))?;
            let sink = UsageSink::open(&uri).map_err(|e| WriterError::config("usage store", e))?;
            on_bus(sink, wiring).await
        }
        WriterType::QueryMirrorConsumer => {
            let Some(settings) = cfg.mirror.clone() else {
                return Err(WriterError::Config("query mirror: no settings".into()));
            };
            let cfg = settings.bounded(cfg);
            let sink = MirrorSink::new(settings, mirror_metrics.unwrap_or_default())
                .map_err(|e| WriterError::config("query mirror", e))?;
            on_bus(
                sink,
                Wiring {
                    cfg: &cfg,
                    ..wiring
                },
            )
            .await
        }
        WriterType::OnlineVectorStoreWriter => {
            let uri = cfg
                .store_uri("vector_store")
                .map_err(|e| WriterError::config("vector store", e))?;
            let sink =
                VectorSink::open(&uri, cfg).map_err(|e| WriterError::Config(e.to_string()))?;
            on_bus(sink, wiring).await
        }
    }
}

/// The offline store of `cfg` behind `decoder` (one of the three offline
/// writer types' message formats).
async fn offline_sink<D: Decoder>(
    cfg: &WriterConfig,
    decoder: D,
) -> Result<OfflineSink<D, Store>, WriterError> {
    let store = open_store(cfg)
        .await
        .map_err(|e| WriterError::Config(e.to_string()))?;
    Ok(OfflineSink::new(
        decoder,
        store,
        cfg.query_table_write_drop_ratio,
    ))
}

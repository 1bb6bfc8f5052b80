//! The resolved model: what validation decided about each accepted writer,
//! computed once. Render reads it (and the spec's plain fields through
//! `spec`) and resolves nothing again: the image, the replicas, the object
//! names, the consumer group and the secret slots a writer mounts.

use crate::crd::{BackgroundPersistence, ImageField, StoreKind, WriterSpec, kafka_args};
use crate::operator::render::deployment_name;
use crate::operator::render::secret::{self, Slot};
use std::collections::BTreeMap;

/// A writer validation accepted.
#[derive(Clone, Debug)]
pub struct ResolvedWriter<'a> {
    pub spec: &'a WriterSpec,
    /// `<resource>-<writer>`: its Deployment, PodDisruptionBudget and
    /// ScaledObject.
    pub object_name: String,
    pub image: String,
    /// The replicas the operator sets; for an autoscaled writer, the count
    /// its Deployment is created with before the autoscaler takes over.
    pub replicas: i32,
    /// The Kafka consumer group it joins.
    pub consumer_group: String,
    /// Its librdkafka properties: the resource's `additional_kafka_args`,
    /// then its own, translated (`crd::kafka_args`).
    pub kafka_args: BTreeMap<String, String>,
    /// Whether it mounts the Kafka SASL Secret.
    pub kafka_sasl: bool,
    /// The store it writes, and the URI file it mounts for it when the spec
    /// names a secret for that store.
    pub store: StoreKind,
    pub store_file: Option<&'static str>,
    /// The OTLP endpoint its traces go to unless its pod env names one
    /// (`Defaults::otlp_endpoint`; docs/tracing.md).
    pub otlp_endpoint: Option<String>,
}

impl ResolvedWriter<'_> {
    /// The synced-secret slots it mounts: a rotation of one of them rolls it.
    pub fn slots(&self) -> Vec<Slot> {
        let mut out = Vec::new();
        if self.kafka_sasl {
            out.push(Slot::KafkaSasl);
        }
        if self.store_file.is_some() {
            out.push(Slot::StoreUri(self.store));
        }
        out
    }
}

/// What the operator itself brings to every resource.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    /// The operator's own image (`BGP_WRITER_IMAGE`, set by the chart): it
    /// holds `bgpersist-writer`, which runs every writer type.
    pub writer_image: Option<String>,
    /// The operator's own OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, set
    /// by the chart's `tracing.otlpEndpoint`): its writers export there too,
    /// unless a resource's pod env sets the variable itself.
    pub otlp_endpoint: Option<String>,
}

/// The operator's environment variable naming its own image.
pub const ENV_WRITER_IMAGE: &str = "BGP_WRITER_IMAGE";
/// The standard OpenTelemetry variable naming the OTLP endpoint.
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

impl Defaults {
    pub fn from_env() -> Self {
        let var = |k| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
        Defaults {
            writer_image: var(ENV_WRITER_IMAGE),
            otlp_endpoint: var(ENV_OTLP_ENDPOINT),
        }
    }
}

/// Where a writer's image came from, so a refusal names that field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// `writers[].image`.
    Writer,
    /// `common_persistence_specs.bus_writer_image_rust`.
    Rust,
    /// The operator's own image (`BGP_WRITER_IMAGE`).
    Operator,
    /// The image field the writer's type names in the catalog.
    Common(ImageField),
}

impl ImageSource {
    /// The field to name in a refusal of writer `index`.
    pub fn field(self, index: usize) -> String {
        match self {
            ImageSource::Writer => format!("writers[{index}].image"),
            ImageSource::Rust => "common_persistence_specs.bus_writer_image_rust".into(),
            ImageSource::Operator => format!("{ENV_WRITER_IMAGE} (the operator's own image)"),
            ImageSource::Common(field) => field.path().into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "writer {writer}: no image (set common_persistence_specs.bus_writer_image_rust, {field} or the writer's image, or install the operator with its chart, which hands it its own image)"
    )]
    Missing { writer: String, field: &'static str },
    #[error(
        "writer {writer}: {image:?} is not an image reference ([registry/]repository[:tag][@digest]): {reason}"
    )]
    Invalid {
        writer: String,
        from: ImageSource,
        image: String,
        reason: String,
    },
}

impl ImageError {
    /// The field to name in a refusal of writer `index`.
    pub fn field(&self, index: usize) -> String {
        match self {
            ImageError::Missing { .. } => format!("writers[{index}].image"),
            ImageError::Invalid { from, .. } => from.field(index),
        }
    }
}

/// Resolves `w` of resource `resource`; fails only on its image.
pub fn resolve<'a>(
    bp: &BackgroundPersistence,
    resource: &str,
    w: &'a WriterSpec,
    defaults: &Defaults,
) -> Result<ResolvedWriter<'a>, ImageError> {
    let store = w.bus_subscriber_type.kind().store;
    Ok(ResolvedWriter {
        spec: w,
        object_name: deployment_name(resource, &w.name),
        image: resolve_image(bp, w, defaults)?,
        replicas: replicas(w),
        consumer_group: consumer_group(bp, resource, w),
        kafka_args: kafka_args::merged(
            bp.spec.additional_kafka_args.as_ref(),
            w.additional_kafka_args.as_ref(),
        ),
        kafka_sasl: secret::kafka_sasl_wanted(bp),
        store,
        store_file: secret::store_mount(bp, store),
        otlp_endpoint: defaults.otlp_endpoint.clone(),
    })
}

/// The image a writer runs: its own, else the Rust image (which runs every
/// type), else the operator's own image (the same binaries), else the common
/// image its type names in the catalog. Only the chosen one must be a valid
/// reference: the seeds carry placeholders in fields a Rust image overrides.
fn resolve_image(
    bp: &BackgroundPersistence,
    w: &WriterSpec,
    defaults: &Defaults,
) -> Result<String, ImageError> {
    let common = &bp.spec.common_persistence_specs;
    let field = w.bus_subscriber_type.kind().image;
    fn set(s: &Option<String>) -> Option<&str> {
        s.as_deref().filter(|s| !s.trim().is_empty())
    }
    let (image, from) = set(&w.image)
        .map(|i| (i, ImageSource::Writer))
        .or(set(&common.bus_writer_image_rust).map(|i| (i, ImageSource::Rust)))
        .or(defaults
            .writer_image
            .as_deref()
            .map(|i| (i, ImageSource::Operator)))
        .or_else(|| field.value(common).map(|i| (i, ImageSource::Common(field))))
        .ok_or_else(|| ImageError::Missing {
            writer: w.name.clone(),
            field: match field {
                ImageField::Go => "bus_writer_image_go",
                ImageField::Python => "bus_writer_image_python",
                ImageField::Bswl => "bus_writer_image_bswl",
            },
        })?;
    match crate::crd::image::reference_problem(image) {
        None => Ok(image.to_string()),
        Some(reason) => Err(ImageError::Invalid {
            writer: w.name.clone(),
            from,
            image: image.to_string(),
            reason,
        }),
    }
}

/// The replicas the operator sets; for an autoscaled writer, the count its
/// Deployment is created with (`default_replica_count` within the bounds).
fn replicas(w: &WriterSpec) -> i32 {
    let fixed = w.default_replica_count.unwrap_or(1);
    match &w.autoscaling {
        Some(a) => fixed.clamp(a.min(), a.max_replicas.max(a.min())),
        None => fixed,
    }
}

/// The Kafka consumer group a writer joins: its override as written, else
/// `<group_id_prefix>bgpersist.<resource>.<writer>`.
fn consumer_group(bp: &BackgroundPersistence, resource: &str, w: &WriterSpec) -> String {
    w.kafka_consumer_group_override.clone().unwrap_or_else(|| {
        let prefix = bp.spec.group_id_prefix.as_deref().unwrap_or_default();
        format!("{prefix}bgpersist.{resource}.{}", w.name)
    })
}

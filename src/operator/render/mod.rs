//! Pure rendering: a validated spec in, Kubernetes objects out. No I/O, so
//! every rendered field is unit-tested without a server.

mod deployment;
mod labels;
mod names;
mod namespace;
pub mod network_policy;
mod pdb;
pub mod scaled_object;
pub mod secret;
mod service_account;
pub mod trigger_authentication;

pub use deployment::{CONFIG_HASH_ANNOTATION, DEFAULT_WRITER_ENV};
pub use labels::{LABEL_MANAGED_BY, LABEL_RESOURCE, LABEL_WRITER, MANAGER, selector};
pub use names::{deployment_name, kafka_sasl_secret_name, stores_secret_name};
pub use secret::{RenderedSecret, SecretBytes, SecretEntry, SecretInputs, Slot};

use crate::crd::BackgroundPersistence;
use crate::operator::model::ResolvedWriter;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;

/// Everything one resource renders to.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub namespace: Namespace,
    pub service_account: ServiceAccount,
    /// Secrets synced from cloud secrets, for the slots that have a value.
    pub secrets: Vec<RenderedSecret>,
    pub writers: Vec<RenderedWriter>,
}

#[derive(Clone, Debug)]
pub struct RenderedWriter {
    pub name: String,
    /// Its Deployment's (and PDB's, ScaledObject's) name.
    pub object_name: String,
    pub deployment: Deployment,
    /// Only for a writer that may run two or more pods.
    pub pdb: Option<PodDisruptionBudget>,
    pub image: String,
    pub config_hash: String,
    /// The replicas the operator sets; for an autoscaled writer, the count
    /// its Deployment is created with before the autoscaler takes over.
    pub replicas: i32,
    /// KEDA objects, when the writer is autoscaled.
    pub autoscaling: Option<RenderedAutoscaling>,
    /// Its NetworkPolicy, when `common_persistence_specs.network_policy` is enabled.
    pub network_policy: network_policy::WriterPolicy,
}

#[derive(Clone, Debug)]
pub struct RenderedAutoscaling {
    pub scaled_object: DynamicObject,
    pub trigger_authentication: Option<DynamicObject>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("metadata.{0} is missing: render needs a resource read from the API server")]
    MissingMetadata(&'static str),
    #[error("{field}: the synced value has no key {key}")]
    SecretKeyMissing { field: String, key: &'static str },
}

/// The owner reference every rendered object carries. The resource is
/// cluster-scoped, so it can own objects in any namespace.
pub fn owner_reference(bp: &BackgroundPersistence) -> Result<OwnerReference, RenderError> {
    use kube::Resource;
    let name = bp
        .metadata
        .name
        .clone()
        .ok_or(RenderError::MissingMetadata("name"))?;
    let uid = bp
        .metadata
        .uid
        .clone()
        .ok_or(RenderError::MissingMetadata("uid"))?;
    Ok(OwnerReference {
        api_version: BackgroundPersistence::api_version(&()).into_owned(),
        kind: BackgroundPersistence::kind(&()).into_owned(),
        name,
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Render the resource with the writers validation resolved and no cloud
/// secret values (the writers still mount the Secrets the spec names).
pub fn render(
    bp: &BackgroundPersistence,
    writers: &[ResolvedWriter],
) -> Result<Rendered, RenderError> {
    render_with_secrets(bp, writers, &SecretInputs::default())
}

/// Render the resource with the writers validation resolved and the cloud
/// secret values and versions the read step fetched.
pub fn render_with_secrets(
    bp: &BackgroundPersistence,
    writers: &[ResolvedWriter],
    secrets: &SecretInputs,
) -> Result<Rendered, RenderError> {
    let owner = owner_reference(bp)?;
    let resource = owner.name.clone();
    let mut out = Vec::with_capacity(writers.len());
    for rw in writers {
        let w = rw.spec;
        let deployment::WriterDeployment {
            deployment,
            image,
            config_hash,
            replicas,
        } = deployment::render(bp, &resource, rw, &owner, secrets);
        let autoscaling = w.autoscaling.as_ref().map(|auto| {
            let auth = trigger_authentication::render(bp, &resource, rw, &owner, secrets);
            let auth_name = auth.as_ref().and_then(|a| a.metadata.name.clone());
            RenderedAutoscaling {
                scaled_object: scaled_object::render(
                    bp,
                    &resource,
                    rw,
                    auto,
                    &owner,
                    auth_name.as_deref(),
                ),
                trigger_authentication: auth,
            }
        });
        out.push(RenderedWriter {
            name: w.name.clone(),
            object_name: rw.object_name.clone(),
            pdb: pdb::render(bp, &resource, rw, &owner),
            network_policy: network_policy::render(bp, &resource, rw, &owner, secrets),
            deployment,
            image,
            config_hash,
            replicas,
            autoscaling,
        });
    }
    Ok(Rendered {
        namespace: namespace::render(bp, &resource),
        service_account: service_account::render(bp, &resource, &owner),
        secrets: secret::render(bp, &resource, &owner, secrets)?,
        writers: out,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::crd::BackgroundPersistence;

    /// The documented example configuration, as users paste it.
    pub const SEED_SPEC: &str = include_str!("../../../deploy/examples/seed-example.yaml");

    /// The seed resource as the API server would return it (name and uid set).
    pub fn seed() -> BackgroundPersistence {
        let mut bp: BackgroundPersistence =
            serde_yaml::from_str(SEED_SPEC).unwrap_or_else(|e| panic!("seed parses: {e}"));
        bp.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
        bp.metadata.generation = Some(1);
        bp
    }

    /// The seed resource after a JSON merge of `patch` into its spec.
    pub fn seed_with(patch: serde_json::Value) -> BackgroundPersistence {
        let bp = seed();
        let mut v = serde_json::to_value(&bp).unwrap_or_default();
        merge(&mut v["spec"], &patch);
        serde_json::from_value(v).unwrap_or_else(|e| panic!("patched seed parses: {e}"))
    }

    /// What the chart hands the operator: its own image, which runs the
    /// seed's writers (the seed names placeholders for the other images).
    pub fn defaults() -> crate::operator::model::Defaults {
        crate::operator::model::Defaults {
            writer_image: Some(OPERATOR_IMAGE.into()),
            ..Default::default()
        }
    }

    pub const OPERATOR_IMAGE: &str = "registry.example/bgpersist:1";

    /// Every writer of `bp` resolved, as validation would (without its
    /// checks), under the chart's operator.
    pub fn resolved(bp: &BackgroundPersistence) -> Vec<crate::operator::model::ResolvedWriter<'_>> {
        resolved_with(bp, &defaults())
    }

    pub fn resolved_with<'a>(
        bp: &'a BackgroundPersistence,
        defaults: &crate::operator::model::Defaults,
    ) -> Vec<crate::operator::model::ResolvedWriter<'a>> {
        let resource = bp.metadata.name.as_deref().unwrap_or_default();
        bp.spec
            .writers
            .iter()
            .map(|w| {
                crate::operator::model::resolve(bp, resource, w, defaults)
                    .unwrap_or_else(|e| panic!("resolve: {e}"))
            })
            .collect()
    }

    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        match (target, patch) {
            (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod network_policy_tests;

//! `kubectl bgpersist render FILE`: what the operator would apply for a
//! resource file, offline, through the operator's own validate and render
//! (`operator::plan`) with its defaults. Secret values held in a secret
//! manager are not read: their synced Secrets are left out and named.

use super::PluginError;
use super::objects::{self, Object};
use crate::crd::{BackgroundPersistence, SecretClient};
use crate::operator::model::Defaults;
use crate::operator::plan;
use crate::operator::render::{SecretInputs, secret};
use crate::operator::validate::Problem;
use kube::ResourceExt;
use serde::Deserialize;
use std::path::Path;

/// Stands in for the uid the API server gives a created resource (it is
/// only in the rendered objects' owner references).
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// One resource rendered.
#[derive(Debug)]
pub struct Rendering {
    pub objects: Vec<Object>,
    /// Validation's refusals: a refused writer renders nothing.
    pub problems: Vec<Problem>,
    /// What is left out or stands in, for stderr.
    pub notes: Vec<String>,
}

/// The BackgroundPersistence documents of a YAML or JSON file.
pub fn read_file(path: &Path) -> Result<Vec<BackgroundPersistence>, PluginError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PluginError::ReadFile {
        path: shown.clone(),
        source,
    })?;
    parse(&text).map_err(|reason| PluginError::ParseFile {
        path: shown,
        reason,
    })
}

/// The BackgroundPersistence documents of `text` (JSON is YAML too); other
/// kinds in a multi-document file are skipped.
pub fn parse(text: &str) -> Result<Vec<BackgroundPersistence>, String> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
        if value.is_null()
            || value.get("kind").and_then(|k| k.as_str()) != Some("BackgroundPersistence")
        {
            continue;
        }
        out.push(serde_yaml::from_value(value).map_err(|e| e.to_string())?);
    }
    if out.is_empty() {
        return Err("no document of kind BackgroundPersistence".into());
    }
    Ok(out)
}

/// Renders `bp` as the operator would with `defaults` and no secret values.
pub fn render(
    mut bp: BackgroundPersistence,
    defaults: &Defaults,
) -> Result<Rendering, PluginError> {
    let mut notes = Vec::new();
    if bp.metadata.uid.is_none() {
        bp.metadata.uid = Some(PLACEHOLDER_UID.into());
        notes.push(format!(
            "ownerReferences[].uid is the placeholder {PLACEHOLDER_UID}: the API server gives the resource its uid"
        ));
    }
    notes.extend(left_out(&bp));
    let planned = plan::plan(&bp, defaults, &SecretInputs::default())?;
    let problems = planned.validated.problems.clone();
    let objects = match &planned.rendered {
        Some(rendered) => objects::flatten(rendered)?,
        None => Vec::new(),
    };
    Ok(Rendering {
        objects,
        problems,
        notes,
    })
}

/// What is not rendered offline: each Secret synced from a secret manager.
fn left_out(bp: &BackgroundPersistence) -> Vec<String> {
    let resource = bp.name_any();
    let ns = &bp.spec.common_persistence_specs.namespace;
    let provider = match bp.spec.common_persistence_specs.secret_client {
        Some(SecretClient::Aws) => "AWS Secrets Manager",
        Some(SecretClient::Gcp) => "GCP Secret Manager",
        Some(SecretClient::Kubernetes) => "a Kubernetes Secret",
        None => "no secret_client",
    };
    secret::wanted(bp)
        .into_iter()
        .map(|(slot, source)| {
            format!(
                "left out: Secret {ns}/{} (spec.{}, {source:?} in {provider}): secrets are not read offline; the Deployments still mount it, and their {} annotation lacks its version, so it differs from the operator's",
                slot.secret_name(&resource),
                slot.field(),
                crate::operator::render::CONFIG_HASH_ANNOTATION,
            )
        })
        .collect()
}

/// The objects as multi-document YAML.
pub fn to_yaml(objects: &[Object]) -> Result<String, PluginError> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&o.value)?);
    }
    Ok(out)
}

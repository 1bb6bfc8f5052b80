//! Validate, then render: the pure middle of a reconcile, one place for the
//! operator (`controller.rs`) and `kubectl bgpersist render` / `diff`, so the
//! plugin shows exactly what the operator would apply.

use super::Error;
use super::model::Defaults;
use super::render::{self, Rendered, SecretInputs};
use super::validate::{self, Validated};
use crate::crd::BackgroundPersistence;

/// What a resource validates and renders to.
#[derive(Debug)]
pub struct Plan<'a> {
    pub validated: Validated<'a>,
    /// None when a spec-level problem blocks every writer: the operator then
    /// applies nothing at all.
    pub rendered: Option<Rendered>,
}

/// Renders the writers validation accepted, with the secret values read.
pub fn render_validated(
    bp: &BackgroundPersistence,
    validated: &Validated<'_>,
    secrets: &SecretInputs,
) -> Result<Rendered, Error> {
    render::render_with_secrets(bp, &validated.writers, secrets).map_err(|e| match e {
        render::RenderError::MissingMetadata(m) => Error::MissingMetadata(m),
        other => Error::Render(other.to_string()),
    })
}

/// Validates `bp` with the operator's `defaults`, then renders it unless a
/// spec-level problem stops every writer.
pub fn plan<'a>(
    bp: &'a BackgroundPersistence,
    defaults: &Defaults,
    secrets: &SecretInputs,
) -> Result<Plan<'a>, Error> {
    let validated = validate::validate_with(bp, defaults);
    let rendered = if validated.fatal().next().is_none() {
        Some(render_validated(bp, &validated, secrets)?)
    } else {
        None
    };
    Ok(Plan {
        validated,
        rendered,
    })
}

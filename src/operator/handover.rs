//! A Deployment's `spec.replicas`, handed from the operator to an autoscaler
//! and back.
//!
//! With server-side apply, a field the operator owned and stops sending is
//! removed, and a Deployment without replicas falls back to 1. Kubernetes'
//! documented way out ("Transferring ownership" in the Server-Side Apply
//! reference): apply the current value under a second field manager, then
//! apply the configuration without the field. The second manager holds the
//! value until the autoscaler (the HPA KEDA creates, writing the scale
//! subresource) changes it and so takes it over. Switching autoscaling off,
//! the operator's forced apply of `replicas` takes the field back.

use super::cache::Live;
use super::render::RenderedWriter;
use super::{Error, FIELD_MANAGER, apply::contains, metrics::Metrics};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// Field manager that holds `spec.replicas` during the hand-over.
pub const HANDOVER_MANAGER: &str = "bgpersist-replicas-handover";

/// Applies the writer's Deployment unless the live one already holds it, and
/// makes the operator own `spec.replicas` exactly when the writer is not
/// autoscaled. Returns the live Deployment and whether anything was written.
pub async fn ensure_deployment(
    api: &Api<Deployment>,
    w: &RenderedWriter,
    live: Live<Deployment>,
    metrics: &Metrics,
) -> Result<(Deployment, bool), Error> {
    let desired = &w.deployment;
    let name = desired
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let live = live.or_get(api, &name).await?;
    if w.autoscaling.is_none() {
        if let Some(live) = live
            && operator_owns_replicas(&live)
            && holds(&live, desired, &name)?
        {
            return Ok((live, false));
        }
        return Ok((force_apply(api, &name, desired, metrics).await?, true));
    }

    let mut wrote = false;
    let live = match live {
        Some(live) => live,
        None => {
            // Created without replicas it would start at 1: create it with
            // the starting count, then hand that over like any other.
            let mut first = desired.clone();
            if let Some(spec) = first.spec.as_mut() {
                spec.replicas = Some(w.replicas);
            }
            wrote = true;
            force_apply(api, &name, &first, metrics).await?
        }
    };
    if operator_owns_replicas(&live) {
        let current = live
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(w.replicas);
        hand_over(api, &name, current, metrics).await?;
        return Ok((force_apply(api, &name, desired, metrics).await?, true));
    }
    if holds(&live, desired, &name)? {
        return Ok((live, wrote));
    }
    Ok((force_apply(api, &name, desired, metrics).await?, true))
}

/// Whether the operator's applied configuration includes `spec.replicas`.
pub fn operator_owns_replicas(d: &Deployment) -> bool {
    owns_replicas(d, FIELD_MANAGER)
}

/// Whether `manager`'s server-side apply of the object itself owns `spec.replicas`.
pub fn owns_replicas(d: &Deployment, manager: &str) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|e| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some("Apply")
            && e.subresource.as_deref().unwrap_or_default().is_empty()
            && e.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
    })
}

fn holds(live: &Deployment, desired: &Deployment, name: &str) -> Result<bool, Error> {
    let ser = |d: &Deployment| {
        serde_json::to_value(d).map_err(|source| Error::Serialize {
            object: name.to_string(),
            source,
        })
    };
    Ok(contains(&ser(live)?, &ser(desired)?))
}

async fn force_apply(
    api: &Api<Deployment>,
    name: &str,
    desired: &Deployment,
    metrics: &Metrics,
) -> Result<Deployment, Error> {
    let applied = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
    metrics.api_write();
    Ok(applied)
}

/// Applies only `spec.replicas = current` as `HANDOVER_MANAGER`, unforced.
async fn hand_over(
    api: &Api<Deployment>,
    name: &str,
    current: i32,
    metrics: &Metrics,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": current},
    });
    let result = api
        .patch(
            name,
            &PatchParams::apply(HANDOVER_MANAGER),
            &Patch::Apply(body),
        )
        .await;
    metrics.api_write();
    match result {
        Ok(_) => Ok(()),
        // The autoscaler changed replicas since they were read: it owns the
        // field already, and there is nothing left to hand over.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

//! `kubectl bgpersist diff NAME`: what the operator would change now. The
//! live resource is rendered as the operator renders it (its defaults, the
//! secret values last synced into the cluster), each object is applied as a
//! server-side dry run with the operator's field manager, and the result is
//! compared with the live object; objects carrying the resource's labels
//! that nothing renders any more would be pruned.

use super::objects::{self, Object, api_resource, redact};
use super::{KubeOptions, PluginError, get_resource};
use crate::crd::BackgroundPersistence;
use crate::operator::FIELD_MANAGER;
use crate::operator::applier::Kind;
use crate::operator::keda::Keda;
use crate::operator::model::Defaults;
use crate::operator::render::{LABEL_MANAGED_BY, LABEL_RESOURCE, MANAGER, deployment_name, secret};
use crate::operator::{plan, secrets};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::collections::BTreeMap;

/// What would happen to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Create { yaml: String },
    Update { diff: String },
    Prune,
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// "Kind namespace/name".
    pub object: String,
    pub change: Change,
}

#[derive(Debug, Default)]
pub struct DiffReport {
    pub entries: Vec<Entry>,
    /// Writers validation refuses, and objects left alone: for stderr.
    pub notes: Vec<String>,
}

impl DiffReport {
    /// What `diff` prints: a unified diff per changed object.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            match &e.change {
                Change::Create { yaml } => {
                    out.push_str(&format!("+++ {} (would be created)\n", e.object));
                    for l in yaml.lines() {
                        out.push_str(&format!("+{l}\n"));
                    }
                }
                Change::Update { diff } => out.push_str(diff),
                Change::Prune => out.push_str(&format!("--- {} (would be pruned)\n", e.object)),
            }
        }
        out
    }
}

pub async fn diff(
    client: &Client,
    opts: &KubeOptions,
    name: &str,
    defaults: &Defaults,
) -> Result<DiffReport, PluginError> {
    let bp = get_resource(client, name).await?;
    opts.check_namespace(&bp)?;
    let ns = bp.spec.common_persistence_specs.namespace.clone();
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut live_secrets = BTreeMap::new();
    for s in secret::secret_names(&bp, name) {
        if let Some(live) = secret_api.get_opt(&s).await? {
            live_secrets.insert(s, live);
        }
    }
    let inputs = secrets::last_synced(&bp, &live_secrets);
    let planned = plan::plan(&bp, defaults, &inputs)?;
    let Some(rendered) = &planned.rendered else {
        // The operator applies nothing and prunes nothing for such a spec.
        return Err(PluginError::Invalid {
            problems: planned.validated.problems,
        });
    };
    let mut report = DiffReport::default();
    // A refused writer keeps what it has.
    let mut keep: Vec<(Kind, String)> = Vec::new();
    for p in &planned.validated.problems {
        report.notes.push(format!("refused, left as it is: {p}"));
        if let Some(w) = &p.writer {
            let object = deployment_name(name, w);
            keep.extend(Kind::PER_WRITER.map(|k| (k, object.clone())));
        }
    }
    keep.extend(
        secret::secret_names(&bp, name)
            .into_iter()
            .map(|s| (Kind::Secret, s)),
    );
    keep.push((
        Kind::ServiceAccount,
        bp.spec
            .common_persistence_specs
            .service_account_name
            .clone(),
    ));

    for o in objects::flatten(rendered)? {
        keep.push((o.kind, o.name.clone()));
        let api = dynamic_api(client, &o);
        let live = api.get_opt(&o.name).await?;
        let Some(live) = live else {
            let mut value = o.value.clone();
            redact(o.kind, &mut value);
            report.entries.push(Entry {
                object: o.label(),
                change: Change::Create {
                    yaml: serde_yaml::to_string(&value)?,
                },
            });
            continue;
        };
        if o.kind == Kind::ServiceAccount && !owned_by(&live, &bp) {
            report.notes.push(format!(
                "{}: the user's, the operator uses it as it is",
                o.label()
            ));
            continue;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        let applied = api.patch(&o.name, &params, &Patch::Apply(&o.value)).await?;
        let before = comparable(o.kind, serde_json::to_value(&live)?);
        let after = comparable(o.kind, serde_json::to_value(&applied)?);
        if before != after {
            let (a, b) = (
                serde_yaml::to_string(&before)?,
                serde_yaml::to_string(&after)?,
            );
            let diff = similar::TextDiff::from_lines(&a, &b)
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("{} (live)", o.label()),
                    &format!("{} (operator)", o.label()),
                )
                .to_string();
            report.entries.push(Entry {
                object: o.label(),
                change: Change::Update { diff },
            });
        }
    }
    report.entries.extend(prunable(client, name, &keep).await?);
    Ok(report)
}

/// The objects labelled as the resource's that nothing keeps, as the
/// operator's prune would delete them (KEDA's kinds only when served).
async fn prunable(
    client: &Client,
    name: &str,
    keep: &[(Kind, String)],
) -> Result<Vec<Entry>, PluginError> {
    let selector = format!("{LABEL_RESOURCE}={name},{LABEL_MANAGED_BY}={MANAGER}");
    let keda = Keda::default().served(client).await?;
    let mut out = Vec::new();
    for kind in Kind::PRUNE_ORDER {
        if matches!(kind, Kind::ScaledObject | Kind::TriggerAuthentication) && !keda {
            continue;
        }
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(kind));
        for obj in api.list(&ListParams::default().labels(&selector)).await? {
            let kept = keep.iter().any(|(k, n)| *k == kind && *n == obj.name_any());
            if kept || obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            out.push(Entry {
                object: format!(
                    "{} {}/{}",
                    kind.label(),
                    obj.namespace().unwrap_or_default(),
                    obj.name_any()
                ),
                change: Change::Prune,
            });
        }
    }
    Ok(out)
}

fn dynamic_api(client: &Client, o: &Object) -> Api<DynamicObject> {
    let ar = api_resource(o.kind);
    match &o.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

fn owned_by(live: &DynamicObject, bp: &BackgroundPersistence) -> bool {
    let uid = bp.metadata.uid.as_deref();
    live.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid)
}

/// An object without what every write changes (bookkeeping, status) and
/// with Secret values redacted: what is left differs only where the
/// operator's apply would change it.
pub fn comparable(kind: Kind, mut value: Value) -> Value {
    if let Some(Value::Object(meta)) = value.get_mut("metadata") {
        for field in [
            "managedFields",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "uid",
        ] {
            meta.remove(field);
        }
        if let Some(Value::Object(a)) = meta.get_mut("annotations") {
            a.remove("deployment.kubernetes.io/revision");
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    if let Value::Object(map) = &mut value {
        map.remove("status");
    }
    redact(kind, &mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bookkeeping_is_not_a_difference_but_a_field_is() {
        let live = json!({"metadata": {"name": "d", "resourceVersion": "1", "generation": 1,
            "managedFields": [{"manager": "x"}], "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": {"replicas": 1}, "status": {"readyReplicas": 1}});
        let same = json!({"metadata": {"name": "d", "resourceVersion": "2", "generation": 2},
            "spec": {"replicas": 1}});
        let changed = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2}});
        let c = |v: &Value| comparable(Kind::Deployment, v.clone());
        assert_eq!(c(&live), c(&same));
        assert_ne!(c(&live), c(&changed));
    }
}

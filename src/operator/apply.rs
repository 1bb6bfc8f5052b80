//! Server-side apply with one field manager, skipped when the live object
//! already holds every field we render (so a resync with nothing changed
//! writes nothing), and pruning of objects no writer renders any more. The
//! live objects come from the watch caches when they are ready (`Live`,
//! `cache::Listed`), else from the API server.

use super::cache::{Listed, Live};
use super::{Error, FIELD_MANAGER, metrics::Metrics};
use crate::quantity;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt::Debug;

/// Applies `desired` unless the live object already contains it. Returns the
/// live object after the call and whether a write was sent.
pub async fn ensure<K>(
    api: &Api<K>,
    desired: &K,
    live: Live<K>,
    metrics: &Metrics,
) -> Result<(K, bool), Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = desired
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let want = serde_json::to_value(desired).map_err(|source| Error::Serialize {
        object: name.clone(),
        source,
    })?;
    if let Some(live) = live.or_get(api, &name).await? {
        let have = serde_json::to_value(&live).map_err(|source| Error::Serialize {
            object: name.clone(),
            source,
        })?;
        if contains(&have, &want) {
            return Ok((live, false));
        }
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
    metrics.api_write();
    Ok((applied, true))
}

/// Deletes the objects matching `selector` (`cached`: as the watch cache
/// lists them) whose (namespace, name) is not in `keep`. Returns the names deleted.
pub async fn prune<K>(
    api: &Api<K>,
    cached: Option<Vec<Listed>>,
    selector: &str,
    keep: &[(String, String)],
    metrics: &Metrics,
) -> Result<Vec<String>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let client = api.clone().into_client();
    prune_with(
        api,
        |ns| Api::namespaced(client.clone(), ns),
        cached,
        selector,
        keep,
        metrics,
    )
    .await
}

/// `prune` with `scoped` giving the namespaced API to delete through (for
/// kinds known only at run time, `DynamicObject` with its `ApiResource`).
pub async fn prune_with<K>(
    api: &Api<K>,
    scoped: impl Fn(&str) -> Api<K>,
    cached: Option<Vec<Listed>>,
    selector: &str,
    keep: &[(String, String)],
    metrics: &Metrics,
) -> Result<Vec<String>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let listed = match cached {
        Some(listed) => listed,
        None => api
            .list(&ListParams::default().labels(selector))
            .await?
            .into_iter()
            .map(|obj| Listed {
                namespace: obj.namespace().unwrap_or_default(),
                name: obj.name_any(),
                deleting: obj.meta().deletion_timestamp.is_some(),
            })
            .collect(),
    };
    let mut deleted = Vec::new();
    for obj in listed {
        let key = (obj.namespace, obj.name);
        if keep.contains(&key) || obj.deleting {
            continue;
        }
        let result = scoped(&key.0)
            .delete(&key.1, &DeleteParams::background())
            .await;
        metrics.api_write();
        match result {
            Ok(_) => {}
            // A cache can still list what is already gone.
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        deleted.push(format!("{}/{}", key.0, key.1));
    }
    Ok(deleted)
}

/// Whether `have` holds every field of `want` with an equal value. Quantities
/// compare by amount, since the API server rewrites them ("1024Mi" → "1Gi").
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (_, Value::Null) => true,
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, wv)| match h.get(k) {
            Some(hv) => contains(hv, wv),
            None => wv.is_null() || is_empty_container(wv),
        }),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        (Value::String(h), Value::String(w)) => h == w || quantity::same(h, w),
        (h, w) => h == w,
    }
}

/// The API server drops empty maps and lists; rendering them is not drift.
fn is_empty_container(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty()) || matches!(v, Value::Array(a) if a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::contains;
    use serde_json::json;

    #[test]
    fn live_with_defaults_contains_rendered() {
        let want = json!({"spec": {"replicas": 1, "template": {"resources": {"limits": {"memory": "1024Mi"}}}}});
        let have = json!({"spec": {"replicas": 1, "progressDeadlineSeconds": 600,
            "template": {"resources": {"limits": {"memory": "1Gi"}}}}, "status": {}});
        assert!(contains(&have, &want));
    }

    #[test]
    fn drift_is_seen() {
        let want = json!({"spec": {"replicas": 1, "env": [{"name": "A", "value": "1"}]}});
        assert!(!contains(
            &json!({"spec": {"replicas": 3, "env": [{"name": "A", "value": "1"}]}}),
            &want
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 1, "env": [{"name": "A", "value": "2"}]}}),
            &want
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 1, "env": []}}),
            &want
        ));
        assert!(!contains(&json!({"spec": {}}), &want));
    }

    #[test]
    fn empty_rendered_maps_need_not_exist() {
        assert!(contains(&json!({"a": 1}), &json!({"a": 1, "emptyDir": {}})));
    }
}

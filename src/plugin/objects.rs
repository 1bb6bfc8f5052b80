//! A rendered resource as the list of objects the operator applies, in its
//! order (Namespace, ServiceAccount, synced Secrets, then per writer its
//! NetworkPolicy when enabled, Deployment, PodDisruptionBudget when it may
//! run two pods, and KEDA objects), each as JSON.

use super::PluginError;
use crate::operator::applier::Kind;
use crate::operator::render::{self, Rendered};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::discovery::ApiResource;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
pub struct Object {
    pub kind: Kind,
    /// None for the cluster-scoped Namespace.
    pub namespace: Option<String>,
    pub name: String,
    /// The writer it belongs to, for per-writer kinds.
    pub writer: Option<String>,
    pub value: Value,
}

impl Object {
    fn new<K: kube::Resource + Serialize>(
        kind: Kind,
        writer: Option<&str>,
        obj: &K,
    ) -> Result<Self, PluginError> {
        Ok(Object {
            kind,
            namespace: obj.meta().namespace.clone(),
            name: obj.meta().name.clone().unwrap_or_default(),
            writer: writer.map(str::to_string),
            value: serde_json::to_value(obj)?,
        })
    }

    /// "Kind namespace/name", as reports name it.
    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind.label(), self.name),
            None => format!("{} {}", self.kind.label(), self.name),
        }
    }
}

/// Every object `rendered` holds, in apply order.
pub fn flatten(rendered: &Rendered) -> Result<Vec<Object>, PluginError> {
    let mut out = vec![
        Object::new(Kind::Namespace, None, &rendered.namespace)?,
        Object::new(Kind::ServiceAccount, None, &rendered.service_account)?,
    ];
    for s in &rendered.secrets {
        out.push(Object::new(Kind::Secret, None, &s.secret)?);
    }
    for w in &rendered.writers {
        let writer = Some(w.name.as_str());
        // Applied before the Deployment, as the operator does. Offline a
        // policy whose store secret is not read (KeepLive) is not shown.
        if let render::network_policy::WriterPolicy::Apply(policy) = &w.network_policy {
            out.push(Object::new(Kind::NetworkPolicy, writer, policy.as_ref())?);
        }
        out.push(Object::new(Kind::Deployment, writer, &w.deployment)?);
        if let Some(pdb) = &w.pdb {
            out.push(Object::new(Kind::PodDisruptionBudget, writer, pdb)?);
        }
        if let Some(a) = &w.autoscaling {
            if let Some(auth) = &a.trigger_authentication {
                out.push(dynamic(Kind::TriggerAuthentication, writer, auth)?);
            }
            out.push(dynamic(Kind::ScaledObject, writer, &a.scaled_object)?);
        }
    }
    Ok(out)
}

fn dynamic(
    kind: Kind,
    writer: Option<&str>,
    obj: &kube::api::DynamicObject,
) -> Result<Object, PluginError> {
    let mut o = Object::new(kind, writer, obj)?;
    o.name = obj.name_any();
    Ok(o)
}

/// Where objects of `kind` are served.
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
        Kind::Secret => ApiResource::erase::<Secret>(&()),
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
        Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
        Kind::ScaledObject => render::scaled_object::api_resource(),
        Kind::TriggerAuthentication => render::trigger_authentication::api_resource(),
    }
}

/// A Secret's values replaced by a short digest: a change still shows, the
/// value never does.
pub fn redact(kind: Kind, value: &mut Value) {
    if kind != Kind::Secret {
        return;
    }
    for field in ["data", "stringData"] {
        if let Some(Value::Object(map)) = value.get_mut(field) {
            for v in map.values_mut() {
                let digest = Sha256::digest(v.to_string().as_bytes());
                let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
                *v = Value::String(format!("(redacted, sha256 {hex})"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_values_are_redacted_but_changes_show() {
        let mut a = json!({"data": {"k": "c2VjcmV0"}, "metadata": {"name": "s"}});
        let mut b = json!({"data": {"k": "b3RoZXI="}});
        redact(Kind::Secret, &mut a);
        redact(Kind::Secret, &mut b);
        let shown = a["data"]["k"].as_str().unwrap_or_default();
        assert!(shown.starts_with("(redacted"), "{shown}");
        assert!(!a.to_string().contains("c2VjcmV0"));
        assert_ne!(a["data"]["k"], b["data"]["k"]);
        let mut d = json!({"data": {"k": "c2VjcmV0"}});
        redact(Kind::Deployment, &mut d);
        assert_eq!(d["data"]["k"], "c2VjcmV0");
    }
}

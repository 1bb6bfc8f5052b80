//! A watch cache holding each object as its JSON text. A typed Kubernetes
//! object is many times its JSON in memory (every optional field of a pod
//! template is there inline, set or not); the Deployments of 200 resources
//! × 9 writers are most of what the operator would hold. A lookup parses
//! the one object it asks for.

use super::{Listed, Live};
use crate::operator::render::{LABEL_MANAGED_BY, LABEL_RESOURCE, MANAGER};
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

type Key = (String, String);

#[derive(Debug)]
struct Entry {
    json: Box<str>,
    resource: Option<String>,
    deleting: bool,
}

#[derive(Debug, Default)]
struct State {
    ready: bool,
    objects: HashMap<Key, Entry>,
    /// The relist under way, swapped in when it is done.
    relist: Option<HashMap<Key, Entry>>,
}

/// Filled from a watch's events (`apply`), read by the reconcile.
#[derive(Debug)]
pub struct Compact<K> {
    state: Arc<RwLock<State>>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Compact<K> {
    fn clone(&self) -> Self {
        Compact {
            state: self.state.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> Default for Compact<K> {
    fn default() -> Self {
        Compact {
            state: Arc::default(),
            kind: PhantomData,
        }
    }
}

impl<K> Compact<K>
where
    K: Resource + Serialize + DeserializeOwned,
{
    /// Takes one watch event into the cache.
    pub fn apply(&self, event: &Event<K>) {
        let Ok(mut s) = self.state.write() else {
            return;
        };
        match event {
            Event::Init => s.relist = Some(HashMap::new()),
            Event::InitApply(k) => {
                if let (Some(relist), Some((key, entry))) = (s.relist.as_mut(), entry(k)) {
                    relist.insert(key, entry);
                }
            }
            Event::InitDone => {
                if let Some(relist) = s.relist.take() {
                    s.objects = relist;
                }
                s.ready = true;
            }
            Event::Apply(k) => {
                if let Some((key, entry)) = entry(k) {
                    s.objects.insert(key, entry);
                }
            }
            Event::Delete(k) => {
                s.objects.remove(&key(k));
            }
        }
    }

    /// Whether the first list is done.
    pub fn is_ready(&self) -> bool {
        self.read(|_| ()).is_some()
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Option<T> {
        let s = self.state.read().ok()?;
        s.ready.then(|| f(&s))
    }

    /// The object `ns`/`name`, or `Ask` before the first list is done.
    pub fn get(&self, ns: &str, name: &str) -> Live<K> {
        let key = (ns.to_string(), name.to_string());
        let json = self.read(|s| s.objects.get(&key).map(|e| e.json.to_string()));
        match json {
            None => Live::Ask,
            Some(None) => Live::Cached(None),
            // What was serialized here parses back; if not, ask.
            Some(Some(json)) => match serde_json::from_str(&json) {
                Ok(k) => Live::Cached(Some(k)),
                Err(_) => Live::Ask,
            },
        }
    }

    /// The objects labelled with `resource`, or None before the first list.
    pub fn owned_by(&self, resource: &str) -> Option<Vec<Listed>> {
        self.read(|s| {
            s.objects
                .iter()
                .filter(|(_, e)| e.resource.as_deref() == Some(resource))
                .map(|((namespace, name), e)| Listed {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    deleting: e.deleting,
                })
                .collect()
        })
    }
}

fn key<K: Resource>(k: &K) -> Key {
    (k.namespace().unwrap_or_default(), k.name_any())
}

fn entry<K: Resource + Serialize>(k: &K) -> Option<(Key, Entry)> {
    let json = serde_json::to_string(k).ok()?;
    let labels = k.labels();
    let resource = (labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGER))
        .then(|| labels.get(LABEL_RESOURCE).cloned())
        .flatten();
    Some((
        key(k),
        Entry {
            json: json.into_boxed_str(),
            resource,
            deleting: k.meta().deletion_timestamp.is_some(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use std::collections::BTreeMap;

    fn dep(name: &str, resource: &str) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = Some(name.into());
        d.metadata.namespace = Some("ns".into());
        d.metadata.labels = Some(BTreeMap::from([
            (LABEL_RESOURCE.to_string(), resource.to_string()),
            (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
        ]));
        d
    }

    #[test]
    fn asks_until_listed_then_answers_from_its_copy() {
        let c = Compact::<Deployment>::default();
        c.apply(&Event::Init);
        c.apply(&Event::InitApply(dep("r-a", "r")));
        assert!(matches!(c.get("ns", "r-a"), Live::Ask));
        assert_eq!(c.owned_by("r"), None);
        c.apply(&Event::InitDone);
        assert!(matches!(c.get("ns", "r-a"), Live::Cached(Some(d)) if d == dep("r-a", "r")));
        assert!(matches!(c.get("ns", "r-b"), Live::Cached(None)));
        c.apply(&Event::Apply(dep("r-b", "r")));
        c.apply(&Event::Apply(dep("s-a", "s")));
        assert_eq!(c.owned_by("r").map(|l| l.len()), Some(2));
        c.apply(&Event::Delete(dep("r-a", "r")));
        assert!(matches!(c.get("ns", "r-a"), Live::Cached(None)));
        assert_eq!(c.owned_by("r").map(|l| l.len()), Some(1));
        // A relist replaces everything once it is done.
        c.apply(&Event::Init);
        c.apply(&Event::InitApply(dep("s-a", "s")));
        c.apply(&Event::InitDone);
        assert_eq!(c.owned_by("r"), Some(Vec::new()));
    }
}

//! KEDA, seen from the operator: whether its CRDs are served, and the APIs of
//! the two kinds it renders. Discovery needs no RBAC rule (every
//! authenticated user may read it). Its answer is kept for `DISCOVERY_TTL`,
//! so resyncs of many resources do not ask it again each time.

use super::Error;
use super::cache::{self, Live};
use super::render::{scaled_object, trigger_authentication};
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a discovery answer is used before KEDA is looked for again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// The resources an autoscaled writer needs served.
const NEEDED: [&str; 2] = ["scaledobjects", "triggerauthentications"];

/// Why an autoscaled writer is not applied on a cluster without KEDA.
pub const NOT_INSTALLED: &str = "KEDA ScaledObject CRD not installed";

#[derive(Clone, Debug)]
pub struct Keda {
    api_version: String,
    /// The last answer and when it was had.
    answer: Arc<Mutex<Option<(Instant, bool)>>>,
}

impl Default for Keda {
    fn default() -> Self {
        Keda::probing(scaled_object::API_VERSION)
    }
}

impl Keda {
    /// Looks for KEDA at `api_version` instead of keda.sh/v1alpha1. Tests
    /// name one no server serves to see the operator on a cluster without KEDA.
    pub fn probing(api_version: &str) -> Self {
        Keda {
            api_version: api_version.into(),
            answer: Arc::default(),
        }
    }

    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// Whether the API server serves ScaledObjects and TriggerAuthentications
    /// (as it said within `DISCOVERY_TTL`, else asked now).
    pub async fn served(&self, client: &Client) -> Result<bool, Error> {
        if let Ok(answer) = self.answer.lock()
            && let Some((at, served)) = *answer
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(served);
        }
        let served = match client.list_api_group_resources(&self.api_version).await {
            Ok(list) => NEEDED
                .iter()
                .all(|n| list.resources.iter().any(|r| r.name == *n)),
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(e.into()),
        };
        if let Ok(mut answer) = self.answer.lock() {
            *answer = Some((Instant::now(), served));
        }
        Ok(served)
    }

    /// The refusal of an autoscaled writer when KEDA is not served.
    pub fn missing_reason(&self) -> String {
        format!(
            "{NOT_INSTALLED} (the API server does not serve {} scaledobjects); install KEDA or remove the writer's autoscaling",
            self.api_version
        )
    }
}

pub fn scaled_objects(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &scaled_object::api_resource())
}

pub fn trigger_authentications(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &trigger_authentication::api_resource())
}

/// The live copy of the KEDA object `desired` (of kind `ar`) names, from
/// `store` when ready.
pub fn cached(
    store: Option<&Store<DynamicObject>>,
    ns: &str,
    desired: &DynamicObject,
    ar: &kube::api::ApiResource,
) -> Live<DynamicObject> {
    cache::lookup_with(store, Some(ns), &desired.name_any(), ar)
}

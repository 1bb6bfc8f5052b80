//! KEDA, seen from the operator: whether its CRDs are served, and the APIs of
//! the two kinds it renders. Discovery needs no RBAC rule (every
//! authenticated user may read it).

use super::Error;
use super::render::{scaled_object, trigger_authentication};
use kube::Client;
use kube::api::{Api, DynamicObject};

/// The resources an autoscaled writer needs served.
const NEEDED: [&str; 2] = ["scaledobjects", "triggerauthentications"];

/// Why an autoscaled writer is not applied on a cluster without KEDA.
pub const NOT_INSTALLED: &str = "KEDA ScaledObject CRD not installed";

#[derive(Clone, Debug)]
pub struct Keda {
    api_version: String,
}

impl Default for Keda {
    fn default() -> Self {
        Keda {
            api_version: scaled_object::API_VERSION.into(),
        }
    }
}

impl Keda {
    /// Looks for KEDA at `api_version` instead of keda.sh/v1alpha1. Tests
    /// name one no server serves to see the operator on a cluster without KEDA.
    pub fn probing(api_version: &str) -> Self {
        Keda {
            api_version: api_version.into(),
        }
    }

    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// Whether the API server serves ScaledObjects and TriggerAuthentications.
    pub async fn served(&self, client: &Client) -> Result<bool, Error> {
        match client.list_api_group_resources(&self.api_version).await {
            Ok(list) => Ok(NEEDED
                .iter()
                .all(|n| list.resources.iter().any(|r| r.name == *n))),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
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

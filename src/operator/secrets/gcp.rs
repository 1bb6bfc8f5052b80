//! GCP Secret Manager through the official `google-cloud-secretmanager-v1`
//! client (HTTP+JSON transport: `GET /v1/{name=projects/*/secrets/*/versions/*}:access`),
//! with Application Default Credentials (Workload Identity on GKE) and an
//! endpoint override for tests (`BGP_GCP_SECRET_MANAGER_ENDPOINT`).

use super::{BoxFuture, SecretError, SecretSource, SecretValue, parse::crc32c};
use crate::operator::render::SecretBytes;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use tokio::sync::OnceCell;

/// Environment variable overriding the Secret Manager endpoint.
pub const ENV_ENDPOINT: &str = "BGP_GCP_SECRET_MANAGER_ENDPOINT";
/// Environment variable naming the project bare secret IDs live in.
pub const ENV_PROJECT: &str = "BGP_GCP_PROJECT";

pub struct GcpSecretManager {
    endpoint: Option<String>,
    project: Option<String>,
    client: OnceCell<SecretManagerService>,
}

impl GcpSecretManager {
    /// ADC, with `BGP_GCP_SECRET_MANAGER_ENDPOINT` as endpoint and
    /// `BGP_GCP_PROJECT` (else `GOOGLE_CLOUD_PROJECT`) as the project of bare
    /// secret IDs, when set. The client is built on first use.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        GcpSecretManager {
            endpoint: var(ENV_ENDPOINT),
            project: var(ENV_PROJECT).or_else(|| var("GOOGLE_CLOUD_PROJECT")),
            client: OnceCell::new(),
        }
    }

    /// A source over a client built by the caller (endpoint, credentials).
    pub fn from_client(client: SecretManagerService, project: Option<String>) -> Self {
        GcpSecretManager {
            endpoint: None,
            project,
            client: OnceCell::new_with(Some(client)),
        }
    }

    async fn client(&self) -> Result<&SecretManagerService, SecretError> {
        self.client
            .get_or_try_init(|| async {
                let mut builder = SecretManagerService::builder();
                if let Some(e) = &self.endpoint {
                    builder = builder.with_endpoint(e);
                }
                builder.build().await.map_err(|e| {
                    SecretError::Unavailable(format!("cannot build the Secret Manager client: {e}"))
                })
            })
            .await
    }

    /// The version resource to access: a full secret or version name as
    /// given (`latest` when no version), or a bare secret ID in the default project.
    pub fn version_name(&self, name: &str) -> Result<String, SecretError> {
        let name = name.trim();
        let parts: Vec<&str> = name.split('/').collect();
        let filled = parts.iter().all(|p| !p.is_empty());
        let shape: Vec<&str> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| if i % 2 == 0 { *p } else { "*" })
            .collect();
        match shape.as_slice() {
            ["projects", "*", "secrets", "*"]
            | ["projects", "*", "locations", "*", "secrets", "*"]
                if filled =>
            {
                Ok(format!("{name}/versions/latest"))
            }
            ["projects", "*", "secrets", "*", "versions", "*"]
            | [
                "projects",
                "*",
                "locations",
                "*",
                "secrets",
                "*",
                "versions",
                "*",
            ] if filled => Ok(name.to_string()),
            [_] if filled => match &self.project {
                Some(p) => Ok(format!("projects/{p}/secrets/{name}/versions/latest")),
                None => Err(SecretError::InvalidName(format!(
                    "a bare secret ID needs the operator's default project ({ENV_PROJECT}); \
                     write projects/<project>/secrets/<id>"
                ))),
            },
            _ => Err(SecretError::InvalidName(
                "expected projects/<project>/secrets/<id>[/versions/<version>] or a bare secret ID"
                    .into(),
            )),
        }
    }

    async fn get(&self, name: &str) -> Result<SecretValue, SecretError> {
        let full = self.version_name(name)?;
        let resp = self
            .client()
            .await?
            .access_secret_version()
            .set_name(full)
            .send()
            .await
            .map_err(classify)?;
        let payload = resp
            .payload
            .ok_or_else(|| SecretError::Malformed("the version has no payload".into()))?;
        if let Some(sum) = payload.data_crc32c
            && i64::from(crc32c(&payload.data)) != sum
        {
            return Err(SecretError::Malformed(
                "the payload does not match its dataCrc32c checksum".into(),
            ));
        }
        let version = resp
            .name
            .rsplit_once("/versions/")
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                SecretError::Unavailable("the response named no secret version".into())
            })?;
        Ok(SecretValue {
            bytes: SecretBytes::new(payload.data.to_vec()),
            version,
        })
    }
}

impl SecretSource for GcpSecretManager {
    fn provider(&self) -> &'static str {
        "GCP Secret Manager"
    }

    fn fetch<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<SecretValue, SecretError>> {
        Box::pin(self.get(name))
    }
}

/// Maps a client error to its category, from the service's status code and
/// message. A response that cannot be decoded is reported without the
/// decoder's text, which may quote the payload.
fn classify(err: google_cloud_secretmanager_v1::Error) -> SecretError {
    if let Some(status) = err.status() {
        let detail = format!("{}: {}", status.code.name(), status.message);
        return match status.code.name() {
            "NOT_FOUND" => SecretError::NotFound(detail),
            // A disabled or destroyed version cannot be read.
            "FAILED_PRECONDITION" => SecretError::NotFound(detail),
            "PERMISSION_DENIED" | "UNAUTHENTICATED" => SecretError::AccessDenied(detail),
            "INVALID_ARGUMENT" => SecretError::InvalidName(detail),
            _ => SecretError::Unavailable(detail),
        };
    }
    match err.http_status_code() {
        Some(404) => return SecretError::NotFound("HTTP 404".into()),
        Some(code @ (401 | 403)) => return SecretError::AccessDenied(format!("HTTP {code}")),
        _ => {}
    }
    // The client's own text can carry volatile details: it goes to the log,
    // status gets a stable category.
    tracing::warn!(error = %err, "GCP Secret Manager request failed");
    if err.is_authentication() {
        SecretError::AccessDenied("the credentials were refused or could not be loaded".into())
    } else if err.is_deserialization() {
        SecretError::Unavailable("the response could not be decoded".into())
    } else if err.is_timeout() {
        SecretError::Unavailable("timed out".into())
    } else if err.is_io() {
        SecretError::Unavailable("could not connect to the endpoint".into())
    } else {
        SecretError::Unavailable("the request failed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(project: Option<&str>) -> GcpSecretManager {
        GcpSecretManager {
            endpoint: None,
            project: project.map(str::to_string),
            client: OnceCell::new(),
        }
    }

    #[test]
    fn names_resolve_to_a_version() {
        let s = source(Some("p1"));
        let ok = |n: &str| s.version_name(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(
            ok("projects/p/secrets/kafka"),
            "projects/p/secrets/kafka/versions/latest"
        );
        assert_eq!(
            ok("projects/p/secrets/kafka/versions/3"),
            "projects/p/secrets/kafka/versions/3"
        );
        assert_eq!(
            ok("projects/p/locations/europe-west1/secrets/kafka"),
            "projects/p/locations/europe-west1/secrets/kafka/versions/latest"
        );
        assert_eq!(ok("kafka"), "projects/p1/secrets/kafka/versions/latest");
        for bad in [
            "projects/p/secrets/",
            "projects//secrets/x",
            "a/b",
            "projects/p/topics/t",
        ] {
            assert!(
                matches!(s.version_name(bad), Err(SecretError::InvalidName(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            source(None).version_name("kafka"),
            Err(SecretError::InvalidName(_))
        ));
    }
}

//! AWS Secrets Manager through the official SDK: the default credential chain
//! (IRSA web identity, environment, profile, IMDS), the default region chain,
//! and an endpoint override for tests (`BGP_AWS_ENDPOINT_URL`; the SDK's own
//! `AWS_ENDPOINT_URL` works too).

use super::{BoxFuture, SecretError, SecretSource, SecretValue};
use crate::operator::render::SecretBytes;
use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use tokio::sync::OnceCell;

/// Environment variable overriding the Secrets Manager endpoint.
pub const ENV_ENDPOINT: &str = "BGP_AWS_ENDPOINT_URL";

pub struct AwsSecretsManager {
    endpoint: Option<String>,
    client: OnceCell<Client>,
}

impl AwsSecretsManager {
    /// The default chain, with `BGP_AWS_ENDPOINT_URL` as endpoint when set.
    /// The client is built on first use.
    pub fn from_env() -> Self {
        Self::with_endpoint(std::env::var(ENV_ENDPOINT).ok().filter(|s| !s.is_empty()))
    }

    pub fn with_endpoint(endpoint: Option<String>) -> Self {
        AwsSecretsManager {
            endpoint,
            client: OnceCell::new(),
        }
    }

    /// A source over a client built by the caller (explicit credentials, region, endpoint).
    pub fn from_client(client: Client) -> Self {
        AwsSecretsManager {
            endpoint: None,
            client: OnceCell::new_with(Some(client)),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(e) = &self.endpoint {
                    loader = loader.endpoint_url(e);
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    async fn get(&self, name: &str) -> Result<SecretValue, SecretError> {
        let out = self
            .client()
            .await
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .map_err(classify)?;
        let version = out
            .version_id()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SecretError::Unavailable("the response carried no VersionId".into()))?
            .to_string();
        let bytes = match (out.secret_string(), out.secret_binary()) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(b)) => b.as_ref().to_vec(),
            (None, None) => {
                return Err(SecretError::Malformed(
                    "the secret has neither SecretString nor SecretBinary".into(),
                ));
            }
        };
        Ok(SecretValue {
            bytes: SecretBytes::new(bytes),
            version,
        })
    }
}

impl SecretSource for AwsSecretsManager {
    fn provider(&self) -> &'static str {
        "AWS Secrets Manager"
    }

    fn fetch<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<SecretValue, SecretError>> {
        Box::pin(self.get(name))
    }
}

/// A short, stable description of a request that got no service answer.
fn transport_failure<E, R>(err: &SdkError<E, R>) -> &'static str {
    match err {
        SdkError::ConstructionFailure(_) => {
            "the request could not be built (credentials or region missing?)"
        }
        SdkError::TimeoutError(_) => "timed out",
        SdkError::DispatchFailure(d) if d.is_timeout() => "timed out connecting",
        SdkError::DispatchFailure(d) if d.is_io() => "could not connect to the endpoint",
        SdkError::DispatchFailure(d) if d.is_user() => {
            "no usable credentials or endpoint configuration"
        }
        SdkError::DispatchFailure(_) => "the request could not be sent",
        SdkError::ResponseError(_) => "the response could not be read",
        _ => "the request failed",
    }
}

/// Maps an SDK error to its category. The texts come from the service's error
/// code and message, which describe the request, never the secret's value.
fn classify(err: SdkError<GetSecretValueError>) -> SecretError {
    let Some(service) = err.as_service_error() else {
        // The SDK's own text carries response dumps (headers with the date,
        // request ids): it changes on every attempt, so it goes to the log
        // and status gets a stable category.
        tracing::warn!(error = %DisplayErrorContext(&err), "AWS Secrets Manager request failed");
        return SecretError::Unavailable(transport_failure(&err).into());
    };
    let code = service.code().unwrap_or("Unknown").to_string();
    let detail = match service.message() {
        Some(m) => format!("{code}: {m}"),
        None => code.clone(),
    };
    match service {
        GetSecretValueError::ResourceNotFoundException(_) => SecretError::NotFound(detail),
        // Scheduled for deletion: gone as far as the writers are concerned.
        GetSecretValueError::InvalidRequestException(_) => SecretError::NotFound(detail),
        GetSecretValueError::InvalidParameterException(_) => SecretError::InvalidName(detail),
        // KMS refused to decrypt for our identity.
        GetSecretValueError::DecryptionFailure(_) => SecretError::AccessDenied(detail),
        _ if matches!(
            code.as_str(),
            "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "InvalidSignatureException"
                | "SignatureDoesNotMatch"
        ) =>
        {
            SecretError::AccessDenied(detail)
        }
        _ => SecretError::Unavailable(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_secretsmanager::config::http::HttpResponse;
    use aws_sdk_secretsmanager::error::ConnectorError;

    type Err = SdkError<GetSecretValueError, HttpResponse>;

    /// No request id, date or dump: the same failure reads the same every time.
    #[test]
    fn failures_without_a_service_answer_read_the_same_every_time() {
        let cases: [(Err, &str); 3] = [
            (
                SdkError::timeout_error("after 3.0017s at Sun, 06 Dec"),
                "timed out",
            ),
            (
                SdkError::dispatch_failure(ConnectorError::io("refused req-id 42".into())),
                "could not connect to the endpoint",
            ),
            (
                SdkError::construction_failure("region at 01:02:03"),
                "credentials or region missing",
            ),
        ];
        for (err, want) in cases {
            let e = classify(err).to_string();
            assert!(e.contains(want), "{e}");
            assert!(
                !e.contains("req-id") && !e.contains("Dec") && !e.contains("01:02"),
                "{e}"
            );
        }
    }
}

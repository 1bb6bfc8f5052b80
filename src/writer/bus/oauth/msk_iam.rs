//! AWS MSK IAM: the OAUTHBEARER token is a SigV4-presigned
//! `kafka-cluster:Connect` URL, base64url-encoded, signed with the pod's AWS
//! identity from the SDK's default chain (IRSA web identity, the instance
//! role, the environment). Signed by `aws-msk-iam-sasl-signer`, which makes
//! the token AWS's own signers make.

use super::OAuthError;
use aws_config::BehaviorVersion;
use rdkafka::client::OAuthToken;

/// MSK takes the principal from the signed identity; librdkafka only needs
/// a non-empty name.
pub const MSK_IAM_PRINCIPAL: &str = "msk-iam";

/// A token for the cluster's region: `region`, else the SDK's (`AWS_REGION`).
pub async fn msk_iam_token(region: Option<&str>) -> Result<OAuthToken, OAuthError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(aws_types::region::Region::new(r.to_string()));
    }
    let config = loader.load().await;
    let region = config.region().cloned().ok_or_else(|| {
        OAuthError::Config(
            "AWS MSK IAM needs a region: set kafka_oauthbearer.aws_region or AWS_REGION".into(),
        )
    })?;
    let credentials = config
        .credentials_provider()
        .ok_or_else(|| OAuthError::Aws("no AWS credentials provider".into()))?;
    let (token, expiry_ms) =
        aws_msk_iam_sasl_signer::generate_auth_token_from_credentials_provider(region, credentials)
            .await
            .map_err(|e| OAuthError::Aws(e.to_string()))?;
    Ok(OAuthToken {
        token,
        principal_name: MSK_IAM_PRINCIPAL.into(),
        lifetime_ms: expiry_ms,
    })
}

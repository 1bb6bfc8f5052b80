//! OIDC client-credentials grant (RFC 6749 §4.4) through the `oauth2` crate,
//! its HTTP sent with the writer's own reqwest client. The client
//! authenticates with HTTP Basic (client_secret_basic), which every major
//! identity provider accepts.

use super::{DEFAULT_LIFETIME, OAuthError, expiry_ms};
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};
use rdkafka::client::OAuthToken;

/// An access token for `client_id`; its principal is the client id.
pub async fn oidc_token(
    token_url: &str,
    client_id: &str,
    client_secret: &str,
    scope: Option<&str>,
) -> Result<OAuthToken, OAuthError> {
    let url = TokenUrl::new(token_url.to_string())
        .map_err(|e| OAuthError::Config(format!("token URL {token_url}: {e}")))?;
    let client = BasicClient::new(ClientId::new(client_id.to_string()))
        .set_client_secret(ClientSecret::new(client_secret.to_string()))
        .set_token_uri(url);
    let http = reqwest::Client::builder()
        // RFC 6749 §3.2 gives the token endpoint no redirects to follow;
        // following one could hand the credentials to another host.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(super::FETCH_TIMEOUT)
        .build()
        .map_err(|e| OAuthError::Runtime(e.to_string()))?;
    let send = |request: oauth2::HttpRequest| send(&http, request);
    let mut exchange = client.exchange_client_credentials();
    for s in scope.into_iter().flat_map(str::split_whitespace) {
        exchange = exchange.add_scope(Scope::new(s.to_string()));
    }
    let response = exchange.request_async(&send).await.map_err(|e| match e {
        RequestTokenError::ServerResponse(r) => OAuthError::Refused {
            url: token_url.to_string(),
            reason: match r.error_description() {
                Some(d) => format!("{}: {d}", r.error()),
                None => r.error().to_string(),
            },
        },
        RequestTokenError::Request(e) => OAuthError::Unreachable {
            url: token_url.to_string(),
            reason: error_chain(&e),
        },
        RequestTokenError::Parse(e, _) => OAuthError::Refused {
            url: token_url.to_string(),
            reason: format!("not a token response: {e}"),
        },
        RequestTokenError::Other(e) => OAuthError::Refused {
            url: token_url.to_string(),
            reason: e,
        },
    })?;
    Ok(OAuthToken {
        token: response.access_token().secret().clone(),
        principal_name: client_id.to_string(),
        lifetime_ms: expiry_ms(response.expires_in().unwrap_or(DEFAULT_LIFETIME)),
    })
}

async fn send(
    http: &reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, reqwest::Error> {
    let response = http.execute(reqwest::Request::try_from(request)?).await?;
    let mut out = http::Response::builder().status(response.status());
    if let Some(headers) = out.headers_mut() {
        headers.extend(response.headers().clone());
    }
    let body = response.bytes().await?.to_vec();
    // The builder only fails on a bad status or header, both taken from a
    // response that already parsed.
    Ok(out.body(body).unwrap_or_default())
}

/// An error with its sources ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

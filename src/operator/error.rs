use super::reasons;
use thiserror::Error;

/// Errors of one reconcile. The `reason()` label names the category in
/// metrics and Events.
#[derive(Debug, Error)]
pub enum Error {
    #[error("kubernetes API: {}", said(.0))]
    Kube(#[from] kube::Error),
    #[error("the resource has no {0} (it was not read from the API server)")]
    MissingMetadata(&'static str),
    #[error("render: {0}")]
    Render(String),
    #[error("rendering {object}: {source}")]
    Serialize {
        object: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The API server's own words for a refused request ("... is forbidden:
/// User ... cannot list ...", with its code and reason), not kube's debug dump
/// of the whole Status: the message goes on the resource's status.
fn said(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => {
            format!("{} ({} {})", s.message, s.code, s.reason)
        }
        other => other.to_string(),
    }
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => reasons::CONFLICT,
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => reasons::FORBIDDEN,
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => reasons::INVALID,
            Error::Kube(_) => reasons::API_ERROR,
            Error::MissingMetadata(_) => reasons::MISSING_METADATA,
            Error::Serialize { .. } | Error::Render(_) => reasons::RENDER_FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn an_api_refusal_is_said_in_the_servers_words() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "message": "deployments.apps is forbidden: User \"x\" cannot patch resource",
            "reason": "Forbidden",
            "code": 403
        }))
        .unwrap_or_default();
        let e = Error::Kube(kube::Error::Api(Box::new(status)));
        assert_eq!(
            e.to_string(),
            "kubernetes API: deployments.apps is forbidden: User \"x\" cannot patch resource (403 Forbidden)"
        );
    }
}

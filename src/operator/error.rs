use super::reasons;
use thiserror::Error;

/// Errors of one reconcile. The `reason()` label names the category in
/// metrics and Events.
#[derive(Debug, Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
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

//! kube-rs clients for the rig's API server, one of which counts the requests it sends.

use super::rig;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub async fn config() -> anyhow::Result<kube::Config> {
    let kubeconfig = Kubeconfig::read_from(rig("k8s", "BGP_KUBECONFIG"))?;
    Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

pub async fn client() -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(config().await?)?)
}

/// A client without kube's retries, for reads through the pod proxy: a
/// writer's /readyz answers 503 while not ready, which kube retries for minutes.
pub async fn pod_reader() -> anyhow::Result<kube::Client> {
    let mut config = config().await?;
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

/// Counts requests by whether they can change state (anything but GET/LIST/WATCH).
#[derive(Clone, Default)]
pub struct RequestCount {
    writes: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl RequestCount {
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
    /// The write requests seen, as "METHOD path".
    pub fn write_log(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|r| !r.starts_with("GET "))
            .collect()
    }
    /// Every request seen, as "METHOD path".
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
    pub fn reset(&self) {
        self.writes.store(0, Ordering::SeqCst);
        self.reads.store(0, Ordering::SeqCst);
        if let Ok(mut l) = self.log.lock() {
            l.clear();
        }
    }
}

/// A client whose every request passes through `count`.
pub async fn counting_client(count: &RequestCount) -> anyhow::Result<kube::Client> {
    let c = count.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        if req.method() == http::Method::GET {
            c.reads.fetch_add(1, Ordering::SeqCst);
        } else {
            c.writes.fetch_add(1, Ordering::SeqCst);
        }
        if let Ok(mut l) = c.log.lock() {
            l.push(format!("{} {}", req.method(), req.uri().path()));
        }
        req
    });
    let builder = kube::client::ClientBuilder::try_from(config().await?)?;
    Ok(builder.with_layer(&layer).build())
}

/// Installs the generated CRD once per test binary and returns a client.
pub async fn install_crd() -> anyhow::Result<kube::Client> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::wait::{await_condition, conditions};
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let client = client().await?;
    DONE.get_or_try_init(|| async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd = bgpersist::crd::definition();
        crds.patch(
            bgpersist::crd::CRD_NAME,
            &PatchParams::apply("bgpersist-tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let established = await_condition(
            crds,
            bgpersist::crd::CRD_NAME,
            conditions::is_crd_established(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(30), established).await??;
        // Established can precede the schema being served; give discovery a beat.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        Ok::<(), anyhow::Error>(())
    })
    .await?;
    Ok(client)
}

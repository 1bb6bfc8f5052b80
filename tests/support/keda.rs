//! KEDA's CRDs on the rig's API server. The rig runs no KEDA (and no HPA
//! controller): tests that need ScaledObjects install the CRDs themselves,
//! from `hack/keda-crds` (KEDA's Go module at a pinned release, cached).

use kube::api::{Api, Patch, PatchParams};
use std::path::PathBuf;
use std::time::Duration;

pub const API_VERSION: &str = "keda.sh/v1alpha1";
const FILES: [&str; 2] = [
    "keda.sh_scaledobjects.yaml",
    "keda.sh_triggerauthentications.yaml",
];

/// The two CRD files, fetched into the cache on first use.
pub fn crd_files() -> anyhow::Result<Vec<PathBuf>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/keda-crds");
    let out = std::process::Command::new(&script).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(FILES.iter().map(|f| dir.join(f)).collect())
}

/// Installs the CRDs once per test binary (server-side apply, the tests'
/// field manager) and waits until discovery serves both kinds.
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_try_init(|| async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let files = tokio::task::spawn_blocking(crd_files).await??;
        for f in files {
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(&std::fs::read_to_string(&f)?)?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            crds.patch(
                &name,
                &PatchParams::apply("bgpersist-tests").force(),
                &Patch::Apply(&crd),
            )
            .await?;
        }
        wait_until_served(client).await
    })
    .await?;
    Ok(())
}

/// Whether discovery lists both kinds under keda.sh/v1alpha1.
pub async fn served(client: &kube::Client) -> bool {
    match client.list_api_group_resources(API_VERSION).await {
        Ok(list) => ["scaledobjects", "triggerauthentications"]
            .iter()
            .all(|n| list.resources.iter().any(|r| r.name == *n)),
        Err(_) => false,
    }
}

async fn wait_until_served(client: &kube::Client) -> anyhow::Result<()> {
    for _ in 0..150 {
        if served(client).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "{API_VERSION} scaledobjects/triggerauthentications not served 30 s after installing KEDA's CRDs"
    )
}

//! The S3 server a bulk bench reads its object from: the rig's moto (the
//! default), or with `BGP_BENCH_S3=s3s-fs` an s3s-fs server (an S3 server
//! over a local directory, crates.io, built by `hack/peers/build s3s-fs` and
//! cached outside the repo), started here on a free port over a directory in
//! the target's tmp and stopped, with its files, when the bench ends.
//!
//! Why a second server: moto copies the whole object for every ranged GET,
//! so the rate of a streamed load falls as the object grows (a 2 GiB load
//! would take about an hour); s3s-fs seeks in a file. s3s-fs does not check
//! `If-Match` on GET, so a run on it does not exercise that guard.

use object_store::aws::{AmazonS3, AmazonS3Builder};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A bucket made for one run, a client for it, and what a writer needs to
/// reach it (as a pod would have it).
pub struct Bucket {
    /// Which server: "moto" or "s3s-fs".
    pub server: &'static str,
    pub name: String,
    pub store: AmazonS3,
    pub writer_env: Vec<(&'static str, String)>,
    _local: Option<LocalServer>,
}

/// A new bucket `<prefix>-<unique>` on the server `BGP_BENCH_S3` names.
pub async fn bucket(prefix: &str) -> anyhow::Result<Bucket> {
    match std::env::var("BGP_BENCH_S3").as_deref() {
        Err(_) | Ok("") | Ok("moto") => {
            let (name, store) = crate::support::cloud::moto_bucket(prefix).await?;
            Ok(Bucket {
                server: "moto",
                name,
                store,
                writer_env: crate::support::cloud::moto_s3_env(),
                _local: None,
            })
        }
        Ok("s3s-fs") => s3s_fs_bucket(prefix).await,
        Ok(other) => anyhow::bail!("BGP_BENCH_S3={other}: expected moto or s3s-fs"),
    }
}

const REGION: &str = "us-east-1";
const ACCESS_KEY: &str = "bgpersist-bench";
const SECRET_KEY: &str = "bgpersist-bench-secret";

async fn s3s_fs_bucket(prefix: &str) -> anyhow::Result<Bucket> {
    let binary = s3s_fs_binary()?;
    let name = crate::support::unique(prefix)
        .replace('_', "-")
        .to_lowercase();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.s3s-fs"));
    // s3s-fs keeps a bucket as a directory under its root.
    std::fs::create_dir_all(root.join(&name))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(root.with_extension("log"))?;
    let child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(&root)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let local = LocalServer { child, root };
    wait_listening(port, Duration::from_secs(10)).await?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let store = AmazonS3Builder::new()
        .with_bucket_name(&name)
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .build()?;
    let writer_env = vec![
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", REGION.into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
    ];
    Ok(Bucket {
        server: "s3s-fs",
        name,
        store,
        writer_env,
        _local: Some(local),
    })
}

fn s3s_fs_binary() -> anyhow::Result<PathBuf> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/peers/build");
    let out = Command::new(script).arg("s3s-fs").output()?;
    anyhow::ensure!(
        out.status.success(),
        "s3s-fs unavailable: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

async fn wait_listening(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The bench's own s3s-fs: stopped and its files removed when dropped,
/// whatever the run's outcome.
struct LocalServer {
    child: Child,
    root: PathBuf,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

//! Leader election on a coordination.k8s.io/v1 Lease: only the holder runs the
//! controller, so two replicas never reconcile the same resource at once.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Releasing is best effort: an unreachable API server must not stall exit;
/// the lease then simply expires.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a lease stays valid after the last renewal.
    pub duration_secs: u64,
    /// Renew this long before expiry; also the tolerated clock skew.
    pub grace_secs: u64,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, renewed about every 10 s.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: String) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity,
            duration_secs: 15,
            grace_secs: 5,
        }
    }
}

/// POD_NAME (downward API) when set, else the hostname, which is the pod name
/// in Kubernetes anyway.
pub fn default_identity() -> String {
    let non_empty = |s: String| {
        let s = s.trim().to_string();
        (!s.is_empty()).then_some(s)
    };
    std::env::var("POD_NAME")
        .ok()
        .and_then(non_empty)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(non_empty)
        })
        .or_else(|| std::env::var("HOSTNAME").ok().and_then(non_empty))
        .unwrap_or_else(|| format!("bgpersist-operator-{}", std::process::id()))
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease timing: grace ({grace}s) must be at least 1s and below duration ({duration}s)")]
    Timing { duration: u64, grace: u64 },
    #[error("lease {lease}: {source}")]
    Lease {
        lease: String,
        source: LeaseManagerError,
    },
    #[error("lease {0}: the lease manager stopped unexpectedly")]
    ManagerStopped(String),
    #[error("lost lease {0} to another instance")]
    Lost(String),
}

/// Resolves when the work must stop: process shutdown or lost leadership.
/// Send + Sync + 'static, as kube's `graceful_shutdown_on` requires.
pub struct Stop(oneshot::Receiver<()>);

impl From<oneshot::Receiver<()>> for Stop {
    /// Stops when the sender fires or is dropped.
    fn from(rx: oneshot::Receiver<()>) -> Self {
        Stop(rx)
    }
}

impl Future for Stop {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A dropped sender means the elector is gone: stop too.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// Waits for the lease, runs `work` while holding it, and releases it after.
///
/// Returns Ok once `shutdown` resolved and the lease was released (or never
/// acquired); `Err(Lost)` when leadership was lost while `work` ran.
pub async fn lead<W, Fut>(
    client: Client,
    cfg: &LeaseConfig,
    shutdown: impl Future<Output = ()>,
    work: W,
) -> Result<(), LeaderError>
where
    W: FnOnce(Stop) -> Fut,
    Fut: Future<Output = ()>,
{
    if cfg.grace_secs == 0 || cfg.grace_secs >= cfg.duration_secs {
        // kube-lease-manager panics on these; refuse them instead.
        return Err(LeaderError::Timing {
            duration: cfg.duration_secs,
            grace: cfg.grace_secs,
        });
    }
    let lease = format!("{}/{}", cfg.namespace, cfg.name);
    let lease_err = |source| LeaderError::Lease {
        lease: lease.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, &cfg.name)
        .with_namespace(&cfg.namespace)
        .with_identity(&cfg.identity)
        // Stable across restarts of the same identity, unlike the random default.
        .with_field_manager(format!("bgpersist-operator-{}", cfg.identity))
        .with_duration(cfg.duration_secs)
        .with_grace(cfg.grace_secs)
        .build()
        .await
        .map_err(lease_err)?;
    let (mut leading, task) = manager.watch().await;
    tokio::pin!(shutdown);

    info!(%lease, identity = %cfg.identity, "waiting for leadership");
    while !*leading.borrow_and_update() {
        tokio::select! {
            () = &mut shutdown => return release(&lease, leading, task).await,
            changed = leading.changed() => if changed.is_err() {
                return Err(stopped(&lease, task).await);
            },
        }
    }
    info!(%lease, identity = %cfg.identity, "acquired leadership");

    let (stop_tx, stop_rx) = oneshot::channel();
    let mut stop_tx = Some(stop_tx);
    let mut lost = false;
    let work = work(Stop(stop_rx));
    tokio::pin!(work);
    loop {
        tokio::select! {
            () = &mut work => break,
            () = &mut shutdown, if stop_tx.is_some() => {
                fire(&mut stop_tx);
            }
            changed = leading.changed(), if stop_tx.is_some() => {
                // A closed channel means the manager task died: nobody renews
                // the lease, so it is as good as lost.
                if changed.is_err() || !*leading.borrow_and_update() {
                    warn!(%lease, "lost leadership; stopping the controller");
                    lost = true;
                    fire(&mut stop_tx);
                }
            }
        }
    }
    release(&lease, leading, task).await?;
    if lost {
        Err(LeaderError::Lost(lease))
    } else {
        Ok(())
    }
}

fn fire(stop: &mut Option<oneshot::Sender<()>>) {
    if let Some(tx) = stop.take() {
        // Err means the work already ended; nothing left to stop.
        let _ = tx.send(());
    }
}

type ManagerTask = JoinHandle<Result<LeaseManager, LeaseManagerError>>;

/// Dropping the receiver makes the manager task release the lease and end.
async fn release(
    lease: &str,
    leading: watch::Receiver<bool>,
    task: ManagerTask,
) -> Result<(), LeaderError> {
    drop(leading);
    match tokio::time::timeout(RELEASE_TIMEOUT, task).await {
        Ok(Ok(Ok(_))) => {
            info!(%lease, "released lease");
            Ok(())
        }
        Ok(Ok(Err(source))) => Err(LeaderError::Lease {
            lease: lease.into(),
            source,
        }),
        Ok(Err(_)) => Err(LeaderError::ManagerStopped(lease.into())),
        Err(_) => {
            warn!(%lease, "releasing the lease timed out; it will expire instead");
            Ok(())
        }
    }
}

async fn stopped(lease: &str, task: ManagerTask) -> LeaderError {
    match task.await {
        Ok(Err(source)) => LeaderError::Lease {
            lease: lease.into(),
            source,
        },
        _ => LeaderError::ManagerStopped(lease.into()),
    }
}

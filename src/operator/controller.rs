//! The reconcile loop: read → validate → render → apply → status.

use super::applier::{Applied, Kind};
use super::cache::{self, Caches};
use super::keda::{self, Keda};
use super::reasons;
use super::render::{self, LABEL_MANAGED_BY, LABEL_RESOURCE, MANAGER};
use super::secrets::{self, SecretSettings, SecretsRead};
use super::status::{self, SecretsOutcome, WriterIssue, WriterOutcome};
use super::validate::{self, Problem};
use super::writer_health;
use super::{Error, FIELD_MANAGER, apply, handover, metrics::Metrics};
use crate::crd::{BackgroundPersistence, BackgroundPersistenceStatus};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How often a resource is reconciled with no event (drift the watches missed).
pub const RESYNC: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Where cloud secrets are read from and how often they are re-read.
    pub secrets: SecretSettings,
    /// Where the KEDA CRDs autoscaled writers need are looked for.
    pub keda: Keda,
    /// The operator's own image, for writers whose resource names none.
    pub defaults: crate::operator::model::Defaults,
    /// The client writer pods' `/readyz` is read with through the pod proxy:
    /// without kube's retries, which take its 503 (an answer: "not ready,
    /// because ...") for an overloaded server and retry until the read times out.
    pub pod_reader: Client,
    /// The watch caches the read step reads live objects from (none: it
    /// reads the API server).
    pub caches: Caches,
    /// At most this many resources reconcile at once (`CONCURRENCY` unless
    /// `--max-concurrent-reconciles` says otherwise).
    pub concurrency: u16,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Context {
            pod_reader: client.clone(),
            client,
            metrics,
            recorder,
            secrets: SecretSettings::from_env(),
            keda: Keda::default(),
            defaults: crate::operator::model::Defaults::from_env(),
            caches: Caches::default(),
            concurrency: CONCURRENCY,
        }
    }

    /// The same context reconciling at most `n` resources at once (at least 1).
    pub fn with_concurrency(mut self, n: u16) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The same context reading live objects from `caches`.
    pub fn with_caches(mut self, caches: Caches) -> Self {
        self.caches = caches;
        self
    }

    /// The same context reading writer pods with `client` (see `pod_reader`).
    pub fn with_pod_reader(mut self, client: Client) -> Self {
        self.pod_reader = client;
        self
    }

    /// The same context with `defaults` in place of the environment's.
    pub fn with_defaults(mut self, defaults: crate::operator::model::Defaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// The same context looking for KEDA as `keda` says.
    pub fn with_keda(mut self, keda: Keda) -> Self {
        self.keda = keda;
        self
    }

    /// The same context reading cloud secrets through `secrets`.
    pub fn with_secrets(mut self, secrets: SecretSettings) -> Self {
        self.secrets = secrets;
        self
    }

    /// When to reconcile `bp` again with no event: every secret refresh
    /// interval while it uses cloud secrets (at least every second), else `RESYNC`.
    pub fn requeue_after(&self, bp: &BackgroundPersistence) -> Duration {
        if secrets::uses_cloud_secrets(bp) {
            self.secrets.refresh.clamp(Duration::from_secs(1), RESYNC)
        } else {
            RESYNC
        }
    }
}

/// What one reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Objects created or changed by server-side apply.
    pub applied: Vec<String>,
    /// Objects deleted because no writer renders them any more.
    pub pruned: Vec<String>,
    /// Whether the status subresource was written.
    pub status_written: bool,
}

/// Runs the controller over every resource until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_selected(ctx, watcher::Config::default(), shutdown).await
}

/// Runs the controller over the resources `selection` matches (label or field selectors).
pub async fn run_selected(
    ctx: Arc<Context>,
    selection: watcher::Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let shutdown = futures::FutureExt::shared(shutdown);
    let controller = Controller::new(
        Api::<BackgroundPersistence>::all(client.clone()),
        selection.any_semantic(),
    )
    .with_config(
        controller::Config::default()
            .debounce(DEBOUNCE)
            .concurrency(ctx.concurrency),
    );
    let resources = controller.store();
    // Deleted resources' condition series go with them.
    let (known, metrics) = (resources.clone(), ctx.metrics.clone());
    let forget = async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let live = known.state().iter().map(|bp| bp.name_any()).collect();
            metrics.retain_resources(&live);
        }
    };
    let keda_served = ctx.keda.served(&client).await.unwrap_or_else(|e| {
        warn!(error = %e, "KEDA discovery failed; KEDA objects are read live");
        false
    });
    let (controller, caches) =
        super::watches::Watches::new(&client, keda_served).attach(controller, &client);
    let ctx = Arc::new(Context::clone(&ctx).with_caches(caches));
    let controller = controller
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile loop");
            }
        });
    // A reconcile stuck on a slow cloud API must not hold up shutdown: every
    // step is idempotent, so an abandoned one simply runs again next start.
    let grace = async {
        shutdown.await;
        tokio::time::sleep(RECONCILE_GRACE).await;
    };
    tokio::select! {
        () = controller => {}
        () = forget => {}
        () = grace => warn!(grace_s = RECONCILE_GRACE.as_secs(), "abandoning in-flight reconciles at shutdown"),
    }
}

/// A reconcile starts this long after the last event for its resource: the
/// echoes of its own writes arrive together and reach the caches first.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// At most this many resources reconcile at once by default. Fewer save
/// memory and slow a first pass over many resources (8: about 8 MiB less,
/// 200 × 9 applied in 22-25 s instead of 18 s; docs/benchmarks.md).
pub const CONCURRENCY: u16 = 32;

/// How often a resource whose writers are not all ready is looked at again,
/// so what their pods report is on its status within seconds.
pub const WAITING_RECHECK: Duration = Duration::from_secs(10);

/// How long in-flight reconciles may finish after shutdown is requested.
pub const RECONCILE_GRACE: Duration = Duration::from_secs(4);

async fn reconcile(bp: Arc<BackgroundPersistence>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let (report, writers_waiting) = reconcile_and_wait(&bp, &ctx).await?;
    if !report.applied.is_empty() || !report.pruned.is_empty() {
        info!(resource = %bp.name_any(), applied = ?report.applied, pruned = ?report.pruned, "reconciled");
    }
    let after = ctx.requeue_after(&bp);
    // Pods that never become ready change no Deployment and send no event:
    // look again soon, so what they report reaches the status.
    Ok(Action::requeue(if writers_waiting {
        after.min(WAITING_RECHECK)
    } else {
        after
    }))
}

fn error_policy(bp: Arc<BackgroundPersistence>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.reason());
    warn!(resource = %bp.name_any(), reason = error.reason(), error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// One full reconcile of one resource; public so tests drive it directly.
pub async fn reconcile_once(bp: &BackgroundPersistence, ctx: &Context) -> Result<Report, Error> {
    Ok(reconcile_and_wait(bp, ctx).await?.0)
}

/// One full reconcile, and whether some writer is not rolled out yet.
async fn reconcile_and_wait(
    bp: &BackgroundPersistence,
    ctx: &Context,
) -> Result<(Report, bool), Error> {
    let name = bp
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let checked = validate::validate_with(bp, &ctx.defaults);
    let mut report = Report::default();
    let fatal: Vec<Problem> = checked.fatal().cloned().collect();

    // Until the secrets are read again, status keeps the versions it showed.
    let mut secrets_outcome = SecretsOutcome {
        applied: bp
            .status
            .as_ref()
            .map(|s| s.secrets.clone())
            .unwrap_or_default(),
        failures: Vec::new(),
    };
    let applied = if fatal.is_empty() {
        match secrets::read(bp, &ctx.secrets, &ctx.client, &ctx.caches).await {
            Ok(read) => {
                let applied = apply_all(bp, &checked, &read, ctx, &mut report).await;
                secrets_outcome = read.outcome;
                applied
            }
            Err(e) => Err(e),
        }
    } else {
        Ok((Vec::new(), Vec::new()))
    };
    let (outcomes, issues, apply_error) = match applied {
        Ok((o, i)) => (o, i, None),
        Err(e) => (Vec::new(), Vec::new(), Some(e)),
    };
    let mut writers = outcomes;
    for w in &bp.spec.writers {
        let problems: Vec<&Problem> = checked
            .problems
            .iter()
            .filter(|p| p.writer.as_deref() == Some(&w.name))
            .collect();
        if !problems.is_empty() || !fatal.is_empty() {
            let all: Vec<&Problem> = if problems.is_empty() {
                fatal.iter().collect()
            } else {
                problems
            };
            writers.push(WriterOutcome::refused(
                &w.name,
                w.default_replica_count.unwrap_or(1),
                &all,
            ));
        }
    }
    let order = |n: &str| {
        bp.spec
            .writers
            .iter()
            .position(|w| w.name == n)
            .unwrap_or(usize::MAX)
    };
    writers.sort_by_key(|w| order(&w.status.name));

    let writers_waiting = writers.iter().any(|w| !w.rolled_out);
    let apply_message = apply_error.as_ref().map(|e| e.to_string());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new_status = status::compute(status::StatusInputs {
        generation: bp.metadata.generation,
        previous: bp.status.as_ref(),
        writers,
        problems: &checked.problems,
        secrets: &secrets_outcome,
        issues: &issues,
        apply_error: apply_message.as_deref(),
        now: &now,
    });
    ctx.metrics.set_conditions(&name, &new_status.conditions);
    report.status_written = write_status(bp, &name, new_status, ctx).await?;
    match apply_error {
        Some(e) => Err(e),
        None => Ok((report, writers_waiting)),
    }
}

async fn apply_all(
    bp: &BackgroundPersistence,
    checked: &validate::Validated<'_>,
    secrets_read: &SecretsRead,
    ctx: &Context,
    report: &mut Report,
) -> Result<(Vec<WriterOutcome>, Vec<WriterIssue>), Error> {
    let name = bp.name_any();
    let rendered = super::plan::render_validated(bp, checked, &secrets_read.inputs)?;
    let ns = bp.spec.common_persistence_specs.namespace.clone();
    let client = &ctx.client;
    let m = &ctx.metrics;

    let mut applied = Applied::new(&ns);
    apply_shared(bp, &rendered, secrets_read, ctx, &mut applied).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    // Discovery, not an error on first use: a cluster without KEDA is fine
    // until a writer asks for autoscaling. A failed look only stops
    // resources that autoscale; the others skip pruning KEDA objects once.
    let wants_keda = rendered.writers.iter().any(|w| w.autoscaling.is_some());
    let keda_served = match ctx.keda.served(client).await {
        Ok(served) => served,
        Err(e) if !wants_keda => {
            warn!(error = %e, "KEDA discovery failed; not pruning KEDA objects this time");
            false
        }
        Err(e) => return Err(e),
    };
    let mut outcomes = Vec::new();
    let mut issues = Vec::new();
    for w in &rendered.writers {
        if w.autoscaling.is_some() && !keda_served {
            // Nothing for this writer, so nothing half-applied: it keeps
            // whatever it had.
            let problem = Problem {
                writer: Some(w.name.clone()),
                field: format!("writers[{}].autoscaling", writer_index(bp, &w.name)),
                reason: ctx.keda.missing_reason(),
            };
            outcomes.push(WriterOutcome::refused(&w.name, w.replicas, &[&problem]));
            issues.push(WriterIssue {
                reason: reasons::KEDA_NOT_INSTALLED,
                problem,
            });
            applied.keep_writer(&w.object_name);
            continue;
        }
        let outcome = apply_writer(w, &deployments, &pdbs, ctx, &ns, &mut applied).await?;
        let outcome = if outcome.rolled_out {
            outcome
        } else {
            let report =
                writer_health::report(&ctx.pod_reader, &ctx.caches, &ns, &name, &w.name).await;
            outcome.with_pod_report(report)
        };
        outcomes.push(outcome);
    }
    // A refused writer keeps what it last had: nothing half-applied, nothing lost.
    for p in &checked.problems {
        if let Some(w) = &p.writer {
            applied.keep_writer(&render::deployment_name(&name, w));
        }
    }
    let selector = format!("{LABEL_RESOURCE}={name},{LABEL_MANAGED_BY}={MANAGER}");
    report.applied.extend(applied.written.iter().cloned());
    report.pruned.extend(
        applied
            .prune(client, &ctx.caches, &name, &selector, keda_served, m)
            .await?,
    );

    if !report.applied.is_empty() || !report.pruned.is_empty() {
        let note = format!(
            "applied: {}; pruned: {}",
            list(&report.applied),
            list(&report.pruned)
        );
        publish(ctx, bp, EventType::Normal, reasons::APPLIED, &note).await;
    }
    Ok((outcomes, issues))
}

/// The objects every writer shares: the Namespace, the ServiceAccount
/// (unless the user's), and the synced Secrets, before the Deployments that
/// mount them.
async fn apply_shared(
    bp: &BackgroundPersistence,
    rendered: &render::Rendered,
    secrets_read: &SecretsRead,
    ctx: &Context,
    applied: &mut Applied,
) -> Result<(), Error> {
    let ns = &bp.spec.common_persistence_specs.namespace;
    let (client, m, caches) = (&ctx.client, &ctx.metrics, &ctx.caches);
    let live_ns = cache::lookup(caches.namespaces.as_ref(), None, ns).map(cache::namespace);
    let (_, wrote) = apply::ensure(
        &Api::<Namespace>::all(client.clone()),
        &rendered.namespace,
        live_ns,
        m,
    )
    .await?;
    applied.record(Kind::Namespace, ns, wrote);
    let sa_api = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let sa_name = &bp.spec.common_persistence_specs.service_account_name;
    // A ServiceAccount that existed before this resource is the user's: taking
    // it over would add our owner reference, and the garbage collector would
    // delete it with the resource. Writers use it as it is.
    // The cache holds only the operator's own (labelled) ServiceAccounts: one
    // missing from it is read, as it may be the user's.
    let live_sa = match cache::lookup(caches.service_accounts.as_ref(), Some(ns), sa_name) {
        cache::Live::Cached(Some(sa)) => Some(sa),
        cache::Live::Cached(None) | cache::Live::Ask => sa_api.get_opt(sa_name).await?,
    };
    let foreign_sa = live_sa
        .as_ref()
        .is_some_and(|live| !owned_by(&live.metadata, bp));
    if !foreign_sa {
        let live = cache::Live::Cached(live_sa);
        let (_, wrote) = apply::ensure(&sa_api, &rendered.service_account, live, m).await?;
        applied.record(Kind::ServiceAccount, sa_name, wrote);
    }
    applied.keep(Kind::ServiceAccount, sa_name);
    // Secrets before the Deployments that mount them.
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for s in &rendered.secrets {
        let live = secrets_read.live.get(&s.name);
        let wrote = secrets::ensure(&secret_api, &s.secret, live, m).await?;
        applied.record(Kind::Secret, &s.name, wrote);
    }
    // Synced Secrets a failed read left as they were.
    for s in &secrets_read.keep {
        applied.keep(Kind::Secret, s);
    }

    Ok(())
}

/// One writer's Deployment, PodDisruptionBudget and KEDA objects, and what
/// the status says of it.
async fn apply_writer(
    w: &render::RenderedWriter,
    deployments: &Api<Deployment>,
    pdbs: &Api<PodDisruptionBudget>,
    ctx: &Context,
    ns: &str,
    applied: &mut Applied,
) -> Result<WriterOutcome, Error> {
    let (client, m, caches) = (&ctx.client, &ctx.metrics, &ctx.caches);
    let deployment = &w.object_name;
    // Before the Deployment, so its new pods never run without it.
    super::network_policy::apply(client, ns, w, caches, m, applied).await?;
    let live = cache::compact(caches.deployments.as_ref(), ns, deployment);
    let (live, wrote) = handover::ensure_deployment(deployments, w, live, m).await?;
    applied.record(Kind::Deployment, deployment, wrote);
    // A writer without one has a stale one pruned (it scaled down to one pod).
    if let Some(pdb) = &w.pdb {
        let live_pdb = cache::compact(caches.pdbs.as_ref(), ns, deployment);
        let (_, wrote) = apply::ensure(pdbs, pdb, live_pdb, m).await?;
        applied.record(Kind::PodDisruptionBudget, deployment, wrote);
    }
    let mut desired = w.replicas;
    let mut scaled_object = None;
    if let Some(a) = &w.autoscaling {
        if let Some(auth) = &a.trigger_authentication {
            let api = keda::trigger_authentications(client, ns);
            let have = keda::cached(
                caches.trigger_authentications.as_ref(),
                ns,
                auth,
                &render::trigger_authentication::api_resource(),
            );
            let (_, wrote) = apply::ensure(&api, auth, have, m).await?;
            applied.record(Kind::TriggerAuthentication, &auth.name_any(), wrote);
        }
        let api = keda::scaled_objects(client, ns);
        let have = keda::cached(
            caches.scaled_objects.as_ref(),
            ns,
            &a.scaled_object,
            &render::scaled_object::api_resource(),
        );
        let (_, wrote) = apply::ensure(&api, &a.scaled_object, have, m).await?;
        applied.record(Kind::ScaledObject, &a.scaled_object.name_any(), wrote);
        // The autoscaler's count is the one to roll out.
        desired = live
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(w.replicas);
        scaled_object = Some(a.scaled_object.name_any());
    }
    let mut outcome = WriterOutcome::applied(&w.name, &live, &w.image, &w.config_hash, desired);
    outcome.status.scaled_object = scaled_object;
    Ok(outcome)
}

/// Position of a writer in the spec (for field paths in messages).
fn writer_index(bp: &BackgroundPersistence, writer: &str) -> usize {
    bp.spec
        .writers
        .iter()
        .position(|w| w.name == writer)
        .unwrap_or_default()
}

/// Whether `meta` carries an owner reference to `bp`.
fn owned_by(meta: &kube::api::ObjectMeta, bp: &BackgroundPersistence) -> bool {
    let uid = bp.metadata.uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid)
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// Writes status only when it differs from what the object already shows.
async fn write_status(
    bp: &BackgroundPersistence,
    name: &str,
    new_status: BackgroundPersistenceStatus,
    ctx: &Context,
) -> Result<bool, Error> {
    if bp.status.as_ref() == Some(&new_status) {
        return Ok(false);
    }
    let degraded = |s: Option<&BackgroundPersistenceStatus>| {
        s.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == status::DEGRADED && c.status == "True")
        })
        .map(|c| c.message.clone())
    };
    let newly_degraded = degraded(Some(&new_status));
    if newly_degraded.is_some() && newly_degraded != degraded(bp.status.as_ref()) {
        let reason = new_status
            .conditions
            .iter()
            .find(|c| c.type_ == status::DEGRADED)
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        publish(
            ctx,
            bp,
            EventType::Warning,
            &reason,
            newly_degraded.as_deref().unwrap_or_default(),
        )
        .await;
    }
    let body = serde_json::json!({
        "apiVersion": BackgroundPersistence::api_version(&()),
        "kind": BackgroundPersistence::kind(&()),
        "status": new_status,
    });
    let api: Api<BackgroundPersistence> = Api::all(ctx.client.clone());
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    ctx.metrics.api_write();
    Ok(true)
}

/// Events are best effort: failing to record one must not fail the reconcile.
async fn publish(
    ctx: &Context,
    bp: &BackgroundPersistence,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &bp.object_ref(&())).await {
        warn!(error = %e, "could not record event");
    } else {
        ctx.metrics.api_write();
    }
}

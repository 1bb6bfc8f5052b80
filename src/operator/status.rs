//! Status: conditions (Ready, Progressing, Degraded, and kstatus's
//! Reconciling and Stalled) with observedGeneration,
//! per-writer rollout, written only when something other than time changed.

use super::reasons;
use super::validate::Problem;
use crate::crd::{BackgroundPersistenceStatus, SecretStatus, WriterStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// kstatus's names (sigs.k8s.io/cli-utils): True while a rollout is under
/// way / while the resource cannot progress without a change.
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// What one reconcile learned about one writer.
#[derive(Clone, Debug)]
pub struct WriterOutcome {
    pub status: WriterStatus,
    pub rolled_out: bool,
    /// Why its pods are not ready, in their own words (`writer_health.rs`).
    pub pod_report: Option<PodReport>,
}

/// A writer pod's reason for not being ready, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    /// BusAuthenticationFailed, BusTopicNotFound, BusUnreachable, ...
    pub reason: &'static str,
    /// "writer '<name>': <the pod's reason>".
    pub message: String,
    /// A configuration that can never work: the resource is Degraded and
    /// Stalled until the spec or the bus changes. Otherwise (an outage) it
    /// is only not Ready, and still Reconciling.
    pub never_works: bool,
}

impl WriterOutcome {
    /// Adds what the writer's pods say; the writer's status message shows it.
    pub fn with_pod_report(mut self, report: Option<PodReport>) -> Self {
        if let Some(r) = &report {
            self.status.message = Some(r.message.clone());
        }
        self.pod_report = report;
        self
    }
}

impl WriterOutcome {
    /// A writer whose Deployment was applied; readiness read off its live status.
    pub fn applied(
        name: &str,
        live: &Deployment,
        image: &str,
        config_hash: &str,
        desired: i32,
    ) -> Self {
        let st = live.status.clone().unwrap_or_default();
        let ready = st.ready_replicas.unwrap_or(0);
        let observed = st.observed_generation.unwrap_or(0) >= live.metadata.generation.unwrap_or(0);
        let rolled_out = observed
            && st.updated_replicas.unwrap_or(0) >= desired
            && st.available_replicas.unwrap_or(0) >= desired
            && ready >= desired
            && st.replicas.unwrap_or(0) <= desired;
        WriterOutcome {
            status: WriterStatus {
                name: name.to_string(),
                deployment: live.metadata.name.clone(),
                desired_replicas: desired,
                ready_replicas: ready,
                image: Some(image.to_string()),
                config_hash: Some(config_hash.to_string()),
                scaled_object: None,
                message: None,
            },
            rolled_out,
            pod_report: None,
        }
    }

    /// A writer refused by validation: nothing applied for it.
    pub fn refused(name: &str, desired: i32, problems: &[&Problem]) -> Self {
        let message = problems
            .iter()
            .map(|p| format!("spec.{}: {}", p.field, p.reason))
            .collect::<Vec<_>>()
            .join("; ");
        WriterOutcome {
            status: WriterStatus {
                name: name.to_string(),
                desired_replicas: desired,
                message: Some(message),
                ..Default::default()
            },
            rolled_out: false,
            pod_report: None,
        }
    }
}

/// The cloud secrets' part of one reconcile: the versions applied, and the
/// secrets that could not be synced (each a Degraded reason and a message that
/// names the cloud secret and the spec field, never a value).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecretsOutcome {
    pub applied: Vec<SecretStatus>,
    pub failures: Vec<SecretIssue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretIssue {
    /// SecretNotFound, SecretAccessDenied, SecretMalformed, ...
    pub reason: &'static str,
    pub message: String,
}

/// A writer the cluster cannot run as specified (for example autoscaling
/// without KEDA installed): nothing is applied for it, and the resource is
/// degraded with `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterIssue {
    pub reason: &'static str,
    pub problem: Problem,
}

/// Everything one reconcile's status is computed from.
pub struct StatusInputs<'a> {
    pub generation: Option<i64>,
    pub previous: Option<&'a BackgroundPersistenceStatus>,
    pub writers: Vec<WriterOutcome>,
    /// Validation problems of the spec.
    pub problems: &'a [Problem],
    /// Cloud secrets: a secret that could not be synced degrades the
    /// resource with its own reason (after an apply failure).
    pub secrets: &'a SecretsOutcome,
    /// Writers the cluster cannot run: they degrade the resource with their
    /// own reason (after apply and secret failures, before validation problems).
    pub issues: &'a [WriterIssue],
    /// Set when applying failed.
    pub apply_error: Option<&'a str>,
    pub now: &'a Time,
}

static NO_SECRETS: SecretsOutcome = SecretsOutcome {
    applied: Vec::new(),
    failures: Vec::new(),
};

impl<'a> StatusInputs<'a> {
    /// No previous status, writers, problems, secrets, issues or apply error.
    pub fn new(generation: Option<i64>, now: &'a Time) -> Self {
        StatusInputs {
            generation,
            previous: None,
            writers: Vec::new(),
            problems: &[],
            secrets: &NO_SECRETS,
            issues: &[],
            apply_error: None,
            now,
        }
    }
}

/// The status one reconcile leads to.
pub fn compute(inputs: StatusInputs<'_>) -> BackgroundPersistenceStatus {
    let StatusInputs {
        generation,
        previous,
        writers,
        problems,
        secrets,
        issues,
        apply_error,
        now,
    } = inputs;
    let ready_count = writers.iter().filter(|w| w.rolled_out).count();
    let total = writers.len();
    // A writer with a message was refused, unless the message is its pods'.
    let rolling: Vec<&str> = writers
        .iter()
        .filter(|w| !w.rolled_out && (w.status.message.is_none() || w.pod_report.is_some()))
        .map(|w| w.status.name.as_str())
        .collect();
    let fatal = problems.iter().any(|p| p.writer.is_none());
    let reports: Vec<&PodReport> = writers
        .iter()
        .filter_map(|w| w.pod_report.as_ref())
        .collect();
    let joined = |rs: &[&PodReport]| {
        rs.iter()
            .map(|r| r.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let never_works: Vec<&PodReport> = reports.iter().copied().filter(|r| r.never_works).collect();

    let (degraded, degraded_reason, degraded_msg) = if let Some(e) = apply_error {
        (true, reasons::APPLY_FAILED, e.to_string())
    } else if let Some(first) = secrets.failures.first() {
        let messages = secrets.failures.iter().map(|f| f.message.clone());
        let others = issues
            .iter()
            .map(|i| &i.problem)
            .chain(problems)
            .map(|p| p.to_string());
        (
            true,
            first.reason,
            messages.chain(others).collect::<Vec<_>>().join("; "),
        )
    } else if let Some(first) = issues.first() {
        let messages = issues
            .iter()
            .map(|i| &i.problem)
            .chain(problems)
            .map(|p| p.to_string());
        (true, first.reason, messages.collect::<Vec<_>>().join("; "))
    } else if !problems.is_empty() {
        let reason = if fatal {
            reasons::INVALID_SPEC
        } else {
            reasons::INVALID_WRITERS
        };
        (
            true,
            reason,
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    } else if let Some(first) = never_works.first() {
        (true, first.reason, joined(&never_works))
    } else {
        (
            false,
            reasons::AS_EXPECTED,
            "every writer is valid and applied".to_string(),
        )
    };
    let (progressing, prog_reason, prog_msg) = if rolling.is_empty() {
        (
            false,
            reasons::ROLLOUT_COMPLETE,
            "no rollout in progress".to_string(),
        )
    } else {
        (
            true,
            reasons::ROLLING_OUT,
            format!(
                "waiting for writers to become ready: {}",
                rolling.join(", ")
            ),
        )
    };
    let ready = !degraded && ready_count == total;
    let (ready_reason, ready_msg) = if ready {
        (
            reasons::ALL_WRITERS_READY,
            format!("{ready_count}/{total} writers ready"),
        )
    } else if degraded {
        (degraded_reason, degraded_msg.clone())
    } else if let Some(first) = reports.first() {
        (
            first.reason,
            format!("{ready_count}/{total} writers ready; {}", joined(&reports)),
        )
    } else {
        (
            reasons::WRITERS_NOT_READY,
            format!("{ready_count}/{total} writers ready"),
        )
    };

    let conditions = vec![
        condition(
            previous,
            READY,
            ready,
            ready_reason,
            &ready_msg,
            generation,
            now,
        ),
        condition(
            previous,
            PROGRESSING,
            progressing,
            prog_reason,
            &prog_msg,
            generation,
            now,
        ),
        condition(
            previous,
            DEGRADED,
            degraded,
            degraded_reason,
            &degraded_msg,
            generation,
            now,
        ),
        condition(
            previous,
            RECONCILING,
            progressing && !degraded,
            prog_reason,
            &prog_msg,
            generation,
            now,
        ),
        condition(
            previous,
            STALLED,
            degraded,
            degraded_reason,
            &degraded_msg,
            generation,
            now,
        ),
    ];
    BackgroundPersistenceStatus {
        observed_generation: generation,
        conditions,
        writers_ready: Some(format!("{ready_count}/{total}")),
        writers: writers.into_iter().map(|w| w.status).collect(),
        secrets: secrets.applied.clone(),
    }
}

/// A condition that keeps its previous transition time unless its status flips,
/// so an unchanged state never rewrites status (no GitOps churn).
fn condition(
    previous: Option<&BackgroundPersistenceStatus>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status);
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        // The API server caps messages at 32 KiB.
        message: message.chars().take(4096).collect(),
        observed_generation: generation,
        last_transition_time: last
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn deployment(ready: i32, generation: i64, observed: i64) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = Some("bp-w".into());
        d.metadata.generation = Some(generation);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(ready),
            ready_replicas: Some(ready),
            updated_replicas: Some(ready),
            available_replicas: Some(ready),
            ..Default::default()
        });
        d
    }

    #[test]
    fn ready_when_every_writer_rolled_out() {
        let w = WriterOutcome::applied("w", &deployment(2, 3, 3), "img", "h", 2);
        let now = t(100);
        let s = compute(StatusInputs {
            writers: vec![w],
            ..StatusInputs::new(Some(7), &now)
        });
        let ready = s
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| (c.status.as_str(), c.observed_generation));
        assert_eq!(ready, Some(("True", Some(7))));
        assert_eq!(s.writers_ready.as_deref(), Some("1/1"));
        assert_eq!(s.observed_generation, Some(7));
    }

    #[test]
    fn stale_observed_generation_is_still_progressing() {
        let w = WriterOutcome::applied("w", &deployment(1, 4, 3), "img", "h", 1);
        let now = t(100);
        let s = compute(StatusInputs {
            writers: vec![w],
            ..StatusInputs::new(Some(1), &now)
        });
        let by = |ty: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ty)
                .map(|c| c.status.clone())
        };
        assert_eq!(by(READY).as_deref(), Some("False"));
        assert_eq!(by(PROGRESSING).as_deref(), Some("True"));
    }

    #[test]
    fn unchanged_state_keeps_transition_times() {
        let w = || WriterOutcome::applied("w", &deployment(1, 1, 1), "img", "h", 1);
        let (t100, t200) = (t(100), t(200));
        let first = compute(StatusInputs {
            writers: vec![w()],
            ..StatusInputs::new(Some(1), &t100)
        });
        let second = compute(StatusInputs {
            previous: Some(&first),
            writers: vec![w()],
            ..StatusInputs::new(Some(1), &t200)
        });
        assert_eq!(
            first, second,
            "a resync with nothing new must produce an identical status"
        );
    }

    fn degraded(s: &BackgroundPersistenceStatus) -> Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .cloned()
            .unwrap_or_else(|| panic!("no Degraded"))
    }

    #[test]
    fn writer_issue_degrades_with_its_own_reason_before_problems() {
        let issue = WriterIssue {
            reason: "KedaNotInstalled",
            problem: Problem {
                writer: Some("a".into()),
                field: "writers[0].autoscaling".into(),
                reason: "KEDA ScaledObject CRD not installed".into(),
            },
        };
        let invalid = Problem {
            writer: Some("b".into()),
            field: "writers[1].image".into(),
            reason: "no image".into(),
        };
        let now = t(1);
        let s = compute(StatusInputs {
            writers: vec![WriterOutcome::refused("a", 1, &[&issue.problem])],
            problems: std::slice::from_ref(&invalid),
            issues: std::slice::from_ref(&issue),
            ..StatusInputs::new(Some(1), &now)
        });
        let d = degraded(&s);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "KedaNotInstalled")
        );
        assert_eq!(
            d.message,
            "writer a: spec.writers[0].autoscaling: KEDA ScaledObject CRD not installed; \
             writer b: spec.writers[1].image: no image"
        );
    }

    #[test]
    fn refused_writer_degrades_with_field_and_reason() {
        let p = Problem {
            writer: Some("w".into()),
            field: "writers[0].image".into(),
            reason: "no image".into(),
        };
        let now = t(1);
        let s = compute(StatusInputs {
            writers: vec![WriterOutcome::refused("w", 1, &[&p])],
            problems: std::slice::from_ref(&p),
            ..StatusInputs::new(Some(1), &now)
        });
        let d = degraded(&s);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "InvalidWriters")
        );
        assert!(
            d.message
                .contains("writer w: spec.writers[0].image: no image"),
            "{}",
            d.message
        );
        assert_eq!(
            s.writers[0].message.as_deref(),
            Some("spec.writers[0].image: no image")
        );
    }

    fn with_report(text: &str) -> BackgroundPersistenceStatus {
        let report = crate::operator::writer_health::classify("w", text);
        let w = WriterOutcome::applied("w", &deployment(0, 1, 1), "img", "h", 1)
            .with_pod_report(Some(report));
        let now = t(100);
        compute(StatusInputs {
            writers: vec![w],
            ..StatusInputs::new(Some(1), &now)
        })
    }

    fn of(s: &BackgroundPersistenceStatus, ty: &str) -> (String, String, String) {
        s.conditions
            .iter()
            .find(|c| c.type_ == ty)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            .unwrap_or_default()
    }

    #[test]
    fn a_configuration_that_never_works_degrades_and_stalls() {
        let text = "bus not reached: topic 'result-bus-1' does not exist; create it or correct the resource";
        let s = with_report(text);
        let expected = format!("writer 'w': {text}");
        for ty in [DEGRADED, STALLED, READY] {
            let (status, reason, message) = of(&s, ty);
            let want = if ty == READY { "False" } else { "True" };
            assert_eq!(
                (status.as_str(), reason.as_str(), message.as_str()),
                (want, reasons::BUS_TOPIC_NOT_FOUND, expected.as_str()),
                "{ty}"
            );
        }
        assert_eq!(of(&s, RECONCILING).0, "False");
        assert_eq!(s.writers[0].message.as_deref(), Some(expected.as_str()));
    }

    #[test]
    fn an_outage_is_not_ready_but_still_reconciling() {
        let s =
            with_report("bus not reached: kafka: broker b:9092 unreachable: Connection refused");
        let (status, reason, message) = of(&s, READY);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", reasons::BUS_UNREACHABLE)
        );
        assert!(
            message.starts_with("0/1 writers ready; writer 'w': bus not reached"),
            "{message}"
        );
        assert_eq!(of(&s, DEGRADED).0, "False");
        assert_eq!(of(&s, STALLED).0, "False");
        assert_eq!(
            of(&s, RECONCILING).0,
            "True",
            "kstatus keeps waiting, not Current"
        );
    }
}

//! QUERY_MIRROR_CONSUMER on Kafka, replaying against an HTTP server started
//! by the test: request shape, retries (5xx then 200), 4xx as an outcome,
//! the rate limit, exhausted replays pausing (nothing resent, nothing
//! dropped) or dead-lettered, poison to the DLQ while the rest flows.

use crate::harness::*;
use crate::mirror_target::MirrorTarget;
use crate::pg_store::{drained, kafka_letters};
use crate::support::{rig, unique};
use bgpersist::formats::Message;
use bgpersist::formats::v1::QueryLogEntry;
use std::time::{Duration, Instant};

pub fn logged_query(operation_id: &str, request_json: &str) -> Vec<u8> {
    QueryLogEntry {
        operation_id: operation_id.into(),
        environment_id: "env-test".into(),
        deployment_id: "dep-1".into(),
        operation_kind: "online_query".into(),
        query_name: "user_features".into(),
        request_json: request_json.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

pub fn request_of(i: usize) -> String {
    format!(r#"{{"inputs":{{"user.id":{i}}},"outputs":["user.age"]}}"#)
}

fn mirror_env(
    topic: &str,
    dlq: Option<&str>,
    group: &str,
    host: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("BGP_WRITER_TYPE", "QUERY_MIRROR_CONSUMER".to_string()),
        ("BGP_WRITER_NAME", "mirror".into()),
        ("BGP_RESOURCE", "test".into()),
        ("BGP_BUS_BACKEND", "KAFKA".into()),
        ("BGP_SUBSCRIPTION", topic.into()),
        (
            "BGP_KAFKA_BOOTSTRAP_SERVERS",
            rig("kafka", "BGP_KAFKA_PLAINTEXT"),
        ),
        ("BGP_KAFKA_CONSUMER_GROUP", group.into()),
        ("BGP_API_SERVER_HOST", host.into()),
        ("BGP_MIRROR_MAX_BACKOFF_MS", "50".into()),
    ];
    if let Some(d) = dlq {
        env.push(("BGP_DLQ_TOPIC", d.into()));
    }
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_each_query_once_retries_5xx_records_4xx_and_dead_letters_poison()
-> anyhow::Result<()> {
    let target = MirrorTarget::start().await?;
    let (topic, dlq, group) = (unique("qlog"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 3), (&dlq, 1)]).await?;
    let run = unique("op");
    let ops: Vec<String> = (0..20).map(|i| format!("{run}-{i}")).collect();
    let (flaky, bad) = (format!("{run}-flaky"), format!("{run}-bad"));
    target.script(&flaky, &[503, 500]);
    target.script(&bad, &[422]);
    let mut payloads: Vec<Vec<u8>> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| logged_query(op, &request_of(i)))
        .collect();
    payloads.push(logged_query(&flaky, &request_of(100)));
    payloads.push(logged_query(&bad, &request_of(101)));
    let poison = [
        b"\x0a\xff\xff definitely not a QueryLogEntry".to_vec(),
        logged_query(&format!("{run}-broken"), "{oops"),
    ];
    payloads.insert(5, poison[0].clone());
    payloads.insert(15, poison[1].clone());
    produce(&topic, &payloads).await?;

    let mut writer = Writer::start(&mirror_env(
        &topic,
        Some(&dlq),
        &group,
        &target.host(),
        &[("BGP_MIRROR_RATE_PER_SECOND", "500")],
    ))?;
    drained(&topic, &group, 3, payloads.len())
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;

    let got = target.by_operation();
    for (i, op) in ops.iter().enumerate() {
        let reqs = got.get(op).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(reqs.len(), 1, "{op} replayed {} times", reqs.len());
        let r = &reqs[0];
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/query/online")
        );
        assert_eq!(r.body, request_of(i), "the logged request, unchanged");
        assert_eq!(r.header("x-bgpersist-mirror"), Some("replay"));
        assert_eq!(r.header("x-bgpersist-mirror-attempt"), Some("1"));
        assert_eq!(
            r.header("x-bgpersist-original-environment-id"),
            Some("env-test")
        );
        assert_eq!(
            r.header("x-bgpersist-original-deployment-id"),
            Some("dep-1")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            r.header("user-agent")
                .is_some_and(|u| u.starts_with("bgpersist-mirror/")),
            "{:?}",
            r.headers
        );
    }
    // 503, 500, then 200: three attempts of the same request, numbered.
    let tries = got.get(&flaky).cloned().unwrap_or_default();
    let attempts: Vec<&str> = tries
        .iter()
        .filter_map(|r| r.header("x-bgpersist-mirror-attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(tries.iter().all(|r| r.body == request_of(100)));
    // 422 is the answer: recorded once, never retried, not dead-lettered.
    assert_eq!(got.get(&bad).map(Vec::len), Some(1));
    assert!(!got.contains_key(&format!("{run}-broken")));
    assert_eq!(target.count(), 20 + 3 + 1);

    let mut letters = kafka_letters(&dlq, 2).await?;
    letters.sort_by_key(|(p, _)| poison.iter().position(|q| q == p));
    let reasons: Vec<&str> = letters
        .iter()
        .map(|(_, h)| h.get("bgp-dlq-error-message").map_or("", String::as_str))
        .collect();
    for ((payload, headers), expected) in letters.iter().zip(&poison) {
        assert_eq!(payload, expected);
        assert_eq!(
            headers.get("bgp-dlq-error-class").map(String::as_str),
            Some("decode")
        );
        assert_eq!(
            headers.get("bgp-dlq-writer").map(String::as_str),
            Some("mirror")
        );
        assert_eq!(headers.get("bgp-dlq-original-topic"), Some(&topic));
    }
    assert!(
        reasons[0].contains("not a bgpersist.bus.v1.QueryLogEntry"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("request_json is not JSON"),
        "{reasons:?}"
    );

    let metrics = writer.metrics();
    for line in [
        "bgpersist_mirror_replays_total{class=\"2xx\"} 21",
        "bgpersist_mirror_replays_total{class=\"4xx\"} 1",
        "bgpersist_mirror_attempts_total{class=\"5xx\"} 2",
        "bgpersist_mirror_attempts_total{class=\"2xx\"} 21",
        "bgpersist_mirror_request_duration_seconds_count{class=\"2xx\"} 21",
        "bgpersist_mirror_request_duration_seconds_count{class=\"5xx\"} 2",
        "bgpersist_writer_messages_dead_lettered_total 2",
        "bgpersist_writer_records_written_total 22",
    ] {
        assert!(
            has_sample(&metrics, line),
            "{line} missing from:\n{metrics}"
        );
    }
    let log = writer.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("query replayed") && l.contains(&bad) && l.contains("status=422")),
        "no outcome line for the 422:\n{log}"
    );
    writer.signal("TERM")?;
    assert_eq!(
        writer.wait_exit(Duration::from_secs(15))?,
        Some(0),
        "{}",
        writer.log_text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spaces_replays_out() -> anyhow::Result<()> {
    const RATE: f64 = 10.0;
    const N: usize = 40;
    let target = MirrorTarget::start().await?;
    let (topic, group) = (unique("qlog"), unique("grp"));
    create_topics(&[(&topic, 2)]).await?;
    let run = unique("op");
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| logged_query(&format!("{run}-{i}"), &request_of(i)))
        .collect();
    produce(&topic, &payloads).await?;

    // Every request the writer sends is granted after this instant.
    let t0 = Instant::now();
    let writer = Writer::start(&mirror_env(
        &topic,
        None,
        &group,
        &target.host(),
        &[("BGP_MIRROR_RATE_PER_SECOND", "10")],
    ))?;
    drained(&topic, &group, 2, N)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;

    // A backlog of N is replayed no faster than RATE: the k-th arrival (from
    // 0) comes at least (k - 1) / RATE after t0, one spare permit for the
    // limiter's rounding. A slower machine only makes arrivals later.
    let mut arrivals: Vec<f64> = target
        .received()
        .iter()
        .map(|r| (r.at - t0).as_secs_f64())
        .collect();
    arrivals.sort_by(f64::total_cmp);
    assert_eq!(arrivals.len(), N, "each query once");
    for (k, at) in arrivals.iter().enumerate() {
        let earliest = (k as f64 - 1.0) / RATE;
        assert!(
            *at >= earliest,
            "arrival {k} at {at:.3}s, before {earliest:.3}s: more than {RATE}/s"
        );
    }
    // Most attempts found no permit and waited: the limiter, not the bus, paced them.
    let waited = writer
        .metric("bgpersist_mirror_rate_limited_total")
        .unwrap_or(0.0);
    assert!(
        waited >= (N / 2) as f64,
        "only {waited} of {N} attempts waited"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_replays_pause_the_batch_and_answered_ones_are_not_resent() -> anyhow::Result<()>
{
    let target = MirrorTarget::start().await?;
    let (topic, group) = (unique("qlog"), unique("grp"));
    create_topics(&[(&topic, 1)]).await?;
    let run = unique("op");
    let ops: Vec<String> = (0..8).map(|i| format!("{run}-{i}")).collect();
    let down = format!("{run}-down");
    // Two attempts per round: three rounds exhausted, the fourth answered.
    target.script(&down, &[503, 503, 502, 503, 504, 503]);
    let mut payloads: Vec<Vec<u8>> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| logged_query(op, &request_of(i)))
        .collect();
    payloads.insert(3, logged_query(&down, &request_of(99)));
    produce(&topic, &payloads).await?;

    // No DLQ topic: a dead letter would stall the writer and fail the drain below.
    let writer = Writer::start(&mirror_env(
        &topic,
        None,
        &group,
        &target.host(),
        &[
            ("BGP_MIRROR_RATE_PER_SECOND", "200"),
            ("BGP_MIRROR_MAX_ATTEMPTS", "2"),
        ],
    ))?;
    drained(&topic, &group, 1, payloads.len())
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;

    let got = target.by_operation();
    for op in &ops {
        assert_eq!(
            got.get(op).map(Vec::len),
            Some(1),
            "{op}: resent on batch retry"
        );
    }
    let attempts: Vec<&str> = got
        .get(&down)
        .map(|v| {
            v.iter()
                .filter_map(|r| r.header("x-bgpersist-mirror-attempt"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(attempts, ["1", "2", "1", "2", "1", "2", "1"]);
    let m = writer.metrics();
    for line in [
        "bgpersist_mirror_replays_total{class=\"exhausted\"} 3",
        "bgpersist_mirror_replays_total{class=\"2xx\"} 9",
        "bgpersist_writer_write_retries_total 3",
        "bgpersist_writer_records_written_total 9",
    ] {
        assert!(has_sample(&m, line), "{line} missing from:\n{m}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dead_letter_mode_an_exhausted_replay_is_dead_lettered() -> anyhow::Result<()> {
    let target = MirrorTarget::start().await?;
    let (topic, dlq, group) = (unique("qlog"), unique("dlq"), unique("grp"));
    create_topics(&[(&topic, 1), (&dlq, 1)]).await?;
    let run = unique("op");
    let broken = format!("{run}-broken");
    target.script(&broken, &[500; 10]);
    let mut payloads: Vec<Vec<u8>> = (0..5)
        .map(|i| logged_query(&format!("{run}-{i}"), &request_of(i)))
        .collect();
    let dead = logged_query(&broken, &request_of(7));
    payloads.insert(2, dead.clone());
    produce(&topic, &payloads).await?;

    let writer = Writer::start(&mirror_env(
        &topic,
        Some(&dlq),
        &group,
        &target.host(),
        &[
            ("BGP_MIRROR_RATE_PER_SECOND", "200"),
            ("BGP_MIRROR_MAX_ATTEMPTS", "2"),
            ("BGP_MIRROR_ON_EXHAUSTED", "dead-letter"),
        ],
    ))?;
    drained(&topic, &group, 1, payloads.len())
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))?;
    let letters = kafka_letters(&dlq, 1).await?;
    let (payload, headers) = &letters[0];
    assert_eq!(payload, &dead);
    assert_eq!(
        headers.get("bgp-dlq-error-class").map(String::as_str),
        Some("rejected")
    );
    let reason = headers
        .get("bgp-dlq-error-message")
        .cloned()
        .unwrap_or_default();
    assert!(
        reason.contains("2 attempts") && reason.contains("500"),
        "{reason}"
    );
    let got = target.by_operation();
    assert_eq!(got.get(&broken).map(Vec::len), Some(2));
    assert_eq!(target.count(), 5 + 2);
    Ok(())
}

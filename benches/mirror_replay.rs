//! Kafka → QUERY_MIRROR_CONSUMER replay throughput beside a direct reqwest
//! loop against the same local HTTP server, in one run (not a test):
//!
//! 1. the ceiling: this process POSTs the same N requests (same body and
//!    headers) to the server, 64 in flight (the writer's default concurrency);
//! 2. the release writer binary replaying N logged queries from Kafka with
//!    the rate limit lifted (`BGP_MIRROR_RATE_PER_SECOND=1000000`):
//!    replays/s from its /metrics, first consumed message to last answer;
//! 3. the writer at the default 50/s on 500 more queries: the rate it holds.
//!
//! The server answers 200 with a small JSON body at once; it runs in this
//! process, so ceiling and writer share the machine with it alike.
//!
//!   hack/rig up kafka && cargo bench --bench mirror_replay
//!   BGP_BENCH_REPLAYS=50000 cargo bench --bench mirror_replay

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use bgpersist::formats::Message;
use bgpersist::formats::v1::QueryLogEntry;
use common::env_or;
use common::kafka::{self, PARTITIONS};
use common::process::{WriterProcess, metric};
use common::report::machine;
use futures::StreamExt;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::unique;

const CONCURRENCY: usize = 64;

fn request(i: usize) -> String {
    format!(
        r#"{{"inputs":{{"user.id":{i},"user.country":"c{}"}},"outputs":["user.age","user.score","user.country","user.vip","user.visits"],"context":{{"environment":"bench","tags":["mirror","replay"]}},"include_meta":true}}"#,
        i % 200
    )
}

fn entry(i: usize) -> Vec<u8> {
    QueryLogEntry {
        operation_id: format!("op-{i}"),
        environment_id: "bench".into(),
        deployment_id: "dep-1".into(),
        query_name: "user_features".into(),
        request_json: request(i),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A fresh topic with logged queries `from..to`.
async fn topic_with(
    admin: &AdminClient<DefaultClientContext>,
    from: usize,
    to: usize,
) -> anyhow::Result<String> {
    let topic = unique("bench-qlog");
    kafka::create_topic(admin, &topic).await?;
    let entries = (from..to).map(|i| (i.to_string(), entry(i)));
    kafka::produce(&kafka::producer(&[])?, &topic, entries, 0, kafka::BACKOFF).await?;
    Ok(topic)
}

/// The local API server: counts requests, answers 200 at once.
async fn server(count: Arc<AtomicU64>) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let count = count.clone();
        async move {
            let _ = axum::body::to_bytes(req.into_body(), 1 << 20).await;
            count.fetch_add(1, Ordering::Relaxed);
            r#"{"data":[{"field":"user.age","value":42}],"errors":[]}"#
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// N POSTs straight from this process; requests/s.
async fn ceiling(url: &str, n: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let started = Instant::now();
    let mut results = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let resp = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-bgpersist-mirror", "replay")
                    .header("x-bgpersist-original-operation-id", format!("op-{i}"))
                    .body(request(i))
                    .send()
                    .await?;
                let status = resp.status();
                resp.bytes().await?;
                anyhow::ensure!(status.is_success(), "{status}");
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn writer(topic: &str, host: &str, rate: &str) -> anyhow::Result<WriterProcess> {
    let env = kafka::writer_env(
        "QUERY_MIRROR_CONSUMER",
        "mirror",
        topic,
        [
            ("BGP_API_SERVER_HOST", host.into()),
            ("BGP_MIRROR_RATE_PER_SECOND", rate.into()),
        ],
    );
    WriterProcess::start(&unique("bench-mirror"), &env)
}

async fn run() -> anyhow::Result<()> {
    let n: usize = env_or("BGP_BENCH_REPLAYS", 20_000);
    println!(
        "mirror_replay: {n} logged queries ({} byte requests), {PARTITIONS} partitions",
        request(0).len()
    );
    println!("  machine: {}", machine());
    let count = Arc::new(AtomicU64::new(0));
    let addr = server(count.clone()).await?;
    let host = format!("http://{addr}");
    let url = format!("{host}/v1/query/online");
    let admin = kafka::admin()?;
    let topic = topic_with(&admin, 0, n).await?;

    let direct = ceiling(&url, n).await?;
    println!("  [ceiling] reqwest, {CONCURRENCY} in flight:  {direct:>9.0} requests/s");
    anyhow::ensure!(count.load(Ordering::SeqCst) == n as u64);

    let replays = |m: &str| metric(m, "bgpersist_mirror_replays_total{class=\"2xx\"}");
    let mut w = writer(&topic, &host, "1000000")?;
    let (secs, before) = w
        .time_until(Duration::from_secs(900), replays, n as f64)
        .await?;
    let rate = (n as f64 - before) / secs;
    w.stop();
    println!("  [writer]  rate limit lifted:     {rate:>9.0} replays/s");
    println!("  writer / ceiling: {:.0}%", 100.0 * rate / direct);
    anyhow::ensure!(
        count.load(Ordering::SeqCst) == 2 * n as u64,
        "each replayed once"
    );

    let limited = topic_with(&admin, n, n + 500).await?;
    let mut w = writer(&limited, &host, "50")?;
    let (secs, before) = w
        .time_until(Duration::from_secs(120), replays, 500.0)
        .await?;
    w.stop();
    println!(
        "  [writer]  default limit 50/s:    {:>9.1} replays/s over {secs:.1} s",
        (500.0 - before) / secs
    );
    kafka::delete_topics(&admin, &[&topic, &limited]).await
}

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

//! Produces sample result-bus messages (`bgpersist.bus.v1.ResultMessage`,
//! docs/bus-formats.md) to a Kafka topic, creating the topic when missing:
//! what an ONLINE_WRITER consumes. Used by `hack/demo`.
//!
//!   cargo run --example produce_results -- --bootstrap 127.0.0.1:19092 \
//!       --topic result-bus-1 [--count 5] [--namespace user]
//!
//! Prints one line per entity: `<namespace>/<pkey> <observed_at_micros> <features>`,
//! the Redis key the online writer fills and the timestamp it stores.

use bgpersist::formats::Message;
use bgpersist::formats::v1::{FeatureValue, ResultMessage, Value, value::Kind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Args {
    bootstrap: String,
    topic: String,
    count: u32,
    namespace: String,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        bootstrap: String::new(),
        topic: String::new(),
        count: 5,
        namespace: "user".into(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--bootstrap" => out.bootstrap = value()?,
            "--topic" => out.topic = value()?,
            "--namespace" => out.namespace = value()?,
            "--count" => {
                out.count = value()?
                    .parse()
                    .map_err(|_| "--count: not a number".to_string())?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if out.bootstrap.is_empty() || out.topic.is_empty() {
        return Err("--bootstrap and --topic are required".into());
    }
    Ok(out)
}

const NAMES: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
];

/// A small deterministic mix, so values differ per entity and per run.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn value(namespace: &str, pkey: &str, feature: &str, kind: Kind, ts: i64) -> FeatureValue {
    FeatureValue {
        namespace: namespace.into(),
        feature: feature.into(),
        pkey: pkey.into(),
        value: Some(Value { kind: Some(kind) }),
        observed_at_micros: ts,
        ..Default::default()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("produce_results: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("produce_results: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("produce_results: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.bootstrap);
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| format!("admin client: {e}"))?;
    let topic = NewTopic::new(&args.topic, 1, TopicReplication::Fixed(1));
    let created = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .map_err(|e| format!("create topic {}: {e}", args.topic))?;
    for result in created {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("create topic {t}: {code}")),
        }
    }

    let producer: FutureProducer = config
        .clone()
        .set("message.timeout.ms", "10000")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let ts = i64::try_from(now.as_micros()).map_err(|e| e.to_string())?;
    let seed = now.as_secs();
    for i in 1..=args.count {
        let pkey = i.to_string();
        let r = mix(seed ^ u64::from(i));
        let age = 18 + (r % 60) as i64;
        let score = ((r >> 8) % 1000) as f64 / 1000.0;
        let name = NAMES[((r >> 20) % NAMES.len() as u64) as usize];
        let active = (r >> 32).is_multiple_of(2);
        let ns = args.namespace.as_str();
        let message = ResultMessage {
            operation_id: format!("demo-{seed}-{i}"),
            environment_id: "demo".into(),
            deployment_id: "demo".into(),
            produced_at_micros: ts,
            values: vec![
                value(ns, &pkey, "age", Kind::IntValue(age), ts),
                value(ns, &pkey, "score", Kind::DoubleValue(score), ts),
                value(ns, &pkey, "name", Kind::StringValue(name.into()), ts),
                value(ns, &pkey, "is_active", Kind::BoolValue(active), ts),
            ],
        };
        let payload = message.encode_to_vec();
        producer
            .send(
                FutureRecord::to(&args.topic).key(&pkey).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| format!("produce to {}: {e}", args.topic))?;
        println!("{ns}/{pkey} {ts} age={age} score={score} name={name:?} is_active={active}");
    }
    Ok(())
}

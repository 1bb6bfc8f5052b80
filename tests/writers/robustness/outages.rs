//! Store faults of the online writer: Redis down for a minute, and a key
//! the store refuses.

use super::*;

/// Redis (owned by the test, append-only file fsynced always) is SIGKILLed for
/// 60 s while messages keep arriving: the writer retries, commits nothing it
/// could not write, and after the restart everything is there. Prints how
/// soon after Redis is back the writer writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_60s_then_restarted_loses_nothing() -> anyhow::Result<()> {
    redis_outage(Duration::from_secs(60)).await
}

async fn redis_outage(outage: Duration) -> anyhow::Result<()> {
    const N1: u64 = 3000;
    const N2: u64 = 3000;
    let mut redis = OwnedRedis::start()?;
    let setup = Setup::new(3, &redis.url()).await?;
    let load = Load::new(500);
    let payloads: Vec<Vec<u8>> = (0..N1 + N2).map(|i| load.payload(i)).collect();
    produce_tracked(&setup.topic, &payloads[..N1 as usize]).await?;
    let mut w = Writer::start(&setup.env())?;
    let mut conn = connect(&redis.url()).await?;
    wait_converged(&mut conn, &setup, load, N1, Duration::from_secs(60), &[&w]).await?;
    let before = setup.offsets()?;

    redis.kill()?;
    let down = Instant::now();
    let r0 = w.metric(RETRIES).unwrap_or(0.0);
    produce_tracked(&setup.topic, &payloads[N1 as usize..]).await?;
    let mut samples = vec![r0];
    // Early in the outage, half way and just before its end.
    let at_secs = [6, outage.as_secs() / 2, outage.as_secs() - 1];
    for at in at_secs {
        tokio::time::sleep_until((down + Duration::from_secs(at)).into()).await;
        samples.push(w.metric(RETRIES).unwrap_or(0.0));
        let now = setup.offsets()?;
        let end: i64 = now.iter().map(|(_, e)| e).sum();
        assert_eq!(end, (N1 + N2) as i64);
        // Nothing could be written, so no committed offset may move.
        assert_eq!(
            now.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            before.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            "{at} s into the outage: offsets moved while Redis was down"
        );
    }
    eprintln!("write retries at 0 and {at_secs:?} s of the outage: {samples:?}");
    assert!(
        samples.windows(2).all(|s| s[1] > s[0]),
        "write retries must keep growing during the outage: {samples:?}\n{}",
        tail(&w)
    );
    tokio::time::sleep_until((down + outage).into()).await;

    redis.restart()?;
    // How soon the writer writes again: its backoff cap (jitter inside) and
    // the store's reconnect decide; reported, not asserted.
    let resumed = w.next_write(Duration::from_secs(60)).await?;
    eprintln!(
        "after {} s down: writing again {} ms after Redis came back",
        outage.as_secs(),
        resumed.as_millis()
    );
    assert_eq!(
        w.metric("bgpersist_writer_store_writable"),
        Some(1.0),
        "{}",
        tail(&w)
    );
    let mut conn = connect(&redis.url()).await?;
    wait_converged(
        &mut conn,
        &setup,
        load,
        N1 + N2,
        Duration::from_secs(60),
        &[&w],
    )
    .await?;
    terminate(&mut w).await?;
    redis.kill()?;
    Ok(())
}

/// A hash key the store refuses (it holds a string: WRONGTYPE) dead-letters
/// only the message aimed at it; the rest of the same batches is written and
/// everything is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refusal_dead_letters_only_that_message() -> anyhow::Result<()> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    const N: u64 = 2000;
    let url = rig("redis", "BGP_REDIS_URL");
    let setup = Setup::new(2, &url).await?;
    let load = Load::new(300);
    let mut conn = connect(&url).await?;
    redis::cmd("SET")
        .arg(format!("{}user/not-a-hash", setup.prefix))
        .arg("x")
        .query_async::<()>(&mut conn)
        .await?;
    let refused = result_message(vec![observation("not-a-hash", "age", 1, 1)]);
    let mut payloads: Vec<Vec<u8>> = (0..N).map(|i| load.payload(i)).collect();
    payloads.push(refused.clone());
    produce_tracked(&setup.topic, &payloads).await?;

    let mut w = Writer::start(&setup.env())?;
    let dlq: StreamConsumer = kafka_plain()
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    dlq.subscribe(&[&setup.dlq])?;
    let letter = tokio::time::timeout(Duration::from_secs(60), dlq.recv()).await??;
    let header = |name: &str| {
        letter.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    };
    assert_eq!(letter.payload(), Some(refused.as_slice()));
    assert_eq!(header("bgp-dlq-error-class").as_deref(), Some("rejected"));
    let reason = header("bgp-dlq-error-message").unwrap_or_default();
    assert!(reason.contains("WRONGTYPE"), "{reason}");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written = receipts(&mut conn, &setup.prefix, load, N).await?;
        let state = read_state(&mut conn, &setup.prefix, load).await?;
        let offsets = setup.offsets()?;
        if written.iter().all(|w| *w)
            && state == load.expected(N)
            && offsets.iter().all(|(c, e)| c == e)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {N} receipts, offsets {offsets:?}\n{}",
            written.iter().filter(|w| **w).count(),
            tail(&w)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        w.metric("bgpersist_writer_messages_dead_lettered_total"),
        Some(1.0)
    );
    terminate(&mut w).await?;
    Ok(())
}

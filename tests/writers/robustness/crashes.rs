//! Writer crashes (SIGKILL mid-stream, poison in the stream) and graceful
//! SIGTERM while busy.

use super::*;

/// Kills in the kill test, and when each lands after the run's first write.
const KILLS: u64 = 20;

/// Twenty SIGKILLs at spread-out moments of a stream over four partitions in
/// which 1 % of the messages are malformed, a restart in the same group
/// after each. At every kill nothing committed is missing from the store;
/// at the end the store holds exactly the newest value of every feature,
/// every message is committed, and every poison message is in the
/// dead-letter topic (more than once only if a kill came between its dead
/// letter and its commit). Prints each restart's time to its first write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_20_times_with_poison_loses_nothing() -> anyhow::Result<()> {
    let url = rig("redis", "BGP_REDIS_URL");
    let setup = Setup::new(4, &url).await?;
    let load = Load {
        entities: 3000,
        poison_percent: 1,
    };
    let mut conn = connect(&url).await?;
    let mut env = setup.env();
    // Each restart waits for the killed member's session to expire before
    // it gets partitions: the broker's smallest session timeout (6 s, the
    // writer's default is 10 s) keeps twenty rounds within the test's time.
    env.push(("BGP_KAFKA_CONF_SESSION_TIMEOUT_MS", "6000".into()));
    env.push(("BGP_KAFKA_CONF_HEARTBEAT_INTERVAL_MS", "2000".into()));
    let producer = setup.paced(600, move |i| load.payload(i));

    // Per kill: offsets (committed, end) and which messages the store had.
    let mut at_kill = Vec::new();
    // Per restart after a kill: from its start to its first write.
    let mut recovery = Vec::new();
    for round in 0..KILLS {
        // Early kills land in a catch-up (every restart starts behind by a
        // session timeout), later ones in the steady flow.
        let after = Duration::from_millis(200 + mix(round) % 2800);
        let started = Instant::now();
        let mut w = Writer::start(&env)?;
        wait_written(&mut w, 1, Duration::from_secs(60)).await?;
        let first = started.elapsed();
        if round > 0 {
            recovery.push(first);
        }
        tokio::time::sleep(after).await;
        anyhow::ensure!(!w.exited(), "round {round}: writer exited:\n{}", tail(&w));
        let written = w.metric(WRITTEN).unwrap_or(0.0);
        w.signal("KILL")?;
        assert_eq!(
            w.wait_exit(Duration::from_secs(10))?,
            None,
            "killed by a signal"
        );

        let offsets = setup.offsets()?;
        let sent = producer.sent();
        let stored = receipts(&mut conn, &setup.prefix, load, sent).await?;
        let committed: i64 = offsets.iter().map(|(c, _)| (*c).max(0)).sum();
        let end: i64 = offsets.iter().map(|(_, e)| e).sum();
        eprintln!(
            "round {round}: first write {} ms after start; killed {} ms later, \
             {written} records written; committed {committed} of {end}",
            first.as_millis(),
            after.as_millis()
        );
        assert!(
            committed < end,
            "round {round}: the kill must land mid-stream"
        );
        at_kill.push((offsets, stored));
    }

    let started = Instant::now();
    let mut w = Writer::start(&env)?;
    wait_written(&mut w, 1, Duration::from_secs(60)).await?;
    recovery.push(started.elapsed());
    eprintln!(
        "last restart: first write {} ms after start",
        started.elapsed().as_millis()
    );
    let positions = producer.finish().await?;
    let n = positions.len() as u64;
    for (round, (offsets, stored)) in at_kill.iter().enumerate() {
        // Messages produced after the snapshot were not written then.
        let mut stored = stored.clone();
        stored.resize(positions.len(), false);
        let (lost, _) = committed_vs_written(&positions, &stored, offsets);
        assert!(
            lost.is_empty(),
            "after kill {round}: {} messages committed but not in the store (first {:?}); \
             offsets {offsets:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
    wait_converged(&mut conn, &setup, load, n, Duration::from_secs(120), &[&w]).await?;

    let copies = poison_dead_lettered(&setup, load, &positions).await?;
    // A second copy comes only from a redelivery: the message was above
    // its partition's committed offset at some kill.
    let redelivered = |(p, o): &(i32, i64)| {
        at_kill
            .iter()
            .any(|(offsets, _)| offsets[*p as usize].0 <= *o)
    };
    for (origin, c) in &copies {
        assert!(
            *c == 1 || (*c <= KILLS + 1 && redelivered(origin)),
            "{origin:?} dead-lettered {c} times"
        );
    }
    let mut sorted = recovery.clone();
    sorted.sort();
    eprintln!(
        "{n} messages, {} poison, {KILLS} kills: converged; {} dead letters ({} duplicates); \
         first write after a restart: min {} ms, median {} ms, max {} ms",
        copies.len(),
        copies.values().sum::<u64>(),
        copies.values().sum::<u64>() - copies.len() as u64,
        sorted[0].as_millis(),
        sorted[sorted.len() / 2].as_millis(),
        sorted[sorted.len() - 1].as_millis()
    );
    terminate(&mut w).await?;
    Ok(())
}

/// SIGTERM while busy (a backlog, then a steady stream): exit 0 within the
/// grace period, and the committed offsets are exactly what was written: the
/// batch in hand is finished and committed, nothing later was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_commits_exactly_what_was_written() -> anyhow::Result<()> {
    const BACKLOG: u64 = 20_000;
    let url = rig("redis", "BGP_REDIS_URL");
    let setup = Setup::new(3, &url).await?;
    let load = Load::new(1000);
    let mut conn = connect(&url).await?;
    let backlog: Vec<Vec<u8>> = (0..BACKLOG).map(|i| load.payload(i)).collect();
    let mut positions = produce_tracked(&setup.topic, &backlog).await?;
    let producer = setup.paced(2000, move |i| load.payload(BACKLOG + i));

    let mut w = Writer::start(&setup.env())?;
    wait_written(&mut w, 4000 * RECORDS_PER_MESSAGE, Duration::from_secs(60)).await?;
    terminate(&mut w).await?;
    let log = w.log_text();
    assert!(log.contains("shutdown requested"), "{}", tail(&w));
    // The stream goes on after the writer has left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    positions.extend(producer.finish().await?);

    let offsets = setup.offsets()?;
    let written = receipts(&mut conn, &setup.prefix, load, positions.len() as u64).await?;
    let (lost, ahead) = committed_vs_written(&positions, &written, &offsets);
    assert!(
        lost.is_empty(),
        "{} messages committed but not written (first {:?}); offsets {offsets:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        ahead.is_empty(),
        "{} messages written but left uncommitted (first {:?}); offsets {offsets:?}",
        ahead.len(),
        &ahead[..ahead.len().min(10)]
    );
    let committed: i64 = offsets.iter().map(|(c, _)| (*c).max(0)).sum();
    let end: i64 = offsets.iter().map(|(_, e)| e).sum();
    assert!(
        committed > 0 && committed < end,
        "committed {committed} of {end}: the stream must have been cut mid-way"
    );
    // The exit line accounts for exactly the committed messages.
    let consumed = log
        .lines()
        .find(|l| l.contains("writer stopped"))
        .and_then(|l| l.split("consumed: ").nth(1))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse::<i64>().ok());
    assert_eq!(consumed, Some(committed), "{}", tail(&w));
    Ok(())
}

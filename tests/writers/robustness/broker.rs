//! The Kafka broker restarted under a running writer, on a broker the test
//! owns (the rig's is shared by every test).

use super::*;

/// The broker goes away twice while messages keep coming (1 % of them
/// poison) and one writer consumes: a controlled shutdown (SIGTERM), then a
/// crash (SIGKILL), each followed by a restart on the same data. The writer
/// rides both out without restarting: it writes again once the broker is
/// back, and at the end the store holds exactly the newest value of every
/// feature, every message is committed and every poison message is
/// dead-lettered. Prints how soon after each restart the writer writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_mid_stream_loses_nothing() -> anyhow::Result<()> {
    let mut kafka = OwnedKafka::start()?;
    let url = rig("redis", "BGP_REDIS_URL");
    let setup = Setup::on(&kafka, 3, &url).await?;
    let load = Load {
        entities: 1000,
        poison_percent: 1,
    };
    let mut conn = connect(&url).await?;
    let producer = setup.paced(500, move |i| load.payload(i));
    let mut w = Writer::start(&setup.env())?;
    wait_written(&mut w, 1, Duration::from_secs(60)).await?;

    for sig in ["TERM", "KILL"] {
        // Some steady flow first, so the stop lands mid-stream.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = setup.offsets()?;
        let stopped = Instant::now();
        tokio::task::block_in_place(|| kafka.stop(sig))?;
        let stop_took = stopped.elapsed();
        // Down long enough for the writer's requests, heartbeats and
        // commits to fail.
        tokio::time::sleep(Duration::from_secs(5)).await;
        anyhow::ensure!(
            !w.exited(),
            "writer exited with the broker down:\n{}",
            tail(&w)
        );
        let starting = Instant::now();
        tokio::task::block_in_place(|| kafka.restart())?;
        let start_took = starting.elapsed();
        let resumed = w.next_write(Duration::from_secs(90)).await?;
        eprintln!(
            "SIG{sig}: broker stopped in {} ms, down {} ms in all (restart {} ms); \
             writing again {} ms after it serves",
            stop_took.as_millis(),
            stopped.elapsed().as_millis() - resumed.as_millis(),
            start_took.as_millis(),
            resumed.as_millis()
        );
        // And committing again: offsets move past where they were. An outage
        // longer than the session timeout costs a rejoin too (reported).
        let committed = |o: &[(i64, i64)]| o.iter().map(|(c, _)| (*c).max(0)).sum::<i64>();
        let from = committed(&before);
        eventually(
            "offsets committed after the restart",
            Duration::from_secs(60),
            || async { Ok((committed(&setup.offsets()?) > from).then_some(())) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&w)))?;
        eprintln!(
            "SIG{sig}: committing again {} ms after the broker serves",
            (starting.elapsed() - start_took).as_millis()
        );
    }

    let positions = producer.finish().await?;
    let n = positions.len() as u64;
    wait_converged(&mut conn, &setup, load, n, Duration::from_secs(120), &[&w]).await?;
    let copies = poison_dead_lettered(&setup, load, &positions).await?;
    eprintln!(
        "{n} messages, {} poison, 2 broker restarts: converged; {} dead letters",
        copies.len(),
        copies.values().sum::<u64>()
    );
    terminate(&mut w).await?;
    Ok(())
}

//! Consumers scaled up and down while producing.

use super::*;

/// One writer, then three in the same group, then one again (two SIGTERMed),
/// all while messages keep coming over six partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_1_to_3_to_1_while_producing() -> anyhow::Result<()> {
    let url = rig("redis", "BGP_REDIS_URL");
    let setup = Setup::new(6, &url).await?;
    let load = Load::new(2000);
    let mut conn = connect(&url).await?;
    let env = setup.env();
    let producer = setup.paced(2000, move |i| load.payload(i));

    let mut a = Writer::start(&env)?;
    wait_written(&mut a, 1, Duration::from_secs(60)).await?;
    let mut b = Writer::start(&env)?;
    let mut c = Writer::start(&env)?;
    // Both newcomers got partitions and keep writing from them.
    wait_written(&mut b, 500 * RECORDS_PER_MESSAGE, Duration::from_secs(60)).await?;
    wait_written(&mut c, 500 * RECORDS_PER_MESSAGE, Duration::from_secs(60)).await?;
    let a_at_3 = a.metric(WRITTEN).unwrap_or(0.0) as u64;
    let (b_wrote, c_wrote) = (b.metric(WRITTEN), c.metric(WRITTEN));
    terminate(&mut b).await?;
    terminate(&mut c).await?;
    // The survivor takes every partition back and keeps up with the stream.
    wait_written(
        &mut a,
        a_at_3 + 2000 * RECORDS_PER_MESSAGE,
        Duration::from_secs(60),
    )
    .await?;
    let n = producer.finish().await?.len() as u64;
    eprintln!("{n} messages; records written when three: a {a_at_3}, b {b_wrote:?}, c {c_wrote:?}");

    wait_converged(
        &mut conn,
        &setup,
        load,
        n,
        Duration::from_secs(90),
        &[&a, &b, &c],
    )
    .await?;
    terminate(&mut a).await?;
    Ok(())
}

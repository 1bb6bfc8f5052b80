use crate::support::{rig, unique};
use redis::AsyncCommands;

#[tokio::test]
async fn standalone_set_get() -> anyhow::Result<()> {
    let client = redis::Client::open(rig("redis", "BGP_REDIS_URL"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = unique("smoke");
    let _: () = conn.set(&key, "v1").await?;
    let got: String = conn.get(&key).await?;
    assert_eq!(got, "v1");
    Ok(())
}

#[tokio::test]
async fn cluster_set_get_across_slots() -> anyhow::Result<()> {
    let nodes: Vec<String> = rig("redis", "BGP_REDIS_CLUSTER_NODES")
        .split(',')
        .map(str::to_string)
        .collect();
    assert_eq!(nodes.len(), 3, "the rig runs a 3-master cluster");
    let client = redis::cluster::ClusterClient::new(nodes)?;
    let mut conn = client.get_async_connection().await?;
    // Enough keys to land on every master's slot range.
    let keys: Vec<String> = (0..32).map(|i| unique(&format!("smoke{i}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        let _: () = conn.set(k, i).await?;
    }
    for (i, k) in keys.iter().enumerate() {
        let got: usize = conn.get(k).await?;
        assert_eq!(got, i);
    }
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut conn)
        .await?;
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_known_nodes:3"), "{info}");
    Ok(())
}

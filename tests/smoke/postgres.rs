use crate::support::{rig, unique};
use tokio_postgres::NoTls;

#[tokio::test]
async fn pgvector_nearest_neighbour() -> anyhow::Result<()> {
    let (client, connection) =
        tokio_postgres::connect(&rig("postgres", "BGP_POSTGRES_URL"), NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .await?;
    let table = unique("smoke_items").replace('-', "_");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, embedding vector(3));
             INSERT INTO {table} VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]'), (4, '[0.9,0.1,0]');"
        ))
        .await?;
    let rows = client
        .query(
            &format!("SELECT id FROM {table} ORDER BY embedding <-> '[0,0.95,0.05]' LIMIT 2"),
            &[],
        )
        .await?;
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    // [0,1,0] is 0.07 away, [0.9,0.1,0] 1.24, [0,0,1] 1.34.
    assert_eq!(ids, vec![2, 4]);
    client.batch_execute(&format!("DROP TABLE {table}")).await?;
    Ok(())
}

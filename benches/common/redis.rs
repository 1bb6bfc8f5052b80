//! The rig's Redis after a bench: what a run wrote under its key prefix.

/// Every key starting with `prefix`, handed to `each` a SCAN page at a time.
async fn scan_prefix(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    mut each: impl AsyncFnMut(&mut redis::aio::MultiplexedConnection, Vec<String>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(conn)
            .await?;
        each(conn, keys).await?;
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Unlinks every key starting with `prefix`.
pub async fn unlink_prefix(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<()> {
    scan_prefix(conn, prefix, async |conn, keys| {
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(conn)
                .await?;
        }
        Ok(())
    })
    .await
}

/// How many keys start with `prefix`.
pub async fn count_prefix(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<usize> {
    let mut count = 0;
    scan_prefix(conn, prefix, async |_, keys| {
        count += keys.len();
        Ok(())
    })
    .await?;
    Ok(count)
}

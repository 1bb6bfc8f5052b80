//! Redis around the online writer: the rig's standalone server, entities and
//! keys read back, and a dedicated server with AOF for the robustness tests.

use super::process::{Writer, free_port};
use super::{Entities, eventually};
use crate::support::{rig, unique};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Reads the hash of each pkey: field → value.
pub async fn redis_entities(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    prefix: &str,
    pkeys: &[String],
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out = BTreeMap::new();
    for p in pkeys {
        let h: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{prefix}user/{p}"))
            .query_async(conn)
            .await?;
        if !h.is_empty() {
            out.insert(p.clone(), h);
        }
    }
    Ok(out)
}

/// Waits up to 60 s until the entities `keys` (no key prefix) read through
/// `conn` are `expected`; on timeout the error carries the writer's log.
pub async fn until_entities(
    what: &str,
    conn: &redis::aio::MultiplexedConnection,
    keys: &[String],
    expected: &Entities,
    writer: &Writer,
) -> anyhow::Result<Entities> {
    eventually(what, Duration::from_secs(60), || {
        let (keys, expected, mut conn) = (keys.to_vec(), expected.clone(), conn.clone());
        async move {
            let state = redis_entities(&mut conn, "", &keys).await?;
            Ok((state == expected).then_some(state))
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nwriter log:\n{}", writer.log_text()))
}

/// Every key starting with `prefix`.
pub async fn redis_keys(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// A redis-server owned by one test: its own port and directory, append-only
/// file fsynced on every write, so a kill and restart keeps what was written.
pub struct OwnedRedis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl OwnedRedis {
    pub fn start() -> anyhow::Result<OwnedRedis> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("redis"));
        std::fs::create_dir_all(&dir)?;
        let mut r = OwnedRedis {
            port: free_port()?,
            dir,
            child: None,
        };
        r.restart()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on the same port and directory and waits until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "redis is already running");
        let log = std::fs::File::create(self.dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no"])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING; log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the server by PID and reaps it: a hard stop, no shutdown save.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection to the rig's standalone Redis.
pub async fn standalone() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(rig("redis", "BGP_REDIS_URL"))?
        .get_multiplexed_async_connection()
        .await?)
}

//! A Postgres server owned by one test, from the binaries the rig's Postgres
//! runs (hack/parts/postgres.sh): its own port and data directory, so the
//! test can stop and start it without touching the rig's shared server.

use super::process::{free_port, stop_server};
use crate::support::{rig, rig_dir, unique};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user the rig runs Postgres as when it is root: Postgres refuses root.
const RIG_USER: &str = "bgprig";

pub struct OwnedPostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_root: bool,
    child: Option<Child>,
}

impl OwnedPostgres {
    /// Creates a cluster (trust auth, user `postgres`) and starts it.
    pub fn start() -> anyhow::Result<OwnedPostgres> {
        let bin = PathBuf::from(rig("postgres", "BGP_POSTGRES_BIN"));
        // Under the rig's directory, not the target dir: when we are root the
        // server runs as the rig user, who cannot enter a target dir in /root.
        let dir = rig_dir().join("tmp").join(unique("postgres"));
        std::fs::create_dir_all(dir.join("sock"))?;
        let as_root = std::fs::metadata("/proc/self")?.uid() == 0;
        let mut pg = OwnedPostgres {
            port: free_port()?,
            dir,
            bin,
            as_root,
            child: None,
        };
        if as_root {
            let owned = Command::new("chown")
                .args(["-R", &format!("{RIG_USER}:{RIG_USER}")])
                .arg(&pg.dir)
                .status()?;
            anyhow::ensure!(owned.success(), "chown {} failed", pg.dir.display());
        }
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--no-locale", "--no-sync"])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.restart()?;
        Ok(pg)
    }

    /// A command of the install, run as the rig user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_root {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={RIG_USER}"))
                .arg(format!("--regid={RIG_USER}"))
                .arg("--init-groups")
                .arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// The `postgres` database, as a writer's store URI.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "postgres is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        // Durability off as on the rig: a stop is a clean shutdown here.
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.join("sock").display()
            ))
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres"])
                .status()?;
            if ready.success() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                self.child = None;
                anyhow::bail!(
                    "postgres exited ({status}) while starting; log:\n{}",
                    self.log()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "postgres on {} not ready after 30 s; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// A real server stop: Postgres' fast shutdown (SIGINT), which ends every
    /// session, then waits for the postmaster to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(c) => stop_server(c, "INT", Duration::from_secs(30)),
            None => Ok(()),
        }
    }
}

impl Drop for OwnedPostgres {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster takes its backends with it.
        if let Some(c) = self.child.take() {
            let _ = stop_server(c, "QUIT", Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! A single-node KRaft Kafka owned by one test, from the rig's cached Kafka
//! install (hack/parts/kafka.sh): its own ports and data directory, so the
//! test can kill and restart it without touching the rig's shared broker.

use super::process::{free_port, stop_server};
use crate::support::{rig, unique};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OwnedKafka {
    pub port: u16,
    controller_port: u16,
    dir: PathBuf,
    home: PathBuf,
    child: Option<Child>,
    /// Starts so far: each start logs to a file of its own.
    starts: u32,
}

impl OwnedKafka {
    /// Writes the config, formats the storage and starts the broker.
    pub fn start() -> anyhow::Result<OwnedKafka> {
        let home = PathBuf::from(rig("kafka", "BGP_KAFKA_HOME"));
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("kafka"));
        std::fs::create_dir_all(&dir)?;
        let mut k = OwnedKafka {
            port: free_port()?,
            controller_port: free_port()?,
            dir,
            home,
            child: None,
            starts: 0,
        };
        k.configure()?;
        k.restart()?;
        Ok(k)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn properties(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    fn log(&self) -> PathBuf {
        self.dir.join(format!("kafka-{}.log", self.starts))
    }

    /// The rig's broker settings, trimmed to one plaintext listener.
    fn configure(&self) -> anyhow::Result<()> {
        let (p, c) = (self.port, self.controller_port);
        let props = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{c}\n\
             controller.listener.names=CONTROLLER\n\
             listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{p}\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             inter.broker.listener.name=PLAINTEXT\n\
             log.dirs={}\n\
             num.partitions=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=3\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=3\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n",
            self.dir.join("data").display()
        );
        std::fs::write(self.properties(), props)?;
        // A cluster id is 16 random bytes, URL-safe base64 without padding;
        // one starting with '-' would be read as an option.
        let id = loop {
            use base64::Engine as _;
            let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(uuid::Uuid::new_v4().as_bytes());
            if !id.starts_with('-') {
                break id;
            }
        };
        let out = Command::new("java")
            .arg("-cp")
            .arg(self.home.join("libs/*"))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.home.join("tools-log4j2.properties").display()
            ))
            .args(["kafka.tools.StorageTool", "format", "--config"])
            .arg(self.properties())
            .args(["--cluster-id", &id, "--ignore-formatted"])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "kafka storage format failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Starts the broker (again) on the same ports and data, and waits until
    /// it serves: "Kafka Server started" comes once it has caught up with
    /// the metadata log and is unfenced.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "kafka is already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log())?;
        // As the rig starts its broker: C1 and the serial GC start fastest
        // on a small machine.
        let child = Command::new("java")
            .args(["-Xms128m", "-Xmx384m", "-XX:TieredStopAtLevel=1"])
            .args(["-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError"])
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.home.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(self.home.join("libs/*"))
            .arg("kafka.Kafka")
            .arg(self.properties())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(self.log()).unwrap_or_default();
            if text.contains("Kafka Server started")
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                self.child = None;
                anyhow::bail!("kafka exited ({status}) while starting; log:\n{text}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "kafka on {} not serving after 120 s; log:\n{text}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the broker with `sig` ("KILL": a crash; "TERM": a controlled
    /// shutdown) and reaps it. A TERM that does not end it in 60 s is a failure.
    pub fn stop(&mut self, sig: &str) -> anyhow::Result<()> {
        match self.child.take() {
            Some(c) => stop_server(c, sig, Duration::from_secs(60)),
            None => Ok(()),
        }
    }
}

impl Drop for OwnedKafka {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

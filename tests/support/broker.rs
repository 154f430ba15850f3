//! A real Kafka-compatible broker (Tansu) on a free loopback port, and `herd run`
//! workers as child processes, for the end-to-end tests.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Where `scripts/check` installs Tansu (override with `HERD_TANSU`).
fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HERD_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/herd/tansu/bin/tansu")
}

/// A port nobody listens on (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A Tansu broker on a loopback port; stopped when dropped.
pub struct Broker {
    child: Child,
    /// `host:port`.
    pub bootstrap: String,
    port: u16,
    /// The folder of its SQLite storage, when it has one (it survives a restart).
    storage: Option<PathBuf>,
    /// How often Tansu runs its maintenance (retention), when set.
    maintenance: Option<Duration>,
    log: PathBuf,
}

impl Broker {
    /// The broker's exit status, once it has exited (it should not on its own).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Starts a broker with in-memory storage and waits until it accepts connections.
    pub fn start(log: &Path) -> Broker {
        Self::launch(free_port(), None, None, log)
    }

    /// Starts a broker whose storage (SQLite, Tansu's `libsql` feature) is kept in
    /// `dir`, so that it survives [`Broker::restart`].
    pub fn start_persistent(dir: &Path, log: &Path) -> Broker {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        Self::launch(free_port(), Some(dir.to_owned()), None, log)
    }

    /// [`Broker::start_persistent`], running Tansu's maintenance `every` (its default is
    /// ten minutes): records of topics with `cleanup.policy = delete` older than their
    /// `retention.ms` are deleted then, and SQLite reuses their pages, so that the
    /// database holds minutes of a long stream instead of all of it.
    pub fn start_retaining(dir: &Path, log: &Path, every: Duration) -> Broker {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        Self::launch(free_port(), Some(dir.to_owned()), Some(every), log)
    }

    fn launch(
        port: u16,
        storage: Option<PathBuf>,
        maintenance: Option<Duration>,
        log: &Path,
    ) -> Broker {
        let bin = tansu_binary();
        assert!(
            bin.exists(),
            "Tansu is not installed at {} (scripts/check installs it; or set HERD_TANSU)",
            bin.display()
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("broker log: {e}"));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("broker log: {e}"));
        let mut cmd = Command::new(&bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        match &storage {
            // Relative to the broker's working directory.
            Some(dir) => {
                let url = match maintenance {
                    Some(every) => {
                        format!(
                            "sqlite://tansu.db?maintenance_interval={}s",
                            every.as_secs()
                        )
                    }
                    None => "sqlite://tansu.db".to_owned(),
                };
                cmd.current_dir(dir).args(["--storage-engine", &url]);
            }
            None => {
                cmd.args(["--storage-engine", "memory://tansu/"]);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let b = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            storage,
            maintenance,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&b.bootstrap).is_err() {
            assert!(Instant::now() < deadline, "the broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    /// Stops the broker (SIGTERM, as an orchestrator does), waits `down`, and starts it
    /// again on the same port with the same storage.
    pub fn restart(&mut self, down: Duration) {
        assert!(
            self.storage.is_some(),
            "a broker with in-memory storage loses everything in a restart"
        );
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .child
            .try_wait()
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
        {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
        std::thread::sleep(down);
        let next = Self::launch(self.port, self.storage.clone(), self.maintenance, &self.log);
        // The old child is reaped; take the new one's place.
        *self = next;
    }

    /// The end offset (last offset + 1, 0 when empty) of every partition of `topic`,
    /// found by reading it to the end. (Tansu answers ListOffsets for the latest
    /// offset with the start of the last batch, so watermarks asked for directly are
    /// not the end.)
    pub fn ends(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "herd-test-probe")
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap_or_else(|e| panic!("probe: {e}"));
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        c.assign(&tpl).unwrap_or_else(|e| panic!("assign: {e}"));
        let mut ends = vec![0i64; partitions as usize];
        let mut open: std::collections::BTreeSet<i32> = (0..partitions).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !open.is_empty() {
            assert!(Instant::now() < deadline, "reading {topic} to its end");
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    use rdkafka::message::Message;
                    let e = &mut ends[m.partition() as usize];
                    *e = (*e).max(m.offset() + 1);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        ends
    }

    /// How far `group` has committed on every partition of `topics` (-1: nothing).
    pub fn committed(&self, group: &str, topics: &[String], partitions: i32) -> Vec<i64> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .create()
            .unwrap_or_else(|e| panic!("probe: {e}"));
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            for p in 0..partitions {
                tpl.add_partition(t, p);
            }
        }
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("committed offsets of {group}: {e}"));
        got.elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            })
            .collect()
    }

    /// Waits until `group` has committed everything on `topics`: all records
    /// processed and their effects durable. The ends of the topics are read once, except
    /// the repartition topic's (the workers write it), which is read on every check.
    pub fn wait_caught_up(&self, names: &Names, within: Duration) {
        let topics = names.inputs();
        let deadline = Instant::now() + within;
        let fixed: Vec<Vec<i64>> = topics[..topics.len() - 1]
            .iter()
            .map(|t| self.ends(t, PARTITIONS))
            .collect();
        loop {
            let mut ends: Vec<i64> = fixed.iter().flatten().copied().collect();
            ends.extend(self.ends(&topics[topics.len() - 1], PARTITIONS));
            let committed = self.committed(&names.group(), &topics, PARTITIONS);
            let behind: Vec<(String, i64, i64)> = ends
                .iter()
                .zip(&committed)
                .enumerate()
                .filter(|(_, (end, c))| **end > 0 && **c < **end)
                .map(|(i, (end, c))| (topics[i / PARTITIONS as usize].clone(), *c, *end))
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not catch up: (topic, committed, end) = {behind:?}",
                names.group()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// Waits until the group has committed at least a third of the records on the
    /// input topics, but not all of them: the moment to kill a worker mid-stream.
    pub fn wait_part_committed(&self, names: &Names) {
        let total: i64 = names.inputs()[..3]
            .iter()
            .flat_map(|t| self.ends(t, PARTITIONS))
            .sum();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let done: i64 = self
                .committed(&names.group(), &names.inputs()[..3], PARTITIONS)
                .iter()
                .map(|c| (*c).max(0))
                .sum();
            if done * 3 >= total {
                assert!(
                    done < total,
                    "the worker finished before it could be killed"
                );
                return;
            }
            assert!(Instant::now() < deadline, "no progress before the kill");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Names of one test's topics and group: unique, so tests never see each other.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
}

impl Names {
    pub fn new(test: &str) -> Names {
        Names {
            prefix: format!("t{}-{test}", std::process::id()),
        }
    }
    pub fn topic(&self, what: &str) -> String {
        format!("{}.{what}", self.prefix)
    }
    pub fn inputs(&self) -> Vec<String> {
        ["samples", "events", "metrics", "repartition"]
            .iter()
            .map(|t| self.topic(t))
            .collect()
    }
    pub fn group(&self) -> String {
        format!("{}-workers", self.prefix)
    }
    /// The environment that points herd at these names.
    pub fn env(&self, broker: &Broker) -> Vec<(String, String)> {
        let list = |ts: &[&str]| {
            format!(
                "[{}]",
                ts.iter()
                    .map(|t| format!("\"{}\"", self.topic(t)))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        vec![
            (
                "HERD_KAFKA__BOOTSTRAP_SERVERS".into(),
                broker.bootstrap.clone(),
            ),
            (
                "HERD_STREAM__TOPICS__INPUTS".into(),
                list(&["samples", "events", "metrics"]),
            ),
            (
                "HERD_STREAM__TOPICS__REPARTITION".into(),
                self.topic("repartition"),
            ),
            ("HERD_STREAM__TOPICS__ALERTS".into(), self.topic("alerts")),
            ("HERD_STREAM__TOPICS__DLQ".into(), self.topic("dlq")),
            ("HERD_STREAM__TOPICS__ACTIONS".into(), self.topic("actions")),
            (
                "HERD_STREAM__TOPICS__RESPONSES".into(),
                self.topic("responses"),
            ),
            ("HERD_AGENT__SAMPLES_TOPIC".into(), self.topic("samples")),
            ("HERD_AGENT__EVENTS_TOPIC".into(), self.topic("events")),
            (
                "HERD_STREAM__TOPICS__BASELINES".into(),
                self.topic("baselines"),
            ),
            (
                "HERD_STREAM__TOPICS__RETRAINED".into(),
                self.topic("retrained"),
            ),
            (
                "HERD_STREAM__TOPICS__FEEDBACK".into(),
                self.topic("feedback"),
            ),
            ("HERD_STREAM__GROUP_ID".into(), self.group()),
            // Tests run many herd processes at once: each takes a port of its own
            // (a test that scrapes one sets its port explicitly).
            ("HERD_HTTP__LISTEN".into(), "127.0.0.1:0".into()),
            ("HERD_STREAM__PARTITIONS".into(), PARTITIONS.to_string()),
            ("HERD_STREAM__CHECKPOINT_INTERVAL_MS".into(), "1000".into()),
            ("HERD_STREAM__SHUTDOWN_DEADLINE_MS".into(), "8000".into()),
            // A killed worker leaves the group after this long, instead of 45 s.
            ("HERD_KAFKA__SESSION_TIMEOUT_MS".into(), "10000".into()),
            ("HERD_KAFKA__MAX_POLL_INTERVAL_MS".into(), "20000".into()),
        ]
    }
}

/// Partitions of every test topic.
pub const PARTITIONS: i32 = 3;

/// The `herd` binary under test.
pub fn herd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herd"))
}

/// A `herd run` worker; killed when dropped.
pub struct Worker {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(names: &Names, broker: &Broker, log: PathBuf) -> Worker {
        Self::start_with(names, broker, log, &[])
    }

    /// A worker with extra environment (configuration overrides).
    pub fn start_with(
        names: &Names,
        broker: &Broker,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> Worker {
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("worker log: {e}"));
        let child = herd()
            .arg("run")
            .envs(names.env(broker))
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("HERD_TEST_WORKER_LOG").unwrap_or_else(|_| "herd=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting herd run: {e}"));
        Worker {
            child: Some(child),
            log,
        }
    }

    /// SIGTERM, and waits for a clean exit; returns the worker's stderr.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap_or_else(|| panic!("stopped twice"));
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                assert!(st.success(), "herd run exited with {st}:\n{log}");
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "herd run did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the worker has exited on its own, and how (its log beside).
    pub fn exited(&mut self) -> Option<(std::process::ExitStatus, String)> {
        let st = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some((st, std::fs::read_to_string(&self.log).unwrap_or_default()))
    }

    /// SIGKILL: no drain, no checkpoint, no commit.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Produces files with `herd produce` (split by kind over the test's input topics).
pub fn produce(names: &Names, broker: &Broker, files: &[PathBuf], extra: &[&str]) {
    let out = herd()
        .arg("produce")
        .args(files)
        .args(extra)
        .envs(names.env(broker))
        // One record per batch. Tansu 0.6 does not serve a fetch that starts inside a
        // batch (a consumer resuming from a committed offset mid-batch stalls there);
        // batches of one keep every committed offset on a batch boundary.
        .env("HERD_KAFKA__BATCH_NUM_MESSAGES", "1")
        .output()
        .unwrap_or_else(|e| panic!("herd produce: {e}"));
    assert!(
        out.status.success(),
        "herd produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that the dead-letter topic is empty, printing what is there (each record
/// carries its reason: a failure diagnoses itself).
pub fn assert_no_dead_letters(names: &Names, broker: &Broker) {
    let dead = consume(names, broker, &names.topic("dlq"));
    assert!(dead.is_empty(), "dead-lettered: {dead:#?}");
}

/// Every record of a topic, as `herd consume` prints them.
pub fn consume(names: &Names, broker: &Broker, topic: &str) -> Vec<serde_json::Value> {
    let out = herd()
        .args(["consume", "--topic", topic])
        .envs(names.env(broker))
        .output()
        .unwrap_or_else(|e| panic!("herd consume: {e}"));
    assert!(
        out.status.success(),
        "herd consume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

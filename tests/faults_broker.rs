//! Faults against the real broker (Tansu on a free loopback port) with `herd run`
//! workers as separate processes, while a labelled fleet streams through (issue 8):
//!
//! 1. a worker killed with SIGKILL at ten random points: every attack is alerted, no
//!    incident is opened twice, nothing is lost, and the last worker's counters balance
//!    against the offsets it read;
//! 2. the broker (persistent storage) restarted under load: the worker rides out the
//!    outage, or, when the broker refuses deliveries after it (Tansu 0.6 does), the
//!    run stops without committing and the worker goes back in place to the
//!    last commit; the process never exits, and nothing is lost either way;
//! 3. workers added and removed while the fleet streams: state is handed over, and
//!    nothing is lost.
//!
//! "Nothing lost" is shown three ways: every input offset is committed (the group is
//! caught up), the incidents are exactly those `herd replay` finds in the same files
//! (a record lost, or state lost in a hand-over, misses an attack or raises another),
//! and nothing was dead-lettered.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::broker::{Broker, Names, PARTITIONS, Worker, assert_no_dead_letters, produce};
use support::fleet::{
    IN_ORDER, assert_every_attack_alerted, assert_same_incidents, fleet, fleet_start_ms,
    produce_window, stream_alerts, summary_line, workdir,
};

/// A small deterministic generator for the kill points; the seed is printed, and
/// `HERD_TEST_SEED` replays a run.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("HERD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("kill points: HERD_TEST_SEED={seed}");
        Rng(seed)
    }

    /// Uniform in `lo..hi` milliseconds (splitmix64).
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Duration::from_millis(lo + (z ^ (z >> 31)) % (hi - lo))
    }
}

/// The fleet's records in `windows` consecutive event-time windows, produced one after
/// the other (a stream, not one burst).
fn stream_fleet(names: &Names, broker: &Broker, files: &[PathBuf], dir: &Path, windows: i64) {
    let start = fleet_start_ms(dir);
    let step = 48 * 3_600_000 / windows;
    for k in 0..windows {
        let from = (k > 0).then_some(start + k * step);
        let until = (k + 1 < windows).then_some(start + (k + 1) * step);
        produce_window(names, broker, files, from, until);
    }
}

/// What a stopped worker says it did with each input: topic → records taken.
fn taken(log: &str) -> BTreeMap<String, u64> {
    let mut by_topic = BTreeMap::new();
    for l in log.lines() {
        let Some(rest) = l.strip_prefix("herd run: input ") else {
            continue;
        };
        let (topic, rest) = rest.split_once(": ").unwrap_or_else(|| panic!("{l}"));
        let (n, parts) = rest
            .split_once(" records = ")
            .unwrap_or_else(|| panic!("{l}"));
        let n: u64 = n.parse().unwrap_or_else(|e| panic!("{e}: {l}"));
        // scored + filtered + dead-lettered + forwarded: every record one outcome.
        let sum: u64 = parts
            .split(" + ")
            .map(|p| {
                p.split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{l}"))
            })
            .sum();
        assert_eq!(sum, n, "outcomes do not add up: {l}");
        by_topic.insert(topic.to_owned(), n);
    }
    by_topic
}

/// A worker's log lines of partitions restored and revoked, and its warnings and errors.
fn hand_overs(log: &str) -> String {
    log.lines()
        .filter(|l| {
            ["restored task", "revoke", "WARN", "ERROR"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything the group has committed per input topic, summed over partitions.
fn committed_sum(names: &Names, broker: &Broker) -> Vec<i64> {
    let topics = names.inputs();
    let c = broker.committed(&names.group(), &topics, PARTITIONS);
    c.chunks(PARTITIONS as usize)
        .map(|t| t.iter().map(|o| (*o).max(0)).sum())
        .collect()
}

fn ends_sum(names: &Names, broker: &Broker) -> Vec<i64> {
    names
        .inputs()
        .iter()
        .map(|t| broker.ends(t, PARTITIONS).iter().sum())
        .collect()
}

/// Waits until the group has committed something.
fn wait_some_committed(names: &Names, broker: &Broker) {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while committed_sum(names, broker).iter().sum::<i64>() == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing committed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The checks every fault test ends with.
fn assert_nothing_lost(names: &Names, broker: &Broker, dir: &Path, files: &[PathBuf], log: &str) {
    let alerts = stream_alerts(names, broker);
    assert_every_attack_alerted(&dir.join("fleet"), &alerts);
    // Incident ids are deterministic: an incident opened a second time after a fault
    // would carry a new id, and an attack missed would lack one.
    assert_same_incidents(&alerts, files, summary_line(log));
    assert_no_dead_letters(names, broker);
}

/// One test of this file at a time. Each runs its own broker, workers and a producer of
/// a two-day fleet; run together on two cores beside the rest of the suite, they starve
/// each other, which is not what they test: one CI run saw a worker take 2,403 records
/// out of order after a hand-off, another a group that was never reassigned after a
/// revoke (600 s, no broker error). Each passed alone with the same seed, in 80 s;
/// the three together took 630 s, so one at a time is also quicker.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one still runs.
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn ten_sigkills_at_random_points_lose_no_record_and_open_no_incident_twice_issue_8() {
    let _one = one_at_a_time();
    let dir = workdir("kills");
    let files = fleet(&dir.join("fleet"));
    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("kills");
    let mut rng = Rng::from_env();
    // Static membership (a StatefulSet's restarted pod): each new worker takes the
    // killed one's partitions at once.
    let member = [("HERD_KAFKA__GROUP_INSTANCE_ID", "worker-0"), IN_ORDER];
    std::thread::scope(|s| {
        let producer = s.spawn(|| stream_fleet(&names, &broker, &files, &dir.join("fleet"), 8));
        for k in 0..10 {
            let w = Worker::start_with(&names, &broker, dir.join(format!("w{k}.log")), &member);
            // Anywhere: before its restore is done, mid-batch, mid-checkpoint.
            std::thread::sleep(rng.millis(300, 6_000));
            w.kill();
        }
        producer
            .join()
            .unwrap_or_else(|_| panic!("producing the fleet"));
    });
    // The last worker starts where the ten left off and finishes the stream.
    let from = committed_sum(&names, &broker);
    let last = Worker::start_with(&names, &broker, dir.join("last.log"), &member);
    broker.wait_caught_up(&names, Duration::from_secs(600));
    let log = last.stop();
    eprintln!("{}", summary_line(&log));
    // Its counters balance: every record between where it started and the end of each
    // input was taken once and given exactly one outcome.
    let to = ends_sum(&names, &broker);
    let took = taken(&log);
    for ((topic, a), b) in names.inputs().iter().zip(&from).zip(&to) {
        assert_eq!(
            took.get(topic).copied().unwrap_or(0),
            (b - a) as u64,
            "{topic}: records taken by the last worker vs its share of the offsets\n{log}"
        );
    }
    assert_nothing_lost(&names, &broker, &dir, &files, &log);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_broker_restarted_under_load_loses_nothing_and_the_worker_resumes_issue_8() {
    let _one = one_at_a_time();
    let dir = workdir("broker-restart");
    let files = fleet(&dir.join("fleet"));
    let mut broker = Broker::start_persistent(&dir.join("broker"), &dir.join("broker.log"));
    let names = Names::new("restart");
    // A backlog: the worker is consuming, scoring and checkpointing when the broker
    // goes away.
    produce(&names, &broker, &files, &[]);
    let mut worker = Worker::start_with(&names, &broker, dir.join("worker.log"), &[IN_ORDER]);
    // (Reading the topics to their ends, as `wait_part_committed` does, takes this
    // broker longer than the worker takes to finish: restart at the first commit.)
    wait_some_committed(&names, &broker);
    let before: i64 = committed_sum(&names, &broker).iter().sum();
    broker.restart(Duration::from_secs(3));
    // A worker rides out what it can retry (timeouts, a broker that is down). Tansu
    // 0.6 answers some produce requests just after its restart with
    // UNKNOWN_SERVER_ERROR, which librdkafka does not retry: those effects are lost, so
    // the worker goes back to the last commit in place, keeping its group membership
    // (`stream.max_restarts`). The process never exits.
    broker.wait_caught_up(&names, Duration::from_secs(600));
    assert!(worker.exited().is_none(), "the worker exited");
    let log = worker.stop();
    eprintln!("{}", summary_line(&log));
    if log.contains("went back to the last commit") {
        eprintln!("the broker refused deliveries after its restart; the worker went back in place");
    }
    let to = ends_sum(&names, &broker);
    assert!(
        before < to.iter().sum::<i64>(),
        "the worker had finished before the restart"
    );
    // The same process all along: it took every record at least once.
    let took: u64 = taken(&log).values().sum();
    let ends: i64 = to.iter().sum();
    assert!(took >= ends as u64, "took {took} of {ends} records\n{log}");
    assert_nothing_lost(&names, &broker, &dir, &files, &log);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workers_added_and_removed_under_load_hand_their_state_over_issue_8() {
    let _one = one_at_a_time();
    let dir = workdir("rebalance");
    let files = fleet(&dir.join("fleet"));
    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("rebalance");
    let a = Worker::start_with(&names, &broker, dir.join("a.log"), &[IN_ORDER]);
    let (b_log, c_log, a_log) = std::thread::scope(|s| {
        let producer = s.spawn(|| stream_fleet(&names, &broker, &files, &dir.join("fleet"), 6));
        // Grow to three workers, then shrink to one, while the fleet streams.
        wait_some_committed(&names, &broker);
        let b = Worker::start_with(&names, &broker, dir.join("b.log"), &[IN_ORDER]);
        std::thread::sleep(Duration::from_secs(8));
        let c = Worker::start_with(&names, &broker, dir.join("c.log"), &[IN_ORDER]);
        std::thread::sleep(Duration::from_secs(8));
        let a_log = a.stop();
        std::thread::sleep(Duration::from_secs(8));
        let b_log = b.stop();
        producer
            .join()
            .unwrap_or_else(|_| panic!("producing the fleet"));
        (b_log, c, a_log)
    });
    broker.wait_caught_up(&names, Duration::from_secs(600));
    let c_log = c_log.stop();
    for (who, log) in [("B", &b_log), ("C", &c_log)] {
        assert!(
            log.contains("restored task"),
            "{who} was handed no partition:\n{log}"
        );
    }
    // With each summary, when the worker was handed or relieved of partitions and
    // what went wrong: shown if the comparison below fails (it has failed in two full
    // checks, and passed alone, without these).
    for (who, log) in [("A", &a_log), ("B", &b_log), ("C", &c_log)] {
        eprintln!("{who}: {}\n{}", summary_line(log), hand_overs(log));
    }
    assert_nothing_lost(&names, &broker, &dir, &files, &c_log);
    let _ = std::fs::remove_dir_all(&dir);
}

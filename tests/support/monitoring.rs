//! Real Prometheus and Alertmanager processes on loopback (Debian's `prometheus` and
//! `prometheus-alertmanager`, which `scripts/check` installs), and a small HTTP client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::free_port;

fn tool(name: &str) -> PathBuf {
    let p = PathBuf::from("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{} is not installed (scripts/check installs Debian's prometheus and \
         prometheus-alertmanager)",
        p.display()
    );
    p
}

/// One HTTP/1.0 GET on loopback: (status, body).
pub fn get(port: u16, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Polls `f` every 250 ms until it gives `Some`, or panics with `what` after `within`.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn wait_listening(port: u16, what: &str) {
    eventually(Duration::from_secs(30), what, || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// A process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Guard {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
    Guard(
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
    )
}

/// A Prometheus server scraping the given targets every second.
pub struct Prometheus {
    _p: Guard,
    pub port: u16,
}

impl Prometheus {
    /// `targets`: (job, port on 127.0.0.1); `rules`: rule files to load.
    pub fn start(dir: &Path, targets: &[(&str, u16)], rules: &[PathBuf]) -> Prometheus {
        let bin = tool("prometheus");
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, port) in targets {
            cfg.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
            ));
        }
        if !rules.is_empty() {
            cfg.push_str("rule_files:\n");
            for r in rules {
                cfg.push_str(&format!("  - {}\n", r.display()));
            }
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, cfg).unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let p = spawn(cmd, &dir.join("prometheus.log"));
        wait_listening(port, "Prometheus to listen");
        Prometheus { _p: p, port }
    }

    /// An instant query: the result vector as (labels, value).
    pub fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let path = format!(
            "/api/v1/query?query={}",
            url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        );
        let Ok((200, body)) = get(self.port, &path) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        let val = s["value"][1]
                            .as_str()
                            .and_then(|x| x.parse().ok())
                            .unwrap_or(f64::NAN);
                        (s["metric"].clone(), val)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A query expected to give one value.
    pub fn scalar(&self, q: &str) -> Option<f64> {
        match self.query(q).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// `/api/v1/rules`.
    pub fn rules(&self) -> serde_json::Value {
        let (_, body) = get(self.port, "/api/v1/rules").unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_str(&body).unwrap_or_default()
    }
}

/// An Alertmanager with one do-nothing receiver, clustering off.
pub struct Alertmanager {
    _p: Guard,
    pub port: u16,
}

impl Alertmanager {
    pub fn start(dir: &Path) -> Alertmanager {
        let bin = tool("prometheus-alertmanager");
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("alertmanager.yml");
        std::fs::write(
            &file,
            "route:\n  receiver: default\n  group_wait: 1s\nreceivers:\n  - name: default\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No gossip: it would listen on every interface.
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn");
        let p = spawn(cmd, &dir.join("alertmanager.log"));
        wait_listening(port, "Alertmanager to listen");
        Alertmanager { _p: p, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET /api/v2/alerts`: every alert Alertmanager holds (active or not).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let Ok((200, body)) = get(self.port, "/api/v2/alerts") else {
            return Vec::new();
        };
        serde_json::from_str(&body).unwrap_or_default()
    }
}

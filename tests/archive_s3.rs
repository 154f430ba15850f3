//! The archive and `herd retrain` on an S3-compatible store (issue 6): moto's S3 server
//! on a free loopback port stands in for the bucket. A fleet archived there by
//! `herd replay` holds the same rows in the same hive layout as a local archive, a
//! second backfill adds nothing (every object is already there, identical), and
//! `herd retrain` reads the bucket to the same snapshots as the local archive.
//!
//! Credentials and the region come from the AWS environment, the endpoint from the
//! archive's options, as an operator would configure them.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herd::retrain::Retrained;
use support::broker::{free_port, herd};
use support::fleet::{FILES, replay_to_archive, workdir};

/// moto's server, stopped when dropped.
struct S3 {
    child: Child,
    port: u16,
}

impl S3 {
    fn start(log: &Path) -> S3 {
        let venv = std::env::var_os("HERD_VENV").map_or_else(
            || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/herd/venv"),
            PathBuf::from,
        );
        let bin = venv.join("bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: scripts/check installs moto[server] into the venv",
            bin.display()
        );
        let port = free_port();
        let log = std::fs::File::create(log).expect("moto log");
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("moto_server");
        let s3 = S3 { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while s3.request("GET", "/").is_none() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        s3
    }

    /// A plain HTTP request (moto takes unsigned ones): (status, body).
    fn request(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split(' ').nth(1)?.parse().ok()?;
        Some((status, out.split_once("\r\n\r\n")?.1.to_owned()))
    }

    /// Every key under `prefix` (ListObjectsV2, following continuation tokens).
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{bucket}?list-type=2&prefix={prefix}");
            if let Some(t) = &token {
                let t: String = url::form_urlencoded::byte_serialize(t.as_bytes()).collect();
                path.push_str(&format!("&continuation-token={t}"));
            }
            let (status, body) = self.request("GET", &path).expect("list");
            assert_eq!(status, 200, "{body}");
            let tag = |name: &str| {
                let (open, close) = (format!("<{name}>"), format!("</{name}>"));
                body.split(open.as_str())
                    .skip(1)
                    .filter_map(|p| p.split_once(close.as_str()).map(|(v, _)| v.to_owned()))
                    .collect::<Vec<_>>()
            };
            keys.extend(tag("Key"));
            token = tag("NextContinuationToken").into_iter().next();
            if token.is_none() {
                return keys;
            }
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "herd-test"),
            ("AWS_SECRET_ACCESS_KEY", "herd-test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("HERD_ARCHIVE__URL", "s3://herd-archive/observations"),
            ("HERD_ARCHIVE__OPTIONS__ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([(
            "HERD_ARCHIVE__OPTIONS__ENDPOINT".to_owned(),
            format!("http://127.0.0.1:{}", self.port),
        )])
        .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            local_files(&p, root, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.display().to_string());
        }
    }
}

/// Snapshots written by `herd retrain --out`, by group.
fn snapshots(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    std::fs::read_dir(dir)
        .expect("out dir")
        .flatten()
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("read");
            let s = Retrained::parse(&bytes).expect("parse");
            (s.group, serde_json::from_slice(&bytes).expect("json"))
        })
        .collect()
}

/// Whether two retrains of the same rows agree. A bucket lists its objects by name and
/// a directory by inode, so the retrain reads the rows in another order; its quantiles
/// come from an order-independent sketch, so everything must be equal but
/// `trained_at`. The one exception is the replica spread, a quantile of standard
/// deviations whose last bits depend on the order their terms were summed in: within
/// one bucket of the sketch (twice its relative accuracy).
fn same_retrain(a: &serde_json::Value, b: &serde_json::Value) -> Result<(), String> {
    for k in [
        "format",
        "group",
        "repository",
        "since_ms",
        "until_ms",
        "first_ms",
        "last_ms",
        "rows",
        "replicas",
        "structure",
    ] {
        if a[k] != b[k] {
            return Err(format!("{k}: {} vs {}", a[k], b[k]));
        }
    }
    let (Some(fa), Some(fb)) = (a["features"].as_object(), b["features"].as_object()) else {
        return Err("features".into());
    };
    if fa.keys().ne(fb.keys()) {
        return Err("feature names".into());
    }
    for (name, x) in fa {
        let mut x = x.clone();
        let mut y = fb[name].clone();
        let (sx, sy) = (x["replica_spread"].take(), y["replica_spread"].take());
        if x != y {
            return Err(format!("{name}: {x} vs {y}"));
        }
        match (sx.as_f64(), sy.as_f64()) {
            (Some(p), Some(q)) => {
                let tol = 2.0 * herd_baseline::sketch::REL_ACCURACY * p.abs().max(q.abs());
                if (p - q).abs() > tol {
                    return Err(format!("{name}.replica_spread: {p} vs {q}"));
                }
            }
            _ if sx == sy => {}
            _ => return Err(format!("{name}.replica_spread: {sx} vs {sy}")),
        }
    }
    Ok(())
}

#[test]
fn the_archive_and_retrain_work_on_an_s3_compatible_store_issue_6() {
    let dir = workdir("s3");
    let s3 = S3::start(&dir.join("moto.log"));
    let (status, body) = s3.request("PUT", "/herd-archive").expect("create bucket");
    assert_eq!(status, 200, "create bucket: {body}");

    herd::simulate::simulate(
        &herd::simulate::SimConfig {
            seed: 5,
            hours: 26,
            interval_s: 60,
            recur_after_h: None,
        },
        &dir.join("fleet"),
    )
    .expect("simulate");
    let files: Vec<PathBuf> = FILES.iter().map(|f| dir.join("fleet").join(f)).collect();

    // The reference: the same fleet archived to a local directory.
    let local = dir.join("archive");
    replay_to_archive(&files, &local);
    let mut want = Vec::new();
    local_files(&local, &local, &mut want);
    want.sort();
    assert!(want.len() > 1, "{want:?}");

    let backfill = || {
        let out = herd()
            .arg("replay")
            .args(&files)
            .envs(s3.env())
            .stdout(Stdio::null())
            .output()
            .expect("herd replay");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    backfill();
    let mut keys = s3.keys("herd-archive", "observations/");
    keys.sort();
    let got: Vec<String> = keys
        .iter()
        .map(|k| k.trim_start_matches("observations/").to_owned())
        .collect();
    assert_eq!(got, want, "the bucket holds the local archive's files");
    assert!(
        got.iter()
            .all(|k| k.starts_with("date=") && k.contains("/hour="))
    );

    // A second backfill of the same records finds every object there, identical.
    let again = backfill();
    assert_eq!(s3.keys("herd-archive", "observations/").len(), keys.len());
    assert!(
        again.contains(&format!(
            "archived: 0 rows in 0 files ({} identical files already there)",
            keys.len()
        )),
        "{again}"
    );

    // The retrain reads the bucket to the same snapshots as the local directory.
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("fleet/labels.json")).expect("labels"))
            .expect("labels");
    let until = labels["end"].as_str().expect("end").to_owned();
    let retrain = |archive: &str, out: &Path, env: &[(String, String)]| {
        let o = herd()
            .arg("retrain")
            .args(["--archive", archive])
            .args(["--since", "27h", "--until", &until])
            .args(["--memory-mb", "64"])
            .arg("--out")
            .arg(out)
            .envs(env.iter().cloned())
            .output()
            .expect("herd retrain");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    retrain(
        &format!("file://{}", local.display()),
        &dir.join("from-local"),
        &[],
    );
    retrain(
        "s3://herd-archive/observations",
        &dir.join("from-s3"),
        &s3.env(),
    );
    let (a, b) = (
        snapshots(&dir.join("from-local")),
        snapshots(&dir.join("from-s3")),
    );
    assert!(a.len() >= 3, "{} snapshots", a.len());
    assert!(a.keys().eq(b.keys()), "groups differ");
    for (group, x) in &a {
        if let Err(e) = same_retrain(x, &b[group]) {
            panic!("{group}: {e}");
        }
    }
    drop(s3);
    let _ = std::fs::remove_dir_all(&dir);
}

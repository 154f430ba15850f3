//! `cargo bench --bench retrain`: the retrain's aggregation on DataFusion against DuckDB
//! (PyPI's `duckdb`, in `$HERD_VENV`, installed when missing), the same queries over the
//! same Parquet files in the same run, on the same number of threads. DataFusion runs in
//! `herd retrain`'s own session (its fair spilling memory pool, 1 GiB as by default).
//!
//! The archive is a simulated fleet (seed 11, `HERD_BENCH_HOURS` hours, default 72, at
//! 10 s sampling) written by `herd replay` into `target/retrain-bench/archive` once and
//! reused. Each query runs `RUNS` times per engine; the median counts. Prints a table
//! per query, the totals, rows/s and the DataFusion/DuckDB time ratio, and writes them
//! to `target/retrain-bench/result.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use herd::retrain::sql::{self, Dialect, Window};

const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn herd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herd"))
}

/// Builds the archive once: simulate, then replay with the archive on.
fn archive(root: &Path, hours: u32) -> PathBuf {
    let dir = root.join(format!("archive-{hours}h"));
    if dir.join("done").exists() {
        return dir;
    }
    let fleet = root.join(format!("fleet-{hours}h"));
    let st = herd()
        .args(["simulate", "--seed", "11", "--interval-s", "10", "--hours"])
        .arg(hours.to_string())
        .arg("--out")
        .arg(&fleet)
        .status()
        .expect("herd simulate");
    assert!(st.success());
    let files: Vec<PathBuf> = [
        "stats.jsonl",
        "stats-raw.jsonl",
        "events.jsonl",
        "falco.jsonl",
    ]
    .iter()
    .map(|f| fleet.join(f))
    .collect();
    let st = herd()
        .arg("replay")
        .arg("--quiet")
        .args(&files)
        .env("HERD_ARCHIVE__URL", format!("file://{}", dir.display()))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("herd replay");
    assert!(st.success());
    std::fs::write(dir.join("done"), b"").expect("marker");
    let _ = std::fs::remove_dir_all(&fleet);
    dir
}

fn python() -> PathBuf {
    let venv = std::env::var_os("HERD_VENV").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/herd/venv"),
        PathBuf::from,
    );
    if !venv.join("bin/python").exists() {
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(st.success());
    }
    let py = venv.join("bin/python");
    let has = Command::new(&py)
        .args(["-c", "import duckdb"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        let st = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "duckdb"])
            .status()
            .expect("pip install duckdb");
        assert!(st.success(), "pip install duckdb failed");
    }
    py
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/retrain-bench");
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map_or(root, |t| PathBuf::from(t).join("retrain-bench"));
    std::fs::create_dir_all(&root).expect("bench dir");
    let hours: u32 = std::env::var("HERD_BENCH_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(72);
    let dir = archive(&root, hours);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());

    // DataFusion.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // herd's own session: the retrain's memory pool (fair, spilling; `herd retrain`'s
    // default budget) and partitioning, over the archive as `herd retrain` registers it.
    let opts = herd::retrain::Options {
        archive: format!("file://{}", dir.display()),
        store_options: Default::default(),
        since_ms: i64::MIN,
        until_ms: i64::MAX,
        memory_bytes: 1024 << 20,
        progress: false,
    };
    let ctx = rt.block_on(herd::retrain::session(&opts)).expect("session");
    // The window: the whole archive, as the data says (so the day pruning is real).
    let stat = |q: &str| -> i64 {
        rt.block_on(async {
            let b = ctx
                .sql(q)
                .await
                .expect("plan")
                .collect()
                .await
                .expect("run");
            let c = datafusion::arrow::compute::cast(
                b[0].column(0),
                &datafusion::arrow::datatypes::DataType::Int64,
            )
            .expect("cast");
            c.as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map_or(0, |a| a.value(0))
        })
    };
    let rows = stat("SELECT count(*) FROM obs") as u64;
    let w = Window {
        since_ms: stat("SELECT min(CAST(ts AS BIGINT)) FROM obs"),
        until_ms: stat("SELECT max(CAST(ts AS BIGINT)) FROM obs") + 1,
    };
    // The small tables a retrain computes on the way (hourly levels, weekday offsets),
    // computed once and given to both engines: the same SQL text runs on each.
    let profiles = rt
        .block_on(herd::retrain::profiles(&ctx, w))
        .expect("profiles");
    let (levels, offsets) = (profiles.levels.as_str(), profiles.offsets.as_str());
    let mut df = Vec::new();
    let mut df_rows = std::collections::BTreeMap::new();
    for (name, q) in sql::all(Dialect::DataFusion, w, levels, offsets) {
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let out = rt.block_on(async {
                ctx.sql(&q)
                    .await
                    .expect("plan")
                    .collect()
                    .await
                    .expect("run")
            });
            times.push(t.elapsed().as_secs_f64());
            df_rows.insert(name, out.iter().map(|b| b.num_rows()).sum::<usize>());
        }
        df.push((name, median(times)));
    }

    // DuckDB, same queries in its dialect.
    let queries: Vec<(&str, String)> = sql::all(Dialect::DuckDb, w, levels, offsets);
    let qfile = root.join("duckdb-queries.json");
    std::fs::write(&qfile, serde_json::to_vec(&queries).expect("json")).expect("write");
    let out = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/retrain_duckdb.py"))
        .arg(&qfile)
        .arg(&dir)
        .arg(threads.to_string())
        .arg(RUNS.to_string())
        .output()
        .expect("duckdb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duck: serde_json::Value = serde_json::from_slice(&out.stdout).expect("duckdb json");

    println!(
        "retrain aggregation, {rows} rows ({hours} h fleet), {threads} threads, DuckDB {}",
        duck["version"].as_str().unwrap_or("?")
    );
    println!(
        "{:<12} {:>12} {:>12} {:>8}",
        "query", "datafusion", "duckdb", "ratio"
    );
    let (mut td, mut tk) = (0.0, 0.0);
    let mut result = serde_json::Map::new();
    for (name, t) in &df {
        let times: Vec<f64> = duck["queries"][name]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        let k = median(times);
        // Both engines answered the same question: as many result rows.
        assert_eq!(
            duck["rows"][name].as_u64(),
            df_rows.get(name).map(|n| *n as u64),
            "{name}: result rows differ"
        );
        assert!(df_rows[name] > 0, "{name}: no result rows");
        td += t;
        tk += k;
        println!("{name:<12} {:>10.3} s {:>10.3} s {:>8.2}", t, k, t / k);
        result.insert(
            (*name).to_owned(),
            serde_json::json!({ "datafusion_s": t, "duckdb_s": k }),
        );
    }
    println!(
        "{:<12} {:>10.3} s {:>10.3} s {:>8.2}   ({:.0} vs {:.0} rows/s per query pass)",
        "total",
        td,
        tk,
        td / tk,
        rows as f64 * df.len() as f64 / td,
        rows as f64 * df.len() as f64 / tk
    );
    result.insert(
        "total".into(),
        serde_json::json!({ "rows": rows, "threads": threads, "datafusion_s": td, "duckdb_s": tk, "ratio": td / tk }),
    );
    // The whole retrain as `herd retrain` runs it (every query and the linfa fit).
    let whole = rt
        .block_on(herd::retrain::retrain(&herd::retrain::Options {
            since_ms: w.since_ms,
            until_ms: w.until_ms,
            ..opts
        }))
        .expect("retrain");
    println!(
        "whole retrain (SQL and linfa): {:.3} s, {:.0} rows/s, {} groups",
        whole.elapsed_s,
        whole.rows as f64 / whole.elapsed_s,
        whole.snapshots.len()
    );
    result.insert(
        "retrain".into(),
        serde_json::json!({ "rows": whole.rows, "seconds": whole.elapsed_s, "groups": whole.snapshots.len() }),
    );
    std::fs::write(
        root.join("result.json"),
        serde_json::to_vec_pretty(&result).expect("json"),
    )
    .expect("write result");
}

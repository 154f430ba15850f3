//! The observation archive (issue 6): a worker killed with SIGKILL mid-stream and
//! restarted leaves no partial file and loses no row: the archive holds every row that
//! `herd replay` archives from the same fleet, readable by DataFusion, with its schema
//! version; rows written twice come only from records processed again after the kill.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use support::broker::{Broker, Names, Worker};
use support::fleet::{FILES, fleet_start_ms, produce_window, replay_to_archive, workdir};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// (rows, distinct rows) of an archive, and the distinct rows the other lacks.
fn compare(a: &Path, b: &Path) -> ((i64, i64), (i64, i64), i64, i64) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ctx = SessionContext::new();
        let schema = herd::archive::schema();
        for (name, dir) in [("a", a), ("b", b)] {
            let opts = ParquetReadOptions::default().schema(&schema);
            ctx.register_parquet(name, &format!("{}/", dir.display()), opts)
                .await
                .expect("register");
        }
        let one = |q: String| {
            let ctx = ctx.clone();
            async move {
                let b = ctx
                    .sql(&q)
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
                    .map_or(-1, |a| a.value(0))
            }
        };
        let key = "container_id, ts, feature, value, event";
        let count = |t: &str| format!("SELECT count(*) FROM {t}");
        let distinct = |t: &str| format!("SELECT count(*) FROM (SELECT DISTINCT {key} FROM {t})");
        let minus = |x: &str, y: &str| {
            format!("SELECT count(*) FROM (SELECT {key} FROM {x} EXCEPT SELECT {key} FROM {y})")
        };
        (
            (one(count("a")).await, one(distinct("a")).await),
            (one(count("b")).await, one(distinct("b")).await),
            one(minus("a", "b")).await,
            one(minus("b", "a")).await,
        )
    })
}

#[test]
fn the_archive_survives_a_killed_worker_without_partial_files_or_lost_rows_issue_6() {
    let dir = workdir("archive");
    herd::simulate::simulate(
        &herd::simulate::SimConfig {
            seed: 4,
            hours: 6,
            interval_s: 60,
            recur_after_h: None,
        },
        &dir.join("fleet"),
    )
    .expect("simulate");
    let files: Vec<PathBuf> = FILES.iter().map(|f| dir.join("fleet").join(f)).collect();
    let start = fleet_start_ms(&dir.join("fleet"));

    // What the archive must hold: `herd replay` of the same fleet, archived.
    let replayed = dir.join("replay-archive");
    replay_to_archive(&files, &replayed);

    let streamed = dir.join("stream-archive");
    let url = format!("file://{}", streamed.display());
    let env = [
        ("HERD_ARCHIVE__URL", url.as_str()),
        // Small files: several size-triggered writes between checkpoints.
        ("HERD_ARCHIVE__MAX_FILE_ROWS", "2000"),
        // Static membership: the restarted worker takes the killed one's place at once.
        ("HERD_KAFKA__GROUP_INSTANCE_ID", "worker-0"),
    ];
    let broker = Broker::start(&dir.join("broker.log"));
    let names = Names::new("archive");
    produce_window(&names, &broker, &files, None, Some(start + 3 * 3_600_000));
    let worker = Worker::start_with(&names, &broker, dir.join("worker-1.log"), &env);
    // Killed while it works: part of the input committed, files written since.
    broker.wait_part_committed(&names);
    worker.kill();
    let worker = Worker::start_with(&names, &broker, dir.join("worker-2.log"), &env);
    produce_window(&names, &broker, &files, Some(start + 3 * 3_600_000), None);
    broker.wait_caught_up(&names, Duration::from_secs(240));
    let log = worker.stop();

    // Only complete Parquet files, in hive folders, none left mid-write.
    let written = files_under(&streamed);
    assert!(written.len() > 3, "{written:?}\n{log}");
    for f in &written {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(
            name.ends_with(".parquet") && !name.contains('#'),
            "{}",
            f.display()
        );
        let rel = f.strip_prefix(&streamed).expect("under the archive");
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        assert!(
            parts[0].starts_with("date=") && parts[1].starts_with("hour="),
            "{parts:?}"
        );
        let reader = datafusion::parquet::file::serialized_reader::SerializedFileReader::new(
            std::fs::File::open(f).expect("open"),
        )
        .expect("a complete Parquet file");
        let kv = datafusion::parquet::file::reader::FileReader::metadata(&reader)
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default();
        assert!(
            kv.iter().any(|k| k.key == "herd.archive.schema_version"
                && k.value.as_deref() == Some(herd::archive::SCHEMA_VERSION)),
            "{}: no schema version",
            f.display()
        );
    }

    // No row lost; duplicates only from what was processed again.
    let ((rows, distinct), (r_rows, r_distinct), lost, extra) = compare(&streamed, &replayed);
    assert_eq!(r_rows, r_distinct, "replay archives each row once");
    assert_eq!(
        lost, 0,
        "rows of the replay archive missing from the stream's"
    );
    assert_eq!(
        extra, 0,
        "rows in the stream's archive that replay did not score"
    );
    assert_eq!(distinct, r_distinct);
    assert!(
        rows - distinct <= rows / 4,
        "{} duplicate rows of {rows}",
        rows - distinct
    );
    let _ = std::fs::remove_dir_all(&dir);
}

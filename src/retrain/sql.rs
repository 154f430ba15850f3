//! The retrain's SQL, for DataFusion and (in the benchmark) DuckDB: the same queries,
//! differing only where the dialects do (quantiles, epoch milliseconds).
//!
//! Every query reads table `obs` (the archive, with hive columns `date` and `hour`)
//! and is filtered to the window twice: by `date` (partition pruning: only the files
//! of the window's days are opened) and by event time.

/// The engine a query is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Apache DataFusion (herd's engine).
    DataFusion,
    /// DuckDB (the benchmark's reference).
    DuckDb,
}

use super::quantiles::{NAME, Q, QUANTILES};

/// An event-time window, epoch ms, `[since, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, inclusive.
    pub since_ms: i64,
    /// End, exclusive.
    pub until_ms: i64,
}

/// The steps of a retrain, in order (the progress bar's messages).
pub const STEPS: [&str; 7] = [
    "groups",
    "quantiles",
    "median absolute deviation",
    "daily and weekly profiles",
    "residuals around the daily profile",
    "replica spread",
    "multivariate structure",
];

/// Quantile `q` of `e`: in DataFusion from herd's order-independent sketch
/// ([`super::quantiles`]: the same rows give the same value, within 2 % of the true
/// one), in DuckDB its own t-digest (`approx_quantile`), the nearest it has.
fn pct(d: Dialect, q: Q, e: &str) -> String {
    match d {
        Dialect::DataFusion => format!("get_field({NAME}({e}), '{}')", q.0),
        Dialect::DuckDb => format!("approx_quantile({e}, {})", q.1),
    }
}

/// `quantile AS name, …`: quantiles of one expression (in DataFusion one aggregate).
fn pcts(d: Dialect, qs: &[(Q, &str)], e: &str) -> String {
    let cols: Vec<String> = qs
        .iter()
        .map(|(q, name)| format!("{} AS {name}", pct(d, *q, e)))
        .collect();
    cols.join(", ")
}

/// The quantile of probability `p` in [`QUANTILES`]: the ones the aggregate answers.
const fn q(p: f64) -> Q {
    let mut i = 0;
    while i < QUANTILES.len() {
        if QUANTILES[i].1 == p {
            return QUANTILES[i];
        }
        i += 1;
    }
    panic!("herd_quantiles does not answer this quantile")
}

const MEDIAN: Q = q(0.5);

/// Epoch milliseconds of a timestamp column.
pub(crate) fn epoch_ms(d: Dialect, col: &str) -> String {
    match d {
        Dialect::DataFusion => format!("CAST({col} AS BIGINT)"),
        Dialect::DuckDb => format!("epoch_ms({col})"),
    }
}

/// The UTC day of `ms` as the archive's `date` folder names it; beyond chrono's range,
/// the earliest or latest day there can be (`or`).
fn day(ms: i64, or: &str) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| or.to_owned())
}

/// The window's predicate on table alias `t` (empty: unaliased).
pub(crate) fn window(d: Dialect, w: Window, t: &str) -> String {
    let p = if t.is_empty() {
        String::new()
    } else {
        format!("{t}.")
    };
    let last_day = day(w.until_ms.saturating_sub(1), "9999-12-31");
    format!(
        "{p}date >= '{}' AND {p}date <= '{last_day}' AND {e} >= {} AND {e} < {}",
        day(w.since_ms, "0000-01-01"),
        w.since_ms,
        w.until_ms,
        e = epoch_ms(d, &format!("{p}ts")),
    )
}

/// Per group: rows, replicas, first and last observation, an image of it.
pub fn groups(d: Dialect, w: Window) -> String {
    format!(
        "SELECT \"group\" AS grp, min(image) AS image, count(*) AS n, \
         count(DISTINCT container_id) AS replicas, min({e}) AS first_ms, max({e}) AS last_ms \
         FROM obs WHERE {win} GROUP BY \"group\"",
        e = epoch_ms(d, "ts"),
        win = window(d, w, ""),
    )
}

/// Per group and feature: count and quantiles.
pub fn quantiles(d: Dialect, w: Window) -> String {
    const QS: [(Q, &str); 6] = [
        (q(0.05), "p05"),
        (q(0.25), "p25"),
        (MEDIAN, "p50"),
        (q(0.75), "p75"),
        (q(0.95), "p95"),
        (q(0.99), "p99"),
    ];
    format!(
        "SELECT \"group\" AS grp, feature, count(value) AS n, {} FROM obs \
         WHERE {} AND feature IS NOT NULL AND value IS NOT NULL GROUP BY \"group\", feature",
        pcts(d, &QS, "value"),
        window(d, w, ""),
    )
}

/// Per group and feature: median absolute deviation from the median. The medians
/// (one row per group and feature) come first in the join: DataFusion builds its hash
/// table from the left input, and it must be the small one (with the archive there,
/// the join held the whole window in memory).
pub fn mad(d: Dialect, w: Window) -> String {
    format!(
        "WITH med AS (SELECT \"group\" AS grp, feature, {m} AS med FROM obs \
           WHERE {win} AND feature IS NOT NULL AND value IS NOT NULL GROUP BY \"group\", feature) \
         SELECT o.\"group\" AS grp, o.feature AS feature, {dev} AS mad \
         FROM med JOIN obs o ON o.\"group\" = med.grp AND o.feature = med.feature \
         WHERE {wino} AND o.value IS NOT NULL GROUP BY o.\"group\", o.feature",
        m = pct(d, MEDIAN, "value"),
        dev = pct(d, MEDIAN, "abs(o.value - med.med)"),
        win = window(d, w, ""),
        wino = window(d, w, "o"),
    )
}

/// Per group, feature and hour of day (UTC): the median.
pub fn by_hour(d: Dialect, w: Window) -> String {
    format!(
        "SELECT \"group\" AS grp, feature, date_part('hour', ts) AS slot, {m} AS med \
         FROM obs WHERE {win} AND feature IS NOT NULL AND value IS NOT NULL \
         GROUP BY \"group\", feature, date_part('hour', ts) HAVING count(*) >= 10",
        m = pct(d, MEDIAN, "value"),
        win = window(d, w, ""),
    )
}

/// A small table known before a query runs (the hour-of-day levels, the weekday
/// offsets), as SQL: rows `(grp, feature, slot, v)` under the column names `cols`.
/// Computing such a table once and handing it to the queries that join against it
/// keeps them to one pass over the archive each (a subquery would aggregate the
/// archive again in every query that names it). Group and feature names are quoted
/// as SQL strings (a quote doubled), numbers written exactly (shortest round trip).
pub fn table(cols: [&str; 4], rows: &[(String, String, i64, f64)]) -> String {
    let [g, f, s, v] = cols;
    let quote = |x: &str| format!("'{}'", x.replace('\'', "''"));
    let values: Vec<String> = rows
        .iter()
        .filter(|r| r.3.is_finite())
        .map(|(grp, feat, slot, x)| format!("({}, {}, {slot}, {x:?})", quote(grp), quote(feat)))
        .collect();
    if values.is_empty() {
        return format!(
            "SELECT CAST(NULL AS VARCHAR) AS {g}, CAST(NULL AS VARCHAR) AS {f}, \
             CAST(NULL AS BIGINT) AS {s}, CAST(NULL AS DOUBLE) AS {v} WHERE 1 = 0"
        );
    }
    format!(
        "SELECT * FROM (VALUES {}) AS t({g}, {f}, {s}, {v})",
        values.join(", ")
    )
}

/// Per group, feature and day of week (0 = Sunday): the median of the values (`med`),
/// and the weekday's offset from the daily profile (`off`): the median residual around
/// the hour-of-day level (`levels`, [`table`] of [`by_hour`]'s medians; see
/// [`seasonal`]) of that weekday's rows, where they come from two dates or more. A
/// weekday's raw median mixes the daily cycle into it when the window covers part of a
/// day; its residuals do not. One date alone says nothing of the week (yesterday's
/// surge is not "Mondays"), so a window under a week and a day gives no offsets.
pub fn by_weekday(d: Dialect, w: Window, levels: &str) -> String {
    format!(
        "WITH {res} \
         SELECT grp, feature, dow AS slot, {m} AS med, \
           CASE WHEN count(DISTINCT obs_date) >= 2 THEN {off} END AS off \
         FROM res GROUP BY grp, feature, dow HAVING count(*) >= 10",
        res = residuals(d, w, levels),
        m = pct(d, MEDIAN, "v"),
        off = pct(d, MEDIAN, "r"),
    )
}

/// CTEs `lvl` (the hour-of-day levels: `levels`, a [`table`] with columns `grp`,
/// `feature`, `slot`, `med`) and `res`: every row of the window whose hour has a level,
/// with its group, feature, weekday, date, value and residual
/// `r = slog(value) - slog(level)`. The levels are the build side of the join.
fn residuals(d: Dialect, w: Window, levels: &str) -> String {
    format!(
        "lvl AS ({levels}), \
         res AS (SELECT o.\"group\" AS grp, o.feature AS feature, \
             date_part('dow', o.ts) AS dow, o.date AS obs_date, o.value AS v, {r} AS r \
           FROM lvl JOIN obs o ON o.\"group\" = lvl.grp AND o.feature = lvl.feature \
             AND date_part('hour', o.ts) = lvl.slot \
           WHERE {wino} AND o.value IS NOT NULL)",
        r = format_args!(
            "{} - {}",
            slog(d, "o.value", "o.feature"),
            slog(d, "lvl.med", "o.feature")
        ),
        wino = window(d, w, "o"),
    )
}

/// `slog(e)` with the resolution of the row's feature (`herd_baseline::numeric::slog`
/// and `RESOLUTIONS`, so that SQL and the stream scorer measure residuals alike).
fn slog(d: Dialect, e: &str, feature: &str) -> String {
    use herd_baseline::numeric::{DEFAULT_RESOLUTION, RESOLUTIONS};
    let cases: String = RESOLUTIONS
        .iter()
        .map(|(n, r)| format!(" WHEN '{n}' THEN {r:?}"))
        .collect();
    let sign = match d {
        Dialect::DataFusion => "signum",
        Dialect::DuckDb => "sign",
    };
    format!(
        "({sign}({e}) * ln(1.0 + abs({e}) / CASE {feature}{cases} ELSE {DEFAULT_RESOLUTION:?} END))"
    )
}

/// Per group and feature: quantiles of the residuals around the expected level: the
/// hour-of-day level (`levels`, as in [`by_weekday`]) moved by the weekday's offset
/// where there is one (`offsets`, a [`table`] with columns `grp`, `feature`, `dow`,
/// `off`, of [`by_weekday`]'s offsets): `r - off`. Rows of an hour too thin for a
/// level are left out. Both small tables are the build sides of their joins.
pub fn seasonal(d: Dialect, w: Window, levels: &str, offsets: &str) -> String {
    const QS: [(Q, &str); 7] = [
        (q(0.001), "q001"),
        (q(0.01), "q01"),
        (q(0.1), "q10"),
        (MEDIAN, "q50"),
        (q(0.9), "q90"),
        (q(0.99), "q99"),
        (q(0.999), "q999"),
    ];
    format!(
        "WITH {res}, wk AS ({offsets}) \
         SELECT res.grp AS grp, res.feature AS feature, count(*) AS n, {qs} \
         FROM wk RIGHT JOIN res ON wk.grp = res.grp AND wk.feature = res.feature \
           AND wk.dow = res.dow \
         GROUP BY res.grp, res.feature",
        res = residuals(d, w, levels),
        qs = pcts(d, &QS, "res.r - coalesce(wk.off, 0.0)"),
    )
}

/// Per group and feature: the median over minutes with three or more replicas of the
/// standard deviation between them.
pub fn spread(d: Dialect, w: Window) -> String {
    format!(
        "WITH per_min AS (SELECT \"group\" AS grp, feature, date_trunc('minute', ts) AS t, \
           container_id, avg(value) AS v FROM obs \
           WHERE {win} AND feature IS NOT NULL AND value IS NOT NULL \
           GROUP BY \"group\", feature, date_trunc('minute', ts), container_id), \
         minutes AS (SELECT grp, feature, t, stddev(v) AS sd FROM per_min \
           GROUP BY grp, feature, t HAVING count(*) >= 3) \
         SELECT grp, feature, {m} AS spread FROM minutes GROUP BY grp, feature",
        win = window(d, w, ""),
        m = pct(d, MEDIAN, "sd"),
    )
}

/// Every query of a retrain, named, in order (for the benchmark), with the small
/// tables a retrain computes on the way (`levels`, `offsets`: see [`table`]).
pub fn all(d: Dialect, w: Window, levels: &str, offsets: &str) -> Vec<(&'static str, String)> {
    vec![
        ("groups", groups(d, w)),
        ("quantiles", quantiles(d, w)),
        ("mad", mad(d, w)),
        ("by_hour", by_hour(d, w)),
        ("by_weekday", by_weekday(d, w, levels)),
        ("seasonal", seasonal(d, w, levels, offsets)),
        ("spread", spread(d, w)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_table_quotes_its_names_and_is_empty_without_finite_values() {
        let cols = ["grp", "feature", "slot", "med"];
        let row = |g: &str, x: f64| (g.to_owned(), "cpu_cores".to_owned(), 3, x);
        let t = table(cols, &[row("shop/o'brien", 0.25), row("a", f64::NAN)]);
        assert!(t.contains("('shop/o''brien', 'cpu_cores', 3, 0.25)"), "{t}");
        assert!(!t.contains("NaN") && !t.contains("'a'"), "{t}");
        // No row at all (or none finite) is still a table of the right columns.
        let empty = table(cols, &[row("a", f64::INFINITY)]);
        assert!(
            empty.contains("WHERE 1 = 0") && empty.contains("AS med"),
            "{empty}"
        );
    }

    #[test]
    fn the_window_prunes_by_day_and_filters_by_time() {
        let w = Window {
            since_ms: 1_763_942_400_000, // 2025-11-24T00:00:00Z
            until_ms: 1_764_028_800_000, // the next midnight: the window ends the day before
        };
        let p = window(Dialect::DataFusion, w, "o");
        assert!(
            p.contains("o.date >= '2025-11-24' AND o.date <= '2025-11-24'"),
            "{p}"
        );
        assert!(p.contains("CAST(o.ts AS BIGINT) >= 1763942400000"), "{p}");
        // An open window keeps every day.
        let open = window(
            Dialect::DuckDb,
            Window {
                since_ms: i64::MIN,
                until_ms: i64::MAX,
            },
            "",
        );
        assert!(
            open.contains("date >= '0000-01-01' AND date <= '9999-12-31'"),
            "{open}"
        );
        assert!(open.contains("epoch_ms(ts) >="), "{open}");
    }
}

//! `herd report` end to end (issue 9), on a simulated fleet and a real broker:
//!
//! - the two-day fleet (seed 2) is produced to Tansu and scored by a `herd run` worker
//!   whose policy captures every `shop/web` incident;
//! - a `herd agent` for the host of the cryptominer's replica executes the capture and
//!   the after-window addendum on the real Docker engine. The simulated container is not
//!   on this engine, so Docker's artifacts are recorded as missing, as they are for a
//!   container gone before its capture; the worker's observations are in the bundle;
//! - `herd report` renders the bundle, with the actions read from the responses topic;
//! - headless chromium (Debian's) opens the page: the DOM has a plot per deviating
//!   feature, and the screenshot shows the series drawn;
//! - a copy of the bundle with one byte changed is reported as not verified.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::agent::{Agent, payloads, wait_for};
use support::broker::{Broker, Names, Worker, herd};
use support::fleet::{fleet, produce_window, workdir};

/// Debian's chromium (`HERD_CHROMIUM` to use another).
fn chromium() -> Command {
    let bin = std::env::var("HERD_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
    ]);
    c
}

/// Pixels of the screenshot near the series' colour.
fn series_pixels(png_path: &Path) -> usize {
    let f = std::fs::File::open(png_path).unwrap_or_else(|e| panic!("{e}"));
    let mut dec = png::Decoder::new(std::io::BufReader::new(f));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().unwrap_or_else(|e| panic!("{e}"));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .unwrap_or_else(|e| panic!("{e}"));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let (r, g, b) = herd::report::SERIES_RGB;
    buf[..info.buffer_size()]
        .chunks_exact(channels)
        .filter(|p| p[0].abs_diff(r) < 24 && p[1].abs_diff(g) < 24 && p[2].abs_diff(b) < 24)
        .count()
}

#[test]
fn report_of_a_captured_incident_opens_in_a_browser_with_its_plots_issue_9() {
    let broker = Broker::start(
        &std::env::temp_dir().join(format!("herd-report-broker-{}.log", std::process::id())),
    );
    let names = Names::new("report");
    let dir = workdir("report");
    let files = fleet(&dir);
    let evidence = dir.join("evidence");
    let ev_url = format!("file://{}", evidence.display());
    let policy = dir.join("policies.toml");
    std::fs::write(
        &policy,
        r#"
[[policy]]
name = "capture-web"
match = { repository = "shop/web" }
actions = [{ action = "capture" }]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let worker_log = dir.join("worker.log");
    let worker = Worker::start_with(
        &names,
        &broker,
        worker_log.clone(),
        &[
            ("HERD_RESPOND__POLICY_FILE", &policy.display().to_string()),
            ("HERD_RESPOND__EVIDENCE_URL", &ev_url),
        ],
    );

    // The first 30 hours: the miner on web-3 starts at 28 h; its after-window (two
    // minutes of event time) closes long before 30 h.
    let t0 = support::fleet::fleet_start_ms(&dir);
    produce_window(&names, &broker, &files, None, Some(t0 + 30 * 3_600_000));
    let logs = [worker_log.as_path()];
    let labels: Value = serde_json::from_slice(
        &std::fs::read(dir.join("labels.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let miner = labels["attacks"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["kind"] == "cryptominer"))
        .and_then(|x| x["container_id"].as_str())
        .unwrap_or_else(|| panic!("no cryptominer in labels.json"))
        .to_owned();
    let alert = wait_for(
        "the cryptominer's alert and its capture command",
        Duration::from_secs(240),
        &logs,
        || {
            let a = payloads(&names, &broker, "alerts").into_iter().find(|a| {
                a["container_id"] == miner.as_str()
                    && a["features"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|f| f["name"] == "cpu_cores"))
            })?;
            let id = a["incident_id"].as_str()?.to_owned();
            let actions = payloads(&names, &broker, "actions");
            let has = |what: &str| {
                actions
                    .iter()
                    .any(|c| c["incident_id"] == id.as_str() && c["action"]["kind"] == what)
            };
            (has("capture") && has("attach")).then_some(a)
        },
    );
    let incident = alert["incident_id"].as_str().unwrap_or_default().to_owned();

    // `herd backtest` of the same range, from the topics and from the files: the same
    // decisions, and the captures the worker issued.
    broker.wait_caught_up(&names, Duration::from_secs(120));
    let (since, until) = (t0 + 20 * 3_600_000, t0 + 30 * 3_600_000);
    let backtest = |source: &[&str]| -> Vec<String> {
        let out = herd()
            .arg("backtest")
            .args(source)
            .args(["--since", &since.to_string(), "--until", &until.to_string()])
            .arg("--policy")
            .arg(&policy)
            .envs(names.env(&broker))
            .output()
            .unwrap_or_else(|e| panic!("herd backtest: {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let from_files = backtest(&paths.iter().map(String::as_str).collect::<Vec<_>>());
    let from_topics = backtest(&["--from-topics"]);
    assert!(!from_files.is_empty(), "the backtest decided nothing");
    assert_eq!(
        from_topics, from_files,
        "the backtest of the topics differs from the backtest of the files"
    );
    let in_range = |ts: &str| {
        herd_ingest::time::parse_rfc3339_ms(ts).is_some_and(|t| (since..until).contains(&t))
    };
    let alerts = payloads(&names, &broker, "alerts");
    // The worker's first line of an incident (the one a capture is issued on).
    let opened = |id: &str| {
        alerts
            .iter()
            .find(|a| a["incident_id"] == id)
            .and_then(|a| a["ts"].as_str())
            .and_then(herd_ingest::time::parse_rfc3339_ms)
    };
    let mut decided: Vec<String> = from_files
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|d| {
            d["commands"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["action"] == "capture"))
        })
        .map(|d| {
            let ts = d["alert"]["ts"].as_str().unwrap_or_default();
            assert!(in_range(ts), "an alert outside the range: {ts}");
            d["alert"]["incident_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        // An incident the worker opened before the range was captured then; the
        // backtest, which decides nothing before `--since`, captures it at its first
        // line in the range.
        .filter(|id| opened(id).is_none_or(|t| t >= since))
        .collect();
    decided.sort();
    let mut issued: Vec<String> = payloads(&names, &broker, "actions")
        .into_iter()
        .filter(|c| c["action"]["kind"] == "capture")
        .filter_map(|c| c["incident_id"].as_str().map(str::to_owned))
        .filter(|id| opened(id).is_some_and(|t| (since..until).contains(&t)))
        .collect();
    issued.sort();
    assert!(decided.contains(&incident), "{decided:?}");
    assert_eq!(
        decided, issued,
        "the backtest's captures differ from the worker's"
    );
    let host = alert["host"].as_str().unwrap_or_default().to_owned();
    assert!(!host.is_empty(), "{alert:#}");

    // The agent of that host: it reads the commands from the start of the topic.
    let agent_log = dir.join("agent.log");
    let mut agent = Agent::start(
        &names,
        &broker,
        agent_log.clone(),
        &[
            ("HERD_AGENT__HOST", host.clone()),
            // It collects nothing of this engine's containers.
            (
                "HERD_AGENT__LABEL",
                format!("herd.test=report-{}", std::process::id()),
            ),
            ("HERD_AGENT__EVIDENCE_URL", ev_url.clone()),
            (
                "HERD_AGENT__STATE_DIR",
                dir.join("agent-state").display().to_string(),
            ),
            ("HERD_AGENT__INVENTORY_INTERVAL_MS", "0".into()),
        ],
    );
    let logs = [worker_log.as_path(), agent_log.as_path()];
    let bundle = evidence.join(herd_respond::evidence::bundle_name(&incident));
    wait_for(
        "the bundle and its after-window",
        Duration::from_secs(120),
        &logs,
        || {
            let rs = payloads(&names, &broker, "responses");
            let done = |what: &str| {
                rs.iter().any(|r| {
                    r["incident_id"] == incident.as_str()
                        && r["action"] == what
                        && r["outcome"] == "ok"
                })
            };
            (done("capture") && done("attach") && bundle.join("manifest-after.json").exists())
                .then_some(())
        },
    );
    assert!(agent.alive(), "{}", agent.log());
    drop(agent);
    let _ = worker.stop();

    // The report, with the actions from the responses topic.
    let page = dir.join("report.html");
    let out = herd()
        .arg("report")
        .arg(&bundle)
        .arg("--responses-topic")
        .arg("--out")
        .arg(&page)
        .envs(names.env(&broker))
        .output()
        .unwrap_or_else(|e| panic!("herd report: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("incident {incident}")), "{stderr}");
    assert!(stderr.contains("0 not verified"), "{stderr}");
    let html = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{e}"));
    // The plots are of the features of the alert line that issued the capture.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(bundle.join("manifest.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(manifest["alert"]["incident_id"], incident.as_str());
    let features: Vec<String> = manifest["alert"]["features"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|f| f["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for f in &features {
        assert!(
            html.contains(&format!("<figure class=\"plot\" data-feature=\"{f}\"><svg")),
            "no plot of {f}"
        );
    }
    for text in [
        incident.as_str(),
        "observations-before.jsonl",
        "observations-after.jsonl",
        "verified against the manifest",
        "names the first manifest",
        // Docker's artifacts of a container not on this engine.
        "inspect.json",
        "not_found",
        "evidence captured",
        "after-window attached",
    ] {
        assert!(html.contains(text), "the page lacks {text:?}");
    }
    assert!(!html.contains("MISMATCH"), "a hash did not match");
    // The actions, from the topic: the capture and the addendum.
    let actions = &html[html.find("<section id=\"actions\">").unwrap_or(0)..];
    let actions = &actions[..actions.find("</section>").unwrap_or(actions.len())];
    for a in ["<td>capture</td><td>ok</td>", "<td>attach</td><td>ok</td>"] {
        assert!(actions.contains(a), "{actions}");
    }

    // In the browser: the DOM as chromium built it, then a screenshot.
    let url = format!("file://{}", page.display());
    let dom = chromium()
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("chromium (scripts/check installs it): {e}"));
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    let figures = dom.matches("<figure class=\"plot\"").count();
    assert!(
        figures >= features.len().max(1),
        "{figures} plots in the DOM"
    );
    assert!(
        dom.matches("<polyline").count() >= figures,
        "a plot without its series"
    );
    let shot = dir.join("report.png");
    let s = chromium()
        .args(["--window-size=1280,2200"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("chromium: {e}"));
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let red = series_pixels(&shot);
    assert!(
        red > 500,
        "the screenshot shows {red} pixels of the series' colour: the plots were not drawn ({})",
        shot.display()
    );
    eprintln!(
        "report: {} bytes, {figures} plot(s), {red} series pixels in {}",
        html.len(),
        shot.display()
    );

    // One byte changed in a copy of the bundle: the page says so, and the exit code.
    let copy = dir.join("tampered");
    copy_dir(&bundle, &copy);
    let obs = copy.join("observations-before.jsonl");
    let mut bytes = std::fs::read(&obs).unwrap_or_else(|e| panic!("{e}"));
    let at = bytes.iter().position(|b| b.is_ascii_digit()).unwrap_or(0);
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&obs, bytes).unwrap_or_else(|e| panic!("{e}"));
    let tampered = dir.join("tampered.html");
    let out = herd()
        .arg("report")
        .arg(&copy)
        .arg("--out")
        .arg(&tampered)
        .output()
        .unwrap_or_else(|e| panic!("herd report: {e}"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&tampered).unwrap_or_default();
    assert!(
        html.contains("MISMATCH"),
        "the tampered file is not flagged"
    );
    // HERD_TEST_KEEP=1 keeps the page and its screenshot to look at.
    if std::env::var_os("HERD_TEST_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for e in std::fs::read_dir(from)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        let dest = to.join(e.file_name());
        std::fs::copy(e.path(), &dest).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600));
    }
}

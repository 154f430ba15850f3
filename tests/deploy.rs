//! Everything in `deploy/` checked by the real tools (issue 5): `promtool` for the rules
//! (and their unit tests), the Prometheus config and the dashboard's queries, `amtool`
//! for the Alertmanager config, docker compose for the compose file (its own parser,
//! no daemon needed), `kubernetes-validate` for the Kubernetes manifests against the
//! API schemas, and herd's own parsers for the configuration and policies it ships.
//! `scripts/check` installs the tools; a missing tool fails the test, never skips it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs a tool; panics with its output unless it succeeds. Returns stdout and stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/check installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The Python of the virtual environment `scripts/check` makes (kubernetes-validate,
/// PyYAML).
fn venv(bin: &str) -> PathBuf {
    let root = std::env::var_os("HERD_VENV").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/herd/venv"),
        PathBuf::from,
    );
    root.join("bin").join(bin)
}

/// YAML (every document) as JSON, through PyYAML.
fn yaml(path: &Path) -> Vec<Value> {
    let out = run(Command::new(venv("python")).args([
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        &path.to_string_lossy(),
    ]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests_issue_5() {
    let out = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("deploy/prometheus/rules/herd.rules.yml")));
    let shipped = std::fs::read_to_string(repo("deploy/prometheus/rules/herd.rules.yml"))
        .unwrap_or_else(|e| panic!("the rules: {e}"))
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(shipped >= 9, "{shipped} rules");
    assert!(
        out.contains(&format!("SUCCESS: {shipped} rules found")),
        "{out}"
    );
    let out = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(repo("deploy/prometheus/tests/herd.rules.test.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
    // Every rule has a unit test.
    let rules = yaml(&repo("deploy/prometheus/rules/herd.rules.yml"));
    let names: BTreeSet<String> = rules[0]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    let tests = yaml(&repo("deploy/prometheus/tests/herd.rules.test.yml"));
    let tested: BTreeSet<String> = tests[0]["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["alertname"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, tested);
    assert_eq!(names.len(), shipped, "{names:?}");
}

#[test]
fn prometheus_and_alertmanager_configs_are_valid_issue_5() {
    run(Command::new("promtool")
        .args(["check", "config"])
        .arg(repo("deploy/prometheus/prometheus.yml")));
    run(Command::new("amtool")
        .args(["check-config"])
        .arg(repo("deploy/alertmanager/alertmanager.yml")));
}

/// Every series the rules and the dashboard name is one herd exports (or Prometheus's
/// own `up`), and `docs/metrics.md` lists every series herd exports.
#[test]
fn rules_dashboard_and_docs_name_only_series_herd_exports_issue_5() {
    let worker = herd::metrics::WorkerMetrics::new().expect("worker metrics");
    let agent = herd::metrics::AgentMetrics::new().expect("agent metrics");
    // Families as registered (histograms export _bucket/_sum/_count of theirs).
    let exported: BTreeSet<String> = worker.names.iter().chain(&agent.names).cloned().collect();
    let base = |name: &str| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(b) = name.strip_suffix(suffix)
                && exported.contains(b)
            {
                return b.to_owned();
            }
        }
        name.to_owned()
    };
    // Every `herd_…` identifier in a text.
    let named = |text: &str| -> BTreeSet<String> {
        let b = text.as_bytes();
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let mut out = BTreeSet::new();
        let mut i = 0;
        while let Some(k) = text[i..].find("herd_") {
            let start = i + k;
            let mut end = start;
            while end < b.len() && word(b[end]) {
                end += 1;
            }
            // (`herd_<noun>` in prose is a pattern, not a name.)
            if (start == 0 || !word(b[start - 1])) && end > start + 5 {
                out.insert(text[start..end].to_owned());
            }
            i = end;
        }
        out
    };
    let rules =
        std::fs::read_to_string(repo("deploy/prometheus/rules/herd.rules.yml")).expect("rules");
    let dashboard =
        std::fs::read_to_string(repo("deploy/grafana/herd-dashboard.json")).expect("dashboard");
    for (what, text) in [("rules", &rules), ("dashboard", &dashboard)] {
        for n in named(text) {
            assert!(
                exported.contains(&base(&n)),
                "{what} names {n}, which herd does not export"
            );
        }
    }
    let docs = std::fs::read_to_string(repo("docs/metrics.md")).expect("docs/metrics.md");
    let documented = named(&docs);
    for n in &exported {
        assert!(documented.contains(n), "docs/metrics.md does not list {n}");
    }
    for n in &documented {
        assert!(
            exported.contains(&base(n)),
            "docs/metrics.md lists {n}, which herd does not export"
        );
    }
}

/// The dashboard is valid JSON and every query parses as PromQL (checked by promtool
/// as recording rules, Grafana's `$__rate_interval` stood in by `5m`).
#[test]
fn the_dashboard_queries_parse_issue_5() {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/herd-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| {
            t["expr"]
                .as_str()
                .map(|e| e.replace("$__rate_interval", "5m"))
        })
        .collect();
    assert!(exprs.len() >= 12, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:panel{i}\n        expr: {}\n",
            serde_json::to_string(e).expect("quote")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).expect("write");
    let out = run(Command::new("promtool").args(["check", "rules"]).arg(&file));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

#[test]
fn the_compose_stack_parses_issue_5() {
    // Compose v2 (`docker compose`) where it is installed, else v1 (`docker-compose`):
    // both parse and interpolate without a daemon.
    let file = repo("deploy/compose.yaml");
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let out = if v2 {
        run(Command::new("docker")
            .args(["compose", "-f"])
            .arg(&file)
            .arg("config"))
    } else {
        run(Command::new("docker-compose")
            .arg("-f")
            .arg(&file)
            .arg("config"))
    };
    for service in [
        "kafka",
        "herd-worker-1",
        "herd-worker-2",
        "herd-agent",
        "prometheus",
        "alertmanager",
    ] {
        assert!(
            out.contains(&format!("  {service}:")),
            "no {service}:\n{out}"
        );
    }
    // Prometheus scrapes the services compose defines, at the port herd listens on.
    let prom = yaml(&repo("deploy/prometheus/prometheus.yml"));
    let targets: BTreeSet<String> = prom[0]["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|j| {
            j["static_configs"][0]["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    for t in [
        "herd-worker-1:9720",
        "herd-worker-2:9720",
        "herd-agent:9720",
    ] {
        assert!(targets.contains(t), "{targets:?}");
    }
    // Only the agent talks to the Docker socket (issue 8).
    let compose = &yaml(&file)[0];
    for (name, svc) in compose["services"].as_object().into_iter().flatten() {
        assert!(
            name == "herd-agent" || !svc["volumes"].to_string().contains("docker.sock"),
            "{name} mounts the Docker socket"
        );
    }
}

#[test]
fn the_kubernetes_manifests_match_their_schemas_issue_5() {
    let dir = repo("deploy/kubernetes");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(files.len() >= 7);
    // Strict: unknown fields are errors. Kubernetes 1.31 (a supported release); the two
    // Prometheus Operator kinds have no schema here and are checked below instead.
    let out = run(Command::new(venv("kubernetes-validate"))
        .args(["--strict", "-k", "1.31.0"])
        .args(&files));
    let mut kinds: BTreeSet<String> = BTreeSet::new();
    for line in out.lines() {
        if line.starts_with("INFO") && line.contains(" passed for resource ") {
            if let Some(k) = line.split(" passed for resource ").nth(1) {
                kinds.insert(k.split('/').next().unwrap_or_default().to_owned());
            }
        } else if line.starts_with("WARN") {
            assert!(
                ["PrometheusRule", "ServiceMonitor", "Kustomization"]
                    .iter()
                    .any(|k| line.contains(&format!("kind {k} "))),
                "{line}"
            );
        } else {
            assert!(
                !line.contains("ERROR") && !line.contains("failed"),
                "{line}"
            );
        }
    }
    for k in [
        "daemonset",
        "deployment",
        "cronjob",
        "configmap",
        "service",
        "namespace",
    ] {
        assert!(kinds.contains(k), "no {k} validated: {out}");
    }

    // The PrometheusRule carries exactly the rules promtool tests.
    let rule = yaml(&dir.join("prometheusrule.yaml"));
    let shipped = yaml(&repo("deploy/prometheus/rules/herd.rules.yml"));
    assert_eq!(rule[0]["spec"]["groups"], shipped[0]["groups"]);
    // The ServiceMonitor scrapes a named port that the selected Services have, and
    // names jobs the way the rules expect.
    let sm = &yaml(&dir.join("servicemonitor.yaml"))[0];
    assert_eq!(sm["spec"]["jobLabel"], "app.kubernetes.io/name");
    let port = sm["spec"]["endpoints"][0]["port"].as_str().expect("port");
    for (file, name) in [("worker.yaml", "herd-worker"), ("agent.yaml", "herd-agent")] {
        let docs = yaml(&dir.join(file));
        let svc = docs
            .iter()
            .find(|d| d["kind"] == "Service")
            .expect("service");
        assert_eq!(svc["metadata"]["labels"]["app.kubernetes.io/name"], name);
        assert!(
            svc["spec"]["ports"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == port)),
            "{file}: no port {port}"
        );
        // Probes point at herd's endpoints on the same port.
        let workload = docs
            .iter()
            .find(|d| d["kind"] != "Service")
            .expect("workload");
        let c = &workload["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{file}: no limits"
        );
    }
    // The agent: the Docker socket, and nothing privileged.
    let agent = &yaml(&dir.join("agent.yaml"))[0];
    let spec = &agent["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["securityContext"]["privileged"],
        false
    );
    assert_eq!(
        spec["containers"][0]["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert!(spec["hostNetwork"].is_null() && spec["hostPID"].is_null());
    assert!(spec["volumes"].as_array().is_some_and(|v| {
        v.iter()
            .any(|v| v["hostPath"]["path"] == "/var/run/docker.sock")
    }));
    // Only the agent talks to the Docker socket (issue 8): no other manifest mounts it.
    for f in &files {
        let text = std::fs::read_to_string(f).expect("manifest");
        assert!(
            f.ends_with("agent.yaml") || !text.contains("docker.sock"),
            "{} mounts the Docker socket",
            f.display()
        );
    }
}

/// The configuration and policies `deploy/` ships are read by herd's own parsers
/// (unknown keys are errors there).
#[test]
fn the_shipped_configuration_and_policies_load_issue_5() {
    let check = |toml_text: &str, policies: &str, what: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("herd.toml");
        std::fs::write(&file, toml_text).expect("write");
        herd::config::HerdConfig::load_with_env(Some(&file), Vec::new())
            .unwrap_or_else(|e| panic!("{what} herd.toml: {e:#}"));
        herd_respond::PolicyFile::parse(policies)
            .unwrap_or_else(|e| panic!("{what} policies.toml: {e}"));
    };
    check(
        &std::fs::read_to_string(repo("deploy/herd/herd.toml")).expect("herd.toml"),
        &std::fs::read_to_string(repo("deploy/herd/policies.toml")).expect("policies"),
        "compose",
    );
    let cm = &yaml(&repo("deploy/kubernetes/configmap.yaml"))[0];
    check(
        cm["data"]["herd.toml"].as_str().expect("herd.toml"),
        cm["data"]["policies.toml"].as_str().expect("policies.toml"),
        "configmap",
    );
}

//! The fleet's alert rules and dashboard name only metrics that `phygate-hq` exports: the
//! names are read from a running `phygate-hq`'s `/metrics` (real mosquitto, one webhook sink so
//! the sink series are there), not from a list kept beside the code.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{broker, wait_for, Hq};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

/// Every `phygate_…` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("phygate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alert_rules_and_the_dashboard_name_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let hq_dir = dir.path().join("hq");
    std::fs::create_dir_all(&hq_dir).unwrap();
    std::fs::write(hq_dir.join("hook.secret"), "s3cret").unwrap();
    let hq = Hq::start_with(
        &hq_dir,
        broker.port,
        "1s",
        "hq-alerts",
        "[store]\npath = \"hq.db\"\n\
         [[sink]]\nname = \"crm\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\napi_key_file = \"hook.secret\"\n",
    );
    let mut exported = BTreeSet::new();
    wait_for(
        Duration::from_secs(30),
        "the sink's series in /metrics",
        || {
            let text = hq.metrics();
            exported = text
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split(' ').next())
                .map(str::to_owned)
                .collect();
            exported.contains("phygate_hq_sink_lag_events")
        },
    );
    assert!(exported.contains("phygate_hq_store_online"), "{exported:?}");

    // The alert rules: Prometheus's rule file format, each rule complete.
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("alerts.yml is YAML");
    let groups = docs[0]["groups"].as_vec().expect("a `groups` list");
    let mut named = BTreeSet::new();
    let mut alerts = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some(), "every group has a name");
        for rule in group["rules"].as_vec().expect("a `rules` list") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: no expr"));
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{alert}: no severity"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{alert}: no summary"
            );
            if let Some(f) = rule["for"].as_str() {
                assert!(humantime::parse_duration(f).is_ok(), "{alert}: for {f:?}");
            }
            assert!(rule["for"] == Yaml::BadValue || rule["for"].as_str().is_some());
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{alert}: names no phygate metric");
            named.extend(names);
            alerts.push(alert.to_owned());
        }
    }
    for wanted in [
        "PhygateStoreOffline",
        "PhygateEventsLost",
        "PhygateSinkLag",
        "PhygateStoreBacklog",
    ] {
        assert!(
            alerts.iter().any(|a| a == wanted),
            "no {wanted}: {alerts:?}"
        );
    }

    // The dashboard: Grafana JSON, every panel's queries.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/phygate-fleet.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("every panel queries") {
            named.extend(metric_names(target["expr"].as_str().expect("an expr")));
        }
    }

    let unknown: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "named in deploy/ but not in /metrics: {unknown:?}; exported: {exported:?}"
    );
}

#[test]
fn metric_names_are_read_out_of_an_expression() {
    assert_eq!(
        metric_names("increase(phygate_hq_evicted_events_total[1h]) > 0 or phygate_x"),
        ["phygate_hq_evicted_events_total", "phygate_x"]
    );
}

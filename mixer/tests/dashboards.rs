//! The Grafana dashboard and the Prometheus alert rules in `dashboards/` name only metrics the
//! server exports, every dashboard query goes through the `${datasource}` variable, and every
//! selector filters by the `instance` and `node` variables.
//!
//! Renaming a metric in `server::metrics` without updating the dashboards fails here rather than
//! as an empty panel or an alert that can never fire.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use prometheus::proto::MetricType;
use serde_json::Value;

use mixer::server::metrics::Metrics;

const DATASOURCE_UID: &str = "${datasource}";

/// Metric family names the server exports, with whether each is a histogram.
fn exported_families() -> BTreeMap<String, bool> {
    let metrics = Metrics::new();
    // `gather` leaves out a labelled family until it has a child: `Metrics::new` creates the
    // `mode` and `phase` children, but reasons and codes appear only on first use. Touch one
    // child of each such family so its name is listed.
    metrics.leaves_total.with_label_values(&["left"]);
    metrics
        .join_failures_total
        .with_label_values(&["room_full"]);
    metrics
        .errors_sent_total
        .with_label_values(&["bad_message"]);
    metrics
        .audio_frames_rejected_total
        .with_label_values(&["bad_audio_header"]);
    metrics.floor_events_total.with_label_values(&["granted"]);
    metrics
        .registry()
        .gather()
        .iter()
        .map(|family| {
            (
                family.name().to_owned(),
                family.get_field_type() == MetricType::HISTOGRAM,
            )
        })
        .collect()
}

fn repo_file(relative: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    (path, text)
}

/// A metric reference found in an expression: its name and the text right after it.
struct Reference<'a> {
    name: &'a str,
    rest: &'a str,
}

/// Every token matching `(mixer|process)_[a-z0-9_]+` outside quoted strings (label values such
/// as `reason="mixer_backlog"` are not metric names).
fn metric_references(expr: &str) -> Vec<Reference<'_>> {
    let bytes = expr.as_bytes();
    let is_name_byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut found = Vec::new();
    let mut quote = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if b == b'"' || b == b'\'' || b == b'`' {
            quote = Some(b);
            i += 1;
            continue;
        }
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("mixer_") || rest.starts_with("process_")) {
            let prefix = if rest.starts_with("mixer_") {
                "mixer_".len()
            } else {
                "process_".len()
            };
            let end = i
                + prefix
                + bytes[i + prefix..]
                    .iter()
                    .take_while(|&&b| is_name_byte(b))
                    .count();
            // A word like `mixer_threads:` or `mixer_x.y` is not PromQL; only names matter.
            if end > i + prefix {
                found.push(Reference {
                    name: &expr[i..end],
                    rest: &expr[end..],
                });
            }
            i = end;
            continue;
        }
        i += 1;
    }
    found
}

/// The exported family a referenced series belongs to (`x_bucket` → `x` for a histogram `x`).
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, bool>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families.get(base) == Some(&true)
        {
            return base;
        }
    }
    name
}

fn missing(exprs: &[String], families: &BTreeMap<String, bool>) -> BTreeSet<String> {
    exprs
        .iter()
        .flat_map(|expr| metric_references(expr))
        .map(|reference| family_of(reference.name, families))
        // The process collector exists only on Linux.
        .filter(|name| cfg!(target_os = "linux") || !name.starts_with("process_"))
        .filter(|name| !families.contains_key(*name))
        .map(str::to_owned)
        .collect()
}

/// Every panel, including those nested in collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboard() -> Value {
    let (path, text) = repo_file("dashboards/grafana/mixer.json");
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not valid JSON: {error}", path.display()))
}

fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    all_panels(dashboard)
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect()
}

/// The `expr:` of every rule, including multi-line (`|`, `>`) block scalars.
fn alert_exprs(yaml: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if !value.starts_with('|') && !value.starts_with('>') {
            exprs.push(value.to_owned());
            continue;
        }
        let key_indent = line.len() - trimmed.len();
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let indent = next.len() - next.trim_start().len();
            if !next.trim().is_empty() && indent <= key_indent {
                break;
            }
            block.push_str(next.trim());
            block.push('\n');
            lines.next();
        }
        exprs.push(block);
    }
    exprs
}

#[test]
fn dashboard_queries_name_only_exported_metrics() {
    let families = exported_families();
    let exprs = dashboard_exprs(&dashboard());
    assert!(
        exprs.len() > 30,
        "expected the dashboard's queries, found {}",
        exprs.len()
    );
    let missing = missing(&exprs, &families);
    assert!(
        missing.is_empty(),
        "dashboards/grafana/mixer.json uses metrics the server does not export: {missing:?} \
         (a labelled family with no children yet must be touched in exported_families)"
    );
}

/// The metrics the dashboard's queries select without `matcher` in their label selector.
fn selectors_without(matcher: &str) -> Vec<String> {
    dashboard_exprs(&dashboard())
        .iter()
        .flat_map(|expr| metric_references(expr))
        .filter(|reference| {
            let selector = reference
                .rest
                .strip_prefix('{')
                .and_then(|s| s.split('}').next());
            !selector.is_some_and(|s| s.contains(matcher))
        })
        .map(|reference| reference.name.to_owned())
        .collect()
}

#[test]
fn dashboard_queries_filter_by_the_instance_variable() {
    let unfiltered = selectors_without("instance=~\"$instance\"");
    assert!(
        unfiltered.is_empty(),
        "selectors without instance=~\"$instance\": {unfiltered:?}"
    );
}

/// Every selector also filters by `node`, which a fleet's nodes carry on every series
/// (`Metrics::with_node`) and a server running alone does not. That keeps the lone server's
/// series only because *All* is `.*`: a missing label matches as the empty string, which `.*`
/// matches. Grafana's default *All* is the listed values joined (`a|b`), which leaves out every
/// series without the label.
#[test]
fn dashboard_queries_filter_by_the_node_variable_whose_all_matches_no_label() {
    let unfiltered = selectors_without("node=~\"$node\"");
    assert!(
        unfiltered.is_empty(),
        "selectors without node=~\"$node\": {unfiltered:?}"
    );
    let dashboard = dashboard();
    let node = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list is an array")
        .iter()
        .find(|variable| variable["name"] == "node")
        .expect("a `node` variable");
    assert_eq!(node["datasource"]["uid"], DATASOURCE_UID);
    assert_eq!(node["multi"], true);
    assert_eq!(node["includeAll"], true);
    assert_eq!(node["allValue"], ".*");
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let families = exported_families();
    let (_, yaml) = repo_file("dashboards/alerts.yml");
    let exprs = alert_exprs(&yaml);
    assert_eq!(
        exprs.len(),
        yaml.matches("- alert:").count(),
        "one expr per alert: {exprs:?}"
    );
    let missing = missing(&exprs, &families);
    assert!(
        missing.is_empty(),
        "dashboards/alerts.yml uses metrics the server does not export: {missing:?}"
    );
}

#[test]
fn every_panel_uses_the_datasource_variable() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list is an array");
    let datasource = variables
        .iter()
        .find(|variable| variable["name"] == "datasource")
        .expect("a `datasource` templating variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let instance = variables
        .iter()
        .find(|variable| variable["name"] == "instance")
        .expect("an `instance` variable");
    assert_eq!(instance["datasource"]["uid"], DATASOURCE_UID);
    assert_eq!(instance["multi"], true);
    assert_eq!(instance["includeAll"], true);

    let expected = serde_json::json!({ "type": "prometheus", "uid": DATASOURCE_UID });
    let mut wrong = Vec::new();
    for panel in all_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("<untitled>");
        if panel["datasource"] != expected {
            wrong.push(format!("panel {title:?}: {}", panel["datasource"]));
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if target["datasource"] != expected {
                wrong.push(format!("a query of {title:?}: {}", target["datasource"]));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "datasources not set to ${{datasource}}: {wrong:#?}"
    );
}

#[test]
fn references_skip_label_values_and_split_histogram_suffixes() {
    let expr = r#"rate(mixer_tick_duration_seconds_bucket{instance=~"$instance",reason="mixer_backlog"}[1m])"#;
    let names: Vec<&str> = metric_references(expr).iter().map(|r| r.name).collect();
    assert_eq!(names, ["mixer_tick_duration_seconds_bucket"]);
    let families = exported_families();
    assert_eq!(
        family_of("mixer_tick_duration_seconds_bucket", &families),
        "mixer_tick_duration_seconds"
    );
    // A counter's `_count`-like name is not split: only histograms have those series.
    assert_eq!(
        family_of("mixer_ticks_total", &families),
        "mixer_ticks_total"
    );
    assert!(
        families.contains_key("mixer_participants")
            && families.contains_key("mixer_tick_phase_seconds_total")
    );
}

//! Checks on the deployment artifacts under `deploy/`: every YAML and JSON file parses,
//! the Kubernetes Deployment probes the right endpoints and runs locked down, alerts and
//! dashboard name only metrics the service exports, the two copies of the alerting rules
//! agree, and every runbook link lands on a heading of `docs/operations.md`.
//! No database needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/prometheus-rules.yaml";
const DEPLOYMENT: &str = "deploy/kubernetes/deployment.yaml";
const DASHBOARD: &str = "deploy/grafana/ameyo-scim.json";
const OPERATIONS_DOC: &str = "docs/operations.md";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively, in a stable order.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

/// All documents of a YAML file (multi-document aware).
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

fn str_at<'a>(y: &'a Yaml, key: &str) -> Option<&'a str> {
    y[key].as_str()
}

/// The alerting rules (not recording rules) of a list of rule groups, by alert name.
fn alerts_of(groups: &Yaml, file: &str) -> BTreeMap<String, Yaml> {
    let groups = groups
        .as_vec()
        .unwrap_or_else(|| panic!("{file}: `groups` is not a list"));
    let mut out = BTreeMap::new();
    for group in groups {
        let rules = group["rules"]
            .as_vec()
            .unwrap_or_else(|| panic!("{file}: a group has no `rules` list"));
        for rule in rules {
            let Some(name) = str_at(rule, "alert") else {
                continue;
            };
            let previous = out.insert(name.to_string(), rule.clone());
            assert!(previous.is_none(), "{file}: alert {name} appears twice");
        }
    }
    assert!(!out.is_empty(), "{file}: no alerting rules");
    out
}

/// The alerts of the plain Prometheus rule file.
fn plain_alerts() -> BTreeMap<String, Yaml> {
    let docs = yaml_docs(ALERTS);
    assert_eq!(docs.len(), 1, "{ALERTS}: expected one YAML document");
    alerts_of(&docs[0]["groups"], ALERTS)
}

/// The alerts of the PrometheusRule resource.
fn operator_alerts() -> BTreeMap<String, Yaml> {
    let docs = yaml_docs(PROMETHEUS_RULE);
    let rule = docs
        .iter()
        .find(|d| str_at(d, "kind") == Some("PrometheusRule"))
        .unwrap_or_else(|| panic!("{PROMETHEUS_RULE}: no PrometheusRule document"));
    assert_eq!(
        str_at(rule, "apiVersion"),
        Some("monitoring.coreos.com/v1"),
        "{PROMETHEUS_RULE}: apiVersion"
    );
    alerts_of(&rule["spec"]["groups"], PROMETHEUS_RULE)
}

/// Every `ameyo_scim_*` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"ameyo_scim_[a-z_]+").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

/// Every `expr` string anywhere in the dashboard (panel targets, also inside rows).
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The queries of the dashboard's template variables.
fn variable_queries(dash: &serde_json::Value) -> Vec<String> {
    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    vars.iter()
        .filter_map(|v| match &v["query"] {
            serde_json::Value::String(s) => Some(s.clone()),
            q => q["query"].as_str().map(str::to_string),
        })
        .collect()
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation other than `-` and
/// `_` dropped, spaces turned into `-`.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown file offers: its headings (outside code fences) and explicit
/// `<a id="...">` / `<a name="...">` targets.
fn markdown_anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            let title = trimmed[hashes..].trim().trim_end_matches('#').trim();
            anchors.insert(heading_anchor(title));
        }
    }
    let explicit = regex::Regex::new(r#"<a\s+(?:id|name)\s*=\s*"([^"]+)""#).unwrap();
    anchors.extend(explicit.captures_iter(text).map(|c| c[1].to_string()));
    anchors
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let files = files_under(&root().join("deploy"));
    let mut yaml = 0;
    let mut json = 0;
    for path in &files {
        let name = path.strip_prefix(root()).unwrap().display().to_string();
        if has_ext(path, &["yaml", "yml"]) {
            let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!docs.is_empty(), "{name}: no YAML document");
            for (i, doc) in docs.iter().enumerate() {
                assert!(
                    doc.as_hash().is_some(),
                    "{name}: document {i} is not a mapping"
                );
            }
            yaml += 1;
        } else if has_ext(path, &["json"]) {
            let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            json += 1;
        }
    }
    assert!(yaml >= 2, "expected YAML files under deploy/, found {yaml}");
    assert!(json >= 1, "expected JSON files under deploy/, found {json}");
}

#[test]
fn deployment_probes_health_endpoints_and_runs_locked_down() {
    let docs = yaml_docs(DEPLOYMENT);
    let deployment = docs
        .iter()
        .find(|d| str_at(d, "kind") == Some("Deployment"))
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: no Deployment document"));
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"]
        .as_vec()
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: no containers"));
    let container = containers
        .iter()
        .find(|c| str_at(c, "name") == Some("ameyo-scim"))
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: no container named ameyo-scim"));

    let probe_path = |probe: &str| container[probe]["httpGet"]["path"].as_str();
    assert_eq!(
        probe_path("livenessProbe"),
        Some("/healthz"),
        "livenessProbe"
    );
    assert_eq!(
        probe_path("readinessProbe"),
        Some("/readyz"),
        "readinessProbe"
    );
    assert!(
        probe_path("startupProbe").is_some(),
        "startupProbe: migrations run before serving"
    );

    let csc = &container["securityContext"];
    let psc = &pod["securityContext"];
    assert!(
        csc["runAsNonRoot"].as_bool() == Some(true)
            || (psc["runAsNonRoot"].as_bool() == Some(true)
                && csc["runAsNonRoot"].as_bool() != Some(false)),
        "runAsNonRoot must be true"
    );
    assert_eq!(
        csc["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "readOnlyRootFilesystem"
    );
    assert_eq!(
        csc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "allowPrivilegeEscalation"
    );
    let dropped: Vec<&str> = csc["capabilities"]["drop"]
        .as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default();
    assert!(dropped.contains(&"ALL"), "capabilities.drop must hold ALL");

    // Longer than the service's default shutdown grace (20 s), so SIGTERM's drain ends
    // before the SIGKILL.
    let grace = pod["terminationGracePeriodSeconds"].as_i64();
    assert!(
        grace.is_some_and(|g| g > 20),
        "terminationGracePeriodSeconds {grace:?} must exceed server.shutdown_grace_secs (20)"
    );
    let ports: Vec<&str> = container["ports"]
        .as_vec()
        .map(|v| v.iter().filter_map(|p| str_at(p, "name")).collect())
        .unwrap_or_default();
    assert!(
        ports.contains(&"http") && ports.contains(&"metrics"),
        "ports named http and metrics, got {ports:?}"
    );
}

#[test]
fn alerts_and_dashboard_name_only_exported_metrics() {
    let exported: BTreeSet<String> = ameyo_scim::telemetry::metrics::exported_names()
        .into_iter()
        .collect();
    let mut checked = 0;
    let mut unknown = Vec::new();
    let mut check = |source: String, expr: &str| {
        for name in metric_names(expr) {
            checked += 1;
            if !exported.contains(&name) {
                unknown.push(format!("{source}: {name}"));
            }
        }
    };
    for (file, alerts) in [
        (ALERTS, plain_alerts()),
        (PROMETHEUS_RULE, operator_alerts()),
    ] {
        for (alert, rule) in &alerts {
            let expr =
                str_at(rule, "expr").unwrap_or_else(|| panic!("{file}: {alert} has no expr"));
            check(format!("{file} {alert}"), expr);
        }
    }
    let dash = dashboard();
    let mut exprs = Vec::new();
    dashboard_exprs(&dash["panels"], &mut exprs);
    assert!(
        !exprs.is_empty(),
        "{DASHBOARD}: no panel target has an expr"
    );
    exprs.extend(variable_queries(&dash));
    for expr in &exprs {
        check(DASHBOARD.to_string(), expr);
    }
    assert!(checked > 0, "no ameyo_scim_* metric found in any expr");
    assert!(
        unknown.is_empty(),
        "metrics the service does not export:\n  {}",
        unknown.join("\n  ")
    );
}

#[test]
fn dashboard_has_datasource_and_tenant_variables() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_i64().is_some_and(|v| v >= 39),
        "{DASHBOARD}: schemaVersion must be 39 or newer"
    );
    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    let ds = var("datasource").unwrap_or_else(|| panic!("{DASHBOARD}: no datasource variable"));
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let tenant = var("tenant").unwrap_or_else(|| panic!("{DASHBOARD}: no tenant variable"));
    let query = tenant["query"]["query"]
        .as_str()
        .or(tenant["query"].as_str())
        .unwrap_or_default();
    assert_eq!(query, "label_values(ameyo_scim_sync_users, tenant)");
}

#[test]
fn every_alert_has_severity_summary_description_and_runbook() {
    for (file, alerts) in [
        (ALERTS, plain_alerts()),
        (PROMETHEUS_RULE, operator_alerts()),
    ] {
        for (alert, rule) in &alerts {
            assert!(
                str_at(&rule["labels"], "severity").is_some(),
                "{file}: {alert} has no labels.severity"
            );
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    str_at(&rule["annotations"], key).is_some_and(|s| !s.trim().is_empty()),
                    "{file}: {alert} has no annotations.{key}"
                );
            }
            let runbook = str_at(&rule["annotations"], "runbook_url").unwrap();
            let want = format!("{OPERATIONS_DOC}#{}", alert.to_lowercase());
            assert!(
                runbook.ends_with(&want),
                "{file}: {alert}: runbook_url {runbook:?} should end with {want:?}"
            );
        }
    }
}

#[test]
fn alert_runbooks_point_at_headings_in_operations_doc() {
    let path = root().join(OPERATIONS_DOC);
    if !path.exists() {
        eprintln!("SKIPPED: {OPERATIONS_DOC} does not exist, so runbook anchors cannot be checked");
        return;
    }
    let anchors = markdown_anchors(&read(OPERATIONS_DOC));
    let mut missing = Vec::new();
    for (file, alerts) in [
        (ALERTS, plain_alerts()),
        (PROMETHEUS_RULE, operator_alerts()),
    ] {
        for (alert, rule) in &alerts {
            let url = str_at(&rule["annotations"], "runbook_url")
                .unwrap_or_else(|| panic!("{file}: {alert} has no annotations.runbook_url"));
            let anchor = url.split_once('#').map(|(_, a)| a).unwrap_or_default();
            if anchor.is_empty() || !anchors.contains(anchor) {
                missing.push(format!("{file}: {alert} -> {url}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "runbook anchors with no heading in {OPERATIONS_DOC}:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn both_rule_files_carry_the_same_alerts() {
    let plain = plain_alerts();
    let operator = operator_alerts();
    let plain_names: BTreeSet<_> = plain.keys().collect();
    let operator_names: BTreeSet<_> = operator.keys().collect();
    assert_eq!(
        plain_names, operator_names,
        "alert names differ between {ALERTS} and {PROMETHEUS_RULE}"
    );
    for (name, rule) in &plain {
        let other = &operator[name];
        assert_eq!(
            str_at(rule, "expr").map(str::trim),
            str_at(other, "expr").map(str::trim),
            "{name}: expr differs between {ALERTS} and {PROMETHEUS_RULE}"
        );
        assert_eq!(
            rule, other,
            "{name}: rule (for, labels or annotations) differs between {ALERTS} and {PROMETHEUS_RULE}"
        );
    }
    for name in [
        "AmeyoScimDeliveryBacklog",
        "AmeyoScimDeadLetters",
        "AmeyoScimAmeyoErrorRate",
        "AmeyoScimNotReady",
        "AmeyoScimHttp5xx",
    ] {
        assert!(plain.contains_key(name), "{ALERTS}: no alert {name}");
    }
}

#[test]
fn anchors_are_computed_like_github() {
    let doc = "# Operations\n## AmeyoScimDeliveryBacklog\n```\n## not a heading\n```\n### Dead letters: what now?\n<a id=\"custom\"></a>\n";
    let anchors = markdown_anchors(doc);
    assert!(anchors.contains("ameyoscimdeliverybacklog"));
    assert!(anchors.contains("dead-letters-what-now"));
    assert!(anchors.contains("custom"));
    assert!(!anchors.contains("not-a-heading"));
}

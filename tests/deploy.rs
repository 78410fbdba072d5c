//! The files in deploy/ use only metric names the gateway exposes.

use infergate::config::Config;
use infergate::proxy::Gateway;
use infergate::telemetry::prom;

fn names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("infergate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(base.to_string());
        rest = &tail[end..];
    }
    out.sort();
    out.dedup();
    out
}

#[tokio::test]
async fn deploy_files_reference_exposed_metrics() {
    let config = Config::from_toml(
        "[[pools]]\nname = \"p\"\n[pools.energy]\n[[pools.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
    )
    .unwrap();
    let gateway = Gateway::new(&config).unwrap();
    let metrics = prom::render(&gateway.telemetry, &gateway.table());
    let samples = prom::parse(&metrics).unwrap();
    let exposed: Vec<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert!(!samples.is_empty());
    let root = env!("CARGO_MANIFEST_DIR");
    let grafana = std::fs::read_to_string(format!("{root}/deploy/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&grafana).expect("dashboard is JSON");
    assert!(!dash["panels"].as_array().unwrap().is_empty());
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus-rules.yml")).unwrap();
    for name in names(&grafana).into_iter().chain(names(&rules)) {
        assert!(exposed.contains(&name), "{name} is not exposed");
    }
    // Every built-in default rule has a Prometheus equivalent.
    for rule in infergate::alerts::default_rules() {
        assert!(
            rules.contains(&format!("alert: {}", rule.name)),
            "{} missing",
            rule.name
        );
    }
}

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
    let metrics = prom::render(&gateway.telemetry, &gateway.table().fleet_view());
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

// ------------------------------------------------------------ Kubernetes

use serde_json::Value;

/// Every document of every manifest in deploy/kubernetes/, by file.
fn manifests() -> Vec<(String, Value)> {
    let dir = format!("{}/deploy/kubernetes", env!("CARGO_MANIFEST_DIR"));
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in parsed.into_iter().filter(|d| !d.is_null()) {
            docs.push((file.clone(), doc));
        }
    }
    docs
}

fn one<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn port_of(addr: &str) -> u64 {
    addr.parse::<std::net::SocketAddr>().unwrap().port().into()
}

/// Whether every `matchLabels` entry is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels[k] == *v)
}

#[tokio::test]
async fn kubernetes_manifests_agree_with_the_gateway() {
    let docs = manifests();
    // Well-formed objects, all in one namespace, all applied by kustomize.
    let kustomization = docs
        .iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .map(|(_, d)| d)
        .expect("kustomization.yaml");
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for (file, doc) in docs.iter().filter(|(f, _)| f != "kustomization.yaml") {
        assert!(
            listed.contains(&file.as_str()),
            "{file} is not in kustomization.yaml"
        );
        assert!(
            doc["apiVersion"].is_string() && doc["kind"].is_string(),
            "{file}"
        );
        assert!(doc["metadata"]["name"].is_string(), "{file}");
        assert_eq!(doc["metadata"]["namespace"], "llm", "{file}");
    }

    // The ConfigMap's file is a valid config.
    let config_map = one(&docs, "ConfigMap");
    let text = config_map["data"]["infergate.toml"].as_str().unwrap();
    let config =
        infergate::config::Config::from_toml(text).expect("the ConfigMap's config is valid");
    config.validate().unwrap();

    // The Deployment runs it with probes on paths the admin listener serves.
    let deployment = one(&docs, "Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        labels
    ));
    let spec = &pod["spec"];
    assert!(
        spec["affinity"]["podAntiAffinity"].is_object(),
        "replicas spread over nodes"
    );
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let container = &spec["containers"][0];
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    let ports: std::collections::HashMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["http"], port_of(&config.listener.addr));
    assert_eq!(ports["admin"], port_of(&config.admin.addr));
    assert_eq!(
        ports["grpc-epp"],
        port_of(config.epp.addr.as_deref().unwrap())
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        infergate::admin::LIVEZ_PATH
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        infergate::admin::READYZ_PATH
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let port = container[probe]["httpGet"]["port"].as_str().unwrap();
        assert_eq!(ports[port], ports["admin"], "{probe} on the admin port");
    }
    // The config path in the args is the mounted ConfigMap key.
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mount = &container["volumeMounts"][0];
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let path = format!("{}/infergate.toml", mount["mountPath"].as_str().unwrap());
    assert!(args.contains(&path.as_str()), "{args:?} reads {path}");
    assert_eq!(container["env"][0]["name"], infergate::admin::TOKEN_ENV);

    // Probe paths answer on the admin router without the token, even when
    // reads need it; /readyz says not ready until discovery finds nodes.
    let gateway = infergate::proxy::Gateway::new(&config).unwrap();
    let admin = infergate::admin::start(
        gateway,
        &infergate::admin::AdminConfig {
            token: Some("t".into()),
            open_reads: Some(false),
            ..config.admin.clone()
        },
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let get = |path: &'static str| {
        let addr = admin.addr;
        async move {
            let request = http::Request::get(format!("http://{addr}{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http()
                .request(request)
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get(infergate::admin::LIVEZ_PATH).await, 200);
    assert_eq!(get(infergate::admin::READYZ_PATH).await, 503);
    assert_eq!(
        get("/api/v1/nodes").await,
        401,
        "other reads still need the token"
    );
    admin.stop().await;

    // The Service exposes the pod's ports to its pods.
    let service = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "infergate")
        .unwrap();
    assert!(selects(&service["spec"]["selector"], labels));
    for port in service["spec"]["ports"].as_array().unwrap() {
        let target = port["targetPort"].as_str().unwrap();
        assert!(ports.contains_key(target), "service targets {target}");
    }

    // RBAC: the pods' ServiceAccount may only read EndpointSlices.
    let account = one(&docs, "ServiceAccount");
    assert_eq!(spec["serviceAccountName"], account["metadata"]["name"]);
    let role = one(&docs, "Role");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["apiGroups"], serde_json::json!(["discovery.k8s.io"]));
        assert_eq!(rule["resources"], serde_json::json!(["endpointslices"]));
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                "{verb} is not read-only"
            );
        }
    }
    assert!(
        docs.iter().all(|(_, d)| d["kind"] != "ClusterRole"),
        "no cluster-wide rights"
    );
    let binding = one(&docs, "RoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);

    // Disruptions leave most replicas.
    let pdb = one(&docs, "PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    // Discovery watches the model servers' Service on a port it has.
    let discovery = config.pools[0]
        .discovery
        .as_ref()
        .unwrap()
        .kubernetes
        .as_ref()
        .unwrap();
    let vllm = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == discovery.service.as_str())
        .expect("the discovered Service is deployed");
    let vllm_port = vllm["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == discovery.port_name.as_deref().unwrap())
        .expect("the port_name exists");

    // The InferencePool selects the same pods and names infergate's picker.
    let pool = one(&docs, "InferencePool");
    assert_eq!(pool["apiVersion"], "inference.networking.k8s.io/v1");
    assert_eq!(
        pool["spec"]["selector"]["matchLabels"],
        vllm["spec"]["selector"]
    );
    assert_eq!(
        pool["spec"]["targetPorts"][0]["number"],
        vllm_port["targetPort"]
    );
    let picker = &pool["spec"]["endpointPickerRef"];
    assert_eq!(picker["name"], service["metadata"]["name"]);
    let epp_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["targetPort"] == "grpc-epp")
        .unwrap();
    assert_eq!(picker["port"]["number"], epp_port["port"]);
    let route = one(&docs, "HTTPRoute");
    let backend = &route["spec"]["rules"][0]["backendRefs"][0];
    assert_eq!(backend["kind"], "InferencePool");
    assert_eq!(backend["name"], pool["metadata"]["name"]);
    assert_eq!(backend["group"], "inference.networking.k8s.io");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    inference_pool_fields_are_gie_v1(pool);
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "the image writes nothing"
    );
}

/// The InferencePool's fields are those of GIE's `inference.networking.k8s.io/v1`
/// API (`InferencePoolSpec`, `EndpointPickerRef`; no schema checker here
/// knows this CRD): unknown keys, an out-of-range port or a failure mode
/// the API does not have would be refused by the API server.
fn inference_pool_fields_are_gie_v1(pool: &Value) {
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let spec = &pool["spec"];
    for key in keys(spec) {
        assert!(
            [
                "selector",
                "targetPorts",
                "appProtocol",
                "endpointPickerRef"
            ]
            .contains(&key.as_str()),
            "spec.{key} is not an InferencePool v1 field"
        );
    }
    for key in keys(&spec["selector"]) {
        assert!(
            ["matchLabels", "matchExpressions"].contains(&key.as_str()),
            "spec.selector.{key}"
        );
    }
    let ports = spec["targetPorts"]
        .as_array()
        .expect("targetPorts is required");
    assert!((1..=8).contains(&ports.len()), "1 to 8 targetPorts");
    for port in ports {
        assert_eq!(keys(port), ["number"]);
        assert!((1..=65535).contains(&port["number"].as_u64().unwrap()));
    }
    let picker = &spec["endpointPickerRef"];
    for key in keys(picker) {
        assert!(
            ["group", "kind", "name", "port", "failureMode"].contains(&key.as_str()),
            "spec.endpointPickerRef.{key} is not an EndpointPickerRef field"
        );
    }
    assert_eq!(picker["group"], "", "the core API group: a Service");
    assert_eq!(picker["kind"], "Service");
    assert!(
        ["FailOpen", "FailClose"].contains(&picker["failureMode"].as_str().unwrap()),
        "failureMode is FailOpen or FailClose"
    );
    assert_eq!(keys(&picker["port"]), ["number"]);
}

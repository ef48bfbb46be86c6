//! The Kubernetes kit (deploy/kubernetes, SPEC §12): every overlay builds with `kubectl
//! kustomize`; every object validates against Kubernetes' schema (kubernetes-validate, strict)
//! or the vendored CRD of its kind (Istio, the Prometheus Operator); the pods are what an
//! operator expects (probes that mean something, resources, a restricted security context); the
//! overlays differ where they must (SQLite: one replica, Recreate, a volume; PostgreSQL: replicas
//! rolled one at a time); the PrometheusRule holds ops/prometheus's rules; the Grafana dashboard's
//! every query passes promtool; the WasmPlugin pulls by digest and passes `keygate check`.
mod common;
use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

const OVERLAYS: [&str; 3] = ["sqlite", "postgres", "istio"];

fn python() -> std::path::PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: `make kube-tools`", p.display());
    p
}

fn piped(mut cmd: Command, input: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("ran")
}

/// `kubectl kustomize` of an overlay: the YAML an operator applies.
fn build(overlay: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy/kubernetes/overlays").join(overlay))
        .output()
        .expect("kubectl (preinstalled on these machines; kustomize is built in)");
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents of a YAML stream, as JSON values.
fn objects(yaml: &str) -> Vec<Value> {
    yaml_documents(yaml)
}

fn validate(yaml: &str) -> Result<(), String> {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/fixtures/validate_kubernetes.py"));
    let out = piped(cmd, yaml);
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => panic!(
            "the validator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

#[test]
fn every_overlay_builds_and_every_object_validates() {
    for overlay in OVERLAYS {
        let yaml = build(overlay);
        if let Err(e) = validate(&yaml) {
            panic!("{overlay}:\n{e}");
        }
    }
    // The check bites: a wrong type in a built-in kind, an unknown field in a custom resource.
    let yaml = build("postgres");
    let broken = yaml.replacen("replicas: 2", "replicas: two", 1);
    assert!(validate(&broken).unwrap_err().contains("spec/replicas"));
    let broken = yaml.replacen("interval: 30s", "intervall: 30s", 1);
    assert!(validate(&broken)
        .unwrap_err()
        .contains("'intervall' was unexpected"));
}

#[test]
fn pods_have_meaningful_probes_resources_and_a_restricted_security_context() {
    for overlay in OVERLAYS {
        let objs = objects(&build(overlay));
        for d in objs.iter().filter(|o| o["kind"] == "Deployment") {
            let name = d["metadata"]["name"].as_str().unwrap();
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"], true,
                "{overlay} {name}"
            );
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault"
            );
            assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
            for c in pod["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}"
                );
                assert!(
                    c["readinessProbe"].is_object(),
                    "{name}: no readiness probe"
                );
                assert!(c["livenessProbe"].is_object(), "{name}: no liveness probe");
                assert!(c["resources"]["requests"]["cpu"].is_string(), "{name}");
                assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
            }
        }
        // What each probe asks: the key service's readiness is the database (/readyz), its
        // liveness the process (/healthz); the rate-limit service's readiness is its gRPC
        // health, which follows Redis; liveness only that its port accepts.
        let serve = &find(&objs, "Deployment", "keygate-serve")["spec"]["template"]["spec"]
            ["containers"][0];
        assert_eq!(serve["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(serve["livenessProbe"]["httpGet"]["path"], "/healthz");
        let rl = &find(&objs, "Deployment", "keygate-ratelimit")["spec"]["template"]["spec"]
            ["containers"][0];
        assert_eq!(rl["readinessProbe"]["grpc"]["port"], 8082);
        assert!(rl["livenessProbe"]["tcpSocket"].is_object());
        // Ports named as the mesh (and SPEC §12) name them.
        let ports = |svc: &str| -> Vec<String> {
            find(&objs, "Service", svc)["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ports("keygate-serve"), ["http", "grpc-otlp"]);
        assert_eq!(ports("keygate-ratelimit"), ["grpc", "http-metrics"]);
        let pdb = find(&objs, "PodDisruptionBudget", "keygate-ratelimit");
        assert_eq!(pdb["spec"]["minAvailable"], 1);
        // Tokens and the database URL come from the Secret, never from the manifest's text.
        let env = serve["env"].as_array().unwrap();
        for var in [
            "KEYGATE_DATABASE_URL",
            "KEYGATE_ADMIN_TOKEN_SHA256",
            "KEYGATE_SYNC_TOKEN_SHA256",
        ] {
            let e = env.iter().find(|e| e["name"] == var).expect(var);
            assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], "keygate", "{var}");
        }
    }
}

#[test]
fn sqlite_runs_one_replica_on_a_volume_and_postgres_rolls_replicas() {
    let objs = objects(&build("sqlite"));
    let d = &find(&objs, "Deployment", "keygate-serve")["spec"];
    assert_eq!(
        (d["replicas"].as_u64(), d["strategy"]["type"].as_str()),
        (Some(1), Some("Recreate"))
    );
    let data = d["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .unwrap();
    assert_eq!(data["persistentVolumeClaim"]["claimName"], "keygate-data");
    assert!(data.get("emptyDir").is_none());
    find(&objs, "PersistentVolumeClaim", "keygate-data");

    let objs = objects(&build("postgres"));
    let d = &find(&objs, "Deployment", "keygate-serve")["spec"];
    assert!(d["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(d["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let secret = find(&objs, "Secret", "keygate");
    assert!(secret["stringData"]["database-url"]
        .as_str()
        .unwrap()
        .starts_with("postgres://"));
}

#[test]
fn the_prometheus_rule_holds_the_alert_rules_of_ops() {
    let objs = objects(&build("postgres"));
    let rule = find(&objs, "PrometheusRule", "keygate");
    let ops = objects(
        &std::fs::read_to_string(repo().join("ops/prometheus/keygate-alerts.yml")).unwrap(),
    );
    assert_eq!(
        rule["spec"], ops[0],
        "deploy/kubernetes/base/monitoring.yaml and ops/prometheus/keygate-alerts.yml differ"
    );
}

#[test]
fn every_dashboard_query_is_valid_promql_over_metrics_keygate_has() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/base/grafana/keygate.json"))
        .unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10);
    // promtool checks rules files: each query becomes a recording rule.
    let dir = scratch_dir("kube-dashboard");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: keygate:dashboard:{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    std::fs::write(dir.join("dashboard.rules.yml"), &rules).unwrap();
    let promtool = repo().join(".venv/bin/promtool");
    assert!(
        promtool.exists(),
        "{} is missing: `make alerts` installs it",
        promtool.display()
    );
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("dashboard.rules.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // …and a broken query fails the same check.
    std::fs::write(
        dir.join("broken.rules.yml"),
        rules.replacen("sum(rate(", "sum(rate((", 1),
    )
    .unwrap();
    let broken = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("broken.rules.yml"))
        .output()
        .unwrap();
    assert!(!broken.status.success());
    // Every keygate metric a query reads is one the filter or the rate-limit service defines
    // (the filter's stats are `keygate.<name>`, the service's metrics `<name>` under `keygate`).
    let mut code = String::new();
    for dir in ["src/filter", "crates/rate-limit-service/src"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap().flatten() {
            code += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
    }
    for e in &exprs {
        let names = e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for name in names.filter(|w| w.starts_with("keygate_")) {
            let stem = &name["keygate_".len()..];
            // The rate-limit service registers `calls` (…_total), `call_duration_seconds`
            // (…_bucket) under the `keygate_ratelimit` prefix; the filter names a literal
            // (`"sync_fetches"`) or a usage family (`keygate.allowed.key_id.{id}`).
            let service = stem
                .strip_prefix("ratelimit_")
                .map(|s| s.trim_end_matches("_bucket").trim_end_matches("_total"))
                .is_some_and(|s| code.contains(&format!("\"{s}\"")));
            let filter =
                code.contains(&format!("\"{stem}\"")) || code.contains(&format!("keygate.{stem}."));
            assert!(service || filter, "{name}: no such metric in the code");
        }
    }
}

#[test]
fn the_istio_overlay_pulls_the_filter_by_digest_with_the_shipped_plugin_configuration() {
    let objs = objects(&build("istio"));
    let plugin = find(&objs, "WasmPlugin", "keygate");
    let url = plugin["spec"]["url"].as_str().unwrap();
    let digest = url
        .rsplit_once("@sha256:")
        .map(|(_, d)| d)
        .unwrap_or_default();
    assert!(
        url.starts_with("oci://")
            && digest.len() == 64
            && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{url}"
    );
    let shipped =
        objects(&std::fs::read_to_string(repo().join("envoy/istio/wasmplugin.yaml")).unwrap());
    assert_eq!(
        plugin["spec"]["pluginConfig"],
        shipped[0]["spec"]["pluginConfig"]
    );
    // The filter's own validation, on what kubectl would apply.
    let dir = scratch_dir("kube-istio");
    std::fs::write(dir.join("istio.yaml"), build("istio")).unwrap();
    let out = Command::new(keygate_bin())
        .arg("check")
        .arg(dir.join("istio.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("spec.pluginConfig: ok"));
}

/// The istio overlay sends the proxies' request log to keygate serve (SPEC §13): its EnvoyFilter
/// appends the logger the shipped Envoy files carry (the tests' [`request_log_logger`]) to the
/// selected workloads' connection manager, to Istio's cluster of the Service's `grpc-otlp` port,
/// with the WasmPlugin's sync token; the Service's port is HTTP/2 for the mesh.
#[test]
fn the_istio_overlay_sends_the_request_log_to_the_key_service_over_http2() {
    let objs = objects(&build("istio"));
    let filter = find(&objs, "EnvoyFilter", "keygate-request-log");
    let plugin = find(&objs, "WasmPlugin", "keygate");
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"],
        plugin["spec"]["selector"]["matchLabels"]
    );
    let patch = &filter["spec"]["configPatches"][0];
    assert_eq!(patch["applyTo"], "NETWORK_FILTER");
    assert_eq!(patch["patch"]["operation"], "MERGE");
    let logger = &patch["patch"]["value"]["typed_config"]["access_log"][0];
    let token = plugin["spec"]["pluginConfig"]["key_sync"]["token"]
        .as_str()
        .unwrap();
    let host = "keygate-serve.keygate.svc.cluster.local";
    let mut want = request_log_logger(&format!("outbound|4317||{host}"), Some(token));
    want["typed_config"]["grpc_service"]["envoy_grpc"]["authority"] = json!(host);
    assert_eq!(logger, &want);
    let port = find(&objs, "Service", "keygate-serve")["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc-otlp")
        .cloned()
        .unwrap();
    assert_eq!(port["port"], 4317);
    assert_eq!(port["appProtocol"], "grpc");
    assert_eq!(port["targetPort"], "http");
}

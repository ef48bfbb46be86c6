//! The shipped manifests against their published schemas (issue 21): the Istio WasmPlugin
//! against Istio's CustomResourceDefinition, the compose file against the compose
//! specification's schema (both vendored in tests/fixtures/schemas/, with their licence).
//! Validated with Python's `jsonschema` from `.venv` (`make openapi-tools` installs it); a
//! broken copy of each must fail, so the check is known to bite.
mod common;
use common::repo;
use std::io::Write;
use std::process::{Command, Stdio};

/// Validates a YAML document (`text`) against a schema; `Err(why)` if it does not conform.
/// `kind`: `wasmplugin` (the CRD's openAPIV3Schema, and its group/version/kind) or `compose`.
fn validate(kind: &str, text: &str) -> Result<(), String> {
    let script = r#"
import json, sys, yaml, jsonschema
kind, schemas = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(sys.stdin.read()) if d]
if kind == "wasmplugin":
    crd = yaml.safe_load(open(schemas + "/istio-wasmplugin-crd.yaml"))
    plugins = [d for d in docs if d.get("kind") == crd["spec"]["names"]["kind"]]
    if len(plugins) != 1:
        sys.exit("expected one WasmPlugin, found %d" % len(plugins))
    doc = plugins[0]
    served = {crd["spec"]["group"] + "/" + v["name"]: v for v in crd["spec"]["versions"] if v["served"]}
    if doc.get("apiVersion") not in served:
        sys.exit("apiVersion %r is not one the CRD serves (%s)" % (doc.get("apiVersion"), sorted(served)))
    schema = served[doc["apiVersion"]]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft4Validator(schema)
else:
    if len(docs) != 1:
        sys.exit("expected one compose document")
    doc = docs[0]
    validator = jsonschema.Draft7Validator(json.load(open(schemas + "/compose-spec.json")))
errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
for e in errors:
    print("/".join(map(str, e.absolute_path)) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: make openapi-tools installs it",
        python.display()
    );
    let mut child = Command::new(python)
        .args(["-c", script, kind])
        .arg(repo().join("tests/fixtures/schemas"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python ran");
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => panic!(
            "the validator failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_wasmplugin_manifest_conforms_to_istios_crd() {
    let manifest = read("envoy/istio/wasmplugin.yaml");
    assert_eq!(validate("wasmplugin", &manifest), Ok(()));
    // The check bites: a failure strategy, a phase and a digest Istio does not know.
    let broken = manifest
        .replace("failStrategy: FAIL_CLOSE", "failStrategy: FAIL_SOMETIMES")
        .replace("phase: AUTHN", "phase: FIRST")
        .replace("imagePullPolicy: IfNotPresent", "sha256: not-a-digest");
    let why = validate("wasmplugin", &broken).expect_err("a broken manifest conforms");
    for field in ["spec/failStrategy", "spec/phase", "spec/sha256"] {
        assert!(why.contains(field), "{field} not named in:\n{why}");
    }
    let wrong_version = manifest.replace("extensions.istio.io/v1alpha1", "extensions.istio.io/v9");
    assert!(validate("wasmplugin", &wrong_version)
        .expect_err("an unserved version")
        .is_empty());
}

#[test]
fn the_compose_file_conforms_to_the_compose_specification() {
    let compose = read("envoy/docker-compose.yaml");
    assert_eq!(validate("compose", &compose), Ok(()));
    let broken = format!("{compose}\nservice_typo:\n  envoy: {{}}\n");
    let why = validate("compose", &broken).expect_err("a broken compose file conforms");
    assert!(why.contains("service_typo"), "{why}");
}

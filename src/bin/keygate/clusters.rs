//! `keygate check` warnings about the clusters a configuration calls on its own (`key_sync`,
//! `usage_report`, `rate_limit_service`): a name the file's static clusters lack, or a gRPC
//! cluster without HTTP/2, fails every call (the filter then keeps its last key set, retries
//! its reports, or applies `on_failure`: nothing breaks loudly, so `check` says it).

use crate::found::{Found, Host};
use crate::hardening::Warning;
use serde_json::Value;

/// The documents of an Envoy file (JSON: one; YAML: each), as values; none if unreadable.
pub fn documents(file: &str, text: &str) -> Vec<Value> {
    if file.ends_with(".json") || text.trim_start().starts_with('{') {
        return serde_json::from_str(text).into_iter().collect();
    }
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .collect()
}

fn contains_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, x)| k == key || contains_key(x, key)),
        Value::Array(a) => a.iter().any(|x| contains_key(x, key)),
        _ => false,
    }
}

/// Warnings for every keygate configuration of an Envoy file whose clusters it can see.
pub fn warnings(docs: &[Value], found: &[Found]) -> Vec<Warning> {
    let clusters: Vec<&Value> = docs
        .iter()
        .filter_map(|d| d.pointer("/static_resources/clusters")?.as_array())
        .flatten()
        .collect();
    if clusters.is_empty() {
        return Vec::new(); // clusters come from CDS (or Istio): nothing to compare with
    }
    let mut out = Vec::new();
    for f in found {
        let (Host::Envoy { .. }, Ok(config)) = (&f.host, &f.config) else {
            continue;
        };
        for (field, grpc) in [
            ("key_sync", false),
            ("usage_report", false),
            ("rate_limit_service", true),
        ] {
            let Some(name) = config
                .get(field)
                .and_then(|e| e.get("cluster"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let at = match f.location.as_str() {
                "" => format!("$.{field}.cluster"),
                location => format!("{location}: $.{field}.cluster"),
            };
            let cluster = clusters
                .iter()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(name));
            let message = match cluster {
                None => format!(
                    "{name:?} is not a cluster of this file: every call fails (fine if CDS adds it)"
                ),
                Some(c)
                    if grpc
                        && !contains_key(c, "http2_protocol_options")
                        && !contains_key(c, "auto_config") =>
                {
                    format!(
                        "{name:?} has no HTTP/2: gRPC calls to it fail and on_failure applies to every request; set typed_extension_protocol_options … explicit_http_config: {{http2_protocol_options: {{}}}}"
                    )
                }
                Some(_) => continue,
            };
            out.push(Warning { at, message });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::found::configs_in;

    fn check(text: &str) -> Vec<String> {
        let found = configs_in("envoy.yaml", text).unwrap();
        warnings(&documents("envoy.yaml", text), &found)
            .iter()
            .map(|w| w.message.clone())
            .collect()
    }

    #[test]
    fn the_shipped_configs_name_clusters_they_have() {
        for text in [
            include_str!("../../../envoy/demo.yaml"),
            include_str!("../../../envoy/examples/fleet.yaml"),
            include_str!("../../../envoy/compose-envoy.yaml"),
        ] {
            assert_eq!(check(text), Vec::<String>::new());
        }
    }

    #[test]
    fn a_missing_cluster_and_a_grpc_cluster_without_http2_are_named() {
        let fleet = include_str!("../../../envoy/examples/fleet.yaml");
        let missing = fleet.replace("\"cluster\": \"ratelimit\"", "\"cluster\": \"limits\"");
        assert_eq!(
            check(&missing),
            ["\"limits\" is not a cluster of this file: every call fails (fine if CDS adds it)"]
        );
        let http1 = fleet.replace(
            "explicit_http_config: { http2_protocol_options: {} }",
            "explicit_http_config: { http_protocol_options: {} }",
        );
        assert_eq!(check(&http1).len(), 1);
        assert!(check(&http1)[0].starts_with("\"ratelimit\" has no HTTP/2"));
    }
}

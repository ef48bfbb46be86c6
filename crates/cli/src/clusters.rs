//! `keygate check` warnings about the clusters a configuration calls on its own (`key_sync`,
//! `usage_report`, `rate_limit_service`): a name the file's static clusters lack, or a gRPC
//! cluster without HTTP/2, fails every call (the filter then keeps its last key set, retries
//! its reports, or applies `on_failure`: nothing breaks loudly, so `check` says it). In an Istio
//! WasmPlugin the proxy's clusters are Istio's: a name not in its `outbound|<port>|<subset>|<host>`
//! form is none of them.

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

/// The fields of a plugin configuration that name a cluster, and whether it speaks gRPC.
const CLUSTER_FIELDS: [(&str, bool); 3] = [
    ("key_sync", false),
    ("usage_report", false),
    ("rate_limit_service", true),
];

/// Istio's name for a mesh service's cluster: `outbound|<port>|<subset>|<host>`.
fn is_istio_cluster(name: &str) -> bool {
    let parts: Vec<&str> = name.split('|').collect();
    matches!(parts.as_slice(), ["outbound", port, _subset, host]
        if port.parse::<u16>().is_ok_and(|p| p > 0) && !host.is_empty())
}

/// Each cluster a configuration calls: (where it was found, the field, gRPC?, the name).
fn called_clusters(f: &Found) -> Vec<(&'static str, bool, &str)> {
    let Ok(config) = &f.config else {
        return Vec::new();
    };
    CLUSTER_FIELDS
        .iter()
        .filter_map(|&(field, grpc)| {
            let name = config.get(field)?.get("cluster")?.as_str()?;
            Some((field, grpc, name))
        })
        .collect()
}

/// Where a cluster field is, for a warning.
fn field_location(f: &Found, field: &str) -> String {
    match f.location.as_str() {
        "" => format!("$.{field}.cluster"),
        location => format!("{location}: $.{field}.cluster"),
    }
}

/// WasmPlugins: every cluster a configuration calls must be named the way Istio names them.
fn istio_warnings(found: &[Found]) -> Vec<Warning> {
    let istio = found
        .iter()
        .filter(|f| matches!(f.host, Host::Istio { .. }));
    istio
        .flat_map(|f| called_clusters(f).into_iter().map(move |c| (f, c)))
        .filter(|(_, (_, _, name))| !is_istio_cluster(name))
        .map(|(f, (field, _, name))| Warning {
            at: field_location(f, field),
            message: format!(
                "{name:?} is not an Istio cluster name: every call fails; Istio names a service's cluster outbound|<port>||<host> (e.g. outbound|8090||keygate-serve.keygate.svc.cluster.local)"
            ),
        })
        .collect()
}

/// Warnings for every keygate configuration of an Envoy file whose clusters it can see, and
/// for Istio cluster names in WasmPlugins.
pub fn warnings(docs: &[Value], found: &[Found]) -> Vec<Warning> {
    let istio = istio_warnings(found);
    if !istio.is_empty() {
        return istio;
    }
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
        if !matches!(f.host, Host::Envoy { .. }) {
            continue;
        }
        for (field, grpc, name) in called_clusters(f) {
            let at = field_location(f, field);
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
    fn a_wasmplugin_names_clusters_the_way_istio_does() {
        let manifest = include_str!("../../../envoy/istio/wasmplugin.yaml");
        assert!(manifest
            .contains("cluster: \"outbound|8090||keygate-serve.keygate.svc.cluster.local\""));
        assert_eq!(check(manifest), Vec::<String>::new());
        let plain = manifest.replace(
            "cluster: \"outbound|8090||keygate-serve.keygate.svc.cluster.local\"",
            "cluster: keyservice",
        );
        let w = check(&plain);
        assert_eq!(w.len(), 2, "{w:?}"); // key_sync and usage_report
        assert!(
            w[0].starts_with("\"keyservice\" is not an Istio cluster name"),
            "{w:?}"
        );
        for name in [
            "outbound|8090||a.b",
            "outbound|8082|v1|rl.keygate.svc.cluster.local",
        ] {
            assert!(is_istio_cluster(name), "{name}");
        }
        for name in [
            "outbound|0||a",
            "outbound|8090||",
            "inbound|8090||a",
            "outbound|x||a",
            "a",
        ] {
            assert!(!is_istio_cluster(name), "{name}");
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

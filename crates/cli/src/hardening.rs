//! `keygate check` warnings: settings around keygate that let a client reach an upstream in a
//! way keygate did not judge (SPEC §2 "What is judged is what is forwarded"), a filter that
//! lets requests through when it cannot run, and plaintext keys in a configuration.

use crate::found::{Found, Host, Located};
use serde_json::Value;
use std::fmt;

/// A warning: where in the file, and what.
#[derive(Debug, PartialEq, Eq)]
pub struct Warning {
    pub at: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// An HttpConnectionManager setting keygate relies on: its dotted path, whether a value is
/// hardened, and why it matters.
struct Setting {
    path: &'static str,
    hardened: fn(&Value) -> bool,
    why: &'static str,
}

const HCM_SETTINGS: [Setting; 4] = [
    Setting {
        path: "normalize_path",
        hardened: is_true,
        why: "filters before keygate and the routes see `.` and `..` segments unresolved \
              (keygate resolves or refuses them before forwarding); set normalize_path: true",
    },
    Setting {
        path: "merge_slashes",
        hardened: is_true,
        why: "filters before keygate and the routes see `//` unmerged \
              (keygate merges them before forwarding); set merge_slashes: true",
    },
    Setting {
        path: "path_with_escaped_slashes_action",
        hardened: escaped_slashes_handled,
        why: "an encoded / or \\ (%2F, %5C) means different things to different upstreams \
              (keygate refuses it with 400, but filters before keygate and the routes see it); \
              set REJECT_REQUEST",
    },
    Setting {
        path: "common_http_protocol_options.headers_with_underscores_action",
        hardened: underscores_handled,
        why: "CGI, WSGI and PHP upstreams read x_tenant_id as X-Tenant-Id \
              (keygate removes such spellings of its own headers only); set DROP_HEADER",
    },
];

const USE_REMOTE_ADDRESS: &str = "use_remote_address";
const REMOTE_ADDRESS_FIX: &str =
    "set use_remote_address: true (behind a load balancer, with xff_num_trusted_hops)";
const MUST_FAIL_CLOSED: &str =
    "a filter that cannot run must reject requests, not let them through unauthenticated";
const PLAINTEXT_WHY: &str =
    "plaintext keys stay visible in Envoy's /config_dump; use sha256 in production (keygate hash)";

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

fn escaped_slashes_handled(v: &Value) -> bool {
    matches!(
        v.as_str(),
        Some("REJECT_REQUEST" | "UNESCAPE_AND_REDIRECT" | "UNESCAPE_AND_FORWARD")
    )
}

fn underscores_handled(v: &Value) -> bool {
    matches!(v.as_str(), Some("DROP_HEADER" | "REJECT_REQUEST"))
}

/// The value at a dotted path (Null when absent).
fn lookup<'a>(v: &'a Value, dotted: &str) -> &'a Value {
    dotted.split('.').fold(v, |v, k| &v[k])
}

/// "is not set", "is KEEP_UNCHANGED", "is false".
fn state(v: &Value) -> String {
    match v {
        Value::Null => "is not set".into(),
        Value::String(s) => format!("is {s}"),
        other => format!("is {other}"),
    }
}

fn warning(at: &str, message: String) -> Warning {
    Warning {
        at: at.to_string(),
        message,
    }
}

/// Whether a plugin configuration restricts keys by caller address anywhere.
pub fn uses_allowed_ips(config: &Value) -> bool {
    match config {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k == "allowed_ips" || uses_allowed_ips(v)),
        Value::Array(items) => items.iter().any(uses_allowed_ips),
        _ => false,
    }
}

/// The HttpConnectionManager (its typed_config) around keygate: path normalisation, header
/// names and the client address. `allowed_ips`: a keygate configuration in it uses them.
pub fn hcm_warnings(hcm: &Located, allowed_ips: bool) -> Vec<Warning> {
    let mut out: Vec<Warning> = HCM_SETTINGS
        .iter()
        .filter_map(|s| {
            let v = lookup(&hcm.value, s.path);
            (!(s.hardened)(v))
                .then(|| warning(&hcm.location, format!("{} {}: {}", s.path, state(v), s.why)))
        })
        .collect();
    let remote = &hcm.value[USE_REMOTE_ADDRESS];
    if !is_true(remote) {
        let (and, why) = if allowed_ips {
            (
                " and keygate's allowed_ips are used",
                "clients can choose their address with X-Forwarded-For",
            )
        } else {
            (
                "",
                "Envoy takes the client address from X-Forwarded-For, which clients write",
            )
        };
        let message = format!(
            "{USE_REMOTE_ADDRESS} {}{and}: {why}; {REMOTE_ADDRESS_FIX}",
            state(remote)
        );
        out.push(warning(&hcm.location, message));
    }
    out
}

/// The Envoy Wasm filter (its typed_config) that loads keygate: it must fail closed.
pub fn filter_warnings(filter: &Located) -> Vec<Warning> {
    let plugin = &filter.value["config"];
    let mut out = Vec::new();
    let policy = &plugin["failure_policy"];
    if policy.as_str() != Some("FAIL_CLOSED") {
        out.push(warning(
            &filter.location,
            format!(
                "config.failure_policy {}: {MUST_FAIL_CLOSED}; set FAIL_CLOSED",
                state(policy)
            ),
        ));
    }
    if is_true(&plugin["fail_open"]) {
        out.push(warning(
            &filter.location,
            format!("config.fail_open is true: {MUST_FAIL_CLOSED}; remove it"),
        ));
    }
    out
}

/// The Istio WasmPlugin (its spec): Istio fails closed unless told otherwise.
pub fn istio_warnings(spec: &Located) -> Vec<Warning> {
    let strategy = &spec.value["failStrategy"];
    if strategy.as_str() == Some("FAIL_OPEN") {
        vec![warning(
            &spec.location,
            format!(
                "failStrategy {}: {MUST_FAIL_CLOSED}; set FAIL_CLOSE (Istio's default)",
                state(strategy)
            ),
        )]
    } else {
        vec![]
    }
}

/// Inline keys given in plaintext: one warning per configuration, at the first of them.
/// `location`: where the configuration is in the file ("" when it is the file).
pub fn plaintext_key_warning(location: &str, config: &Value) -> Option<Warning> {
    let keys = config["keys"].as_array()?;
    let plain: Vec<usize> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.get("key").is_some_and(Value::is_string))
        .map(|(i, _)| i)
        .collect();
    let first = *plain.first()?;
    let path = format!("$.keys[{first}].key");
    let at = if location.is_empty() {
        path
    } else {
        format!("{location}: {path}")
    };
    let count = match plain.len() {
        1 => "1 key is in plaintext".to_string(),
        n => format!("{n} keys are in plaintext (this is the first)"),
    };
    Some(warning(&at, format!("{count}: {PLAINTEXT_WHY}")))
}

/// Every warning for the configurations found in one file, in file order; the settings of an
/// HttpConnectionManager once, however many keygate filters it has.
pub fn warnings(found: &[Found]) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut hcms_seen: Vec<&str> = Vec::new();
    for f in found {
        match &f.host {
            Host::Plain => {}
            Host::Istio { spec } => out.extend(istio_warnings(spec)),
            Host::Envoy { filter, hcm } => {
                if let Some(hcm) = hcm.as_ref().filter(|h| !hcms_seen.contains(&&*h.location)) {
                    hcms_seen.push(&hcm.location);
                    let allowed_ips = found
                        .iter()
                        .filter(|g| g.hcm_location() == Some(&hcm.location))
                        .any(|g| g.config.as_ref().is_ok_and(uses_allowed_ips));
                    out.extend(hcm_warnings(hcm, allowed_ips));
                }
                out.extend(filter_warnings(filter));
            }
        }
        if let Ok(config) = &f.config {
            out.extend(plaintext_key_warning(&f.location, config));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::found::configs_in;
    use serde_json::json;

    const HCM_AT: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";
    const FILTER_AT: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";

    const HARDENED: [(&str, &str); 7] = [
        ("demo", include_str!("../../../envoy/demo.yaml")),
        ("mlm", include_str!("../../../envoy/examples/mlm.yaml")),
        (
            "bearer",
            include_str!("../../../envoy/examples/bearer.yaml"),
        ),
        (
            "marginfront",
            include_str!("../../../envoy/examples/marginfront.yaml"),
        ),
        (
            "moodmnky",
            include_str!("../../../envoy/examples/moodmnky.yaml"),
        ),
        ("compose", include_str!("../../../envoy/compose-envoy.yaml")),
        (
            "istio",
            include_str!("../../../envoy/istio/wasmplugin.yaml"),
        ),
    ];

    fn hardened_hcm() -> Value {
        json!({
            "normalize_path": true,
            "merge_slashes": true,
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
            "use_remote_address": true,
        })
    }

    fn hardened_without(setting: &str) -> Value {
        let mut hcm = hardened_hcm();
        hcm.as_object_mut().unwrap().remove(setting);
        hcm
    }

    fn keygate_filter(plugin: Value, failure: Value) -> Value {
        let mut config = json!({
            "name": "keygate",
            "vm_config": {"runtime": "envoy.wasm.runtime.v8"},
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": plugin.to_string(),
            },
        });
        merge(&mut config, failure);
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": config,
            },
        })
    }

    fn merge(into: &mut Value, from: Value) {
        if let (Value::Object(into), Value::Object(from)) = (into, from) {
            into.extend(from);
        }
    }

    /// An Envoy bootstrap with one listener whose HCM has `settings` and `filters`.
    fn envoy(settings: Value, filters: Vec<Value>) -> String {
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "api",
            "http_filters": filters,
        });
        merge(&mut hcm, settings);
        json!({"static_resources": {"listeners": [{"name": "api", "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ]}]}})
        .to_string()
    }

    fn plugin() -> Value {
        json!({"prefixes": [{"prefix": "a_"}], "keys": [{"id": "k", "sha256": "00"}]})
    }

    fn fail_closed() -> Value {
        json!({"failure_policy": "FAIL_CLOSED"})
    }

    fn warnings_in(text: &str) -> Vec<String> {
        let found = configs_in("f", text).unwrap();
        warnings(&found).iter().map(|w| w.to_string()).collect()
    }

    fn hcm_line(message: &str) -> String {
        format!("{HCM_AT}: {message}")
    }

    #[test]
    fn the_shipped_configs_get_no_warnings() {
        for (name, text) in HARDENED {
            assert_eq!(warnings_in(text), Vec::<String>::new(), "{name}");
        }
    }

    #[test]
    fn a_hardened_config_gets_no_warnings() {
        let text = envoy(
            hardened_hcm(),
            vec![keygate_filter(plugin(), fail_closed())],
        );
        assert_eq!(warnings_in(&text), Vec::<String>::new());
    }

    #[test]
    fn each_missing_hcm_setting_is_named_with_why() {
        let text = envoy(json!({}), vec![keygate_filter(plugin(), fail_closed())]);
        assert_eq!(
            warnings_in(&text),
            vec![
                hcm_line("normalize_path is not set: filters before keygate and the routes see `.` and `..` segments unresolved (keygate resolves or refuses them before forwarding); set normalize_path: true"),
                hcm_line("merge_slashes is not set: filters before keygate and the routes see `//` unmerged (keygate merges them before forwarding); set merge_slashes: true"),
                hcm_line("path_with_escaped_slashes_action is not set: an encoded / or \\ (%2F, %5C) means different things to different upstreams (keygate refuses it with 400, but filters before keygate and the routes see it); set REJECT_REQUEST"),
                hcm_line("common_http_protocol_options.headers_with_underscores_action is not set: CGI, WSGI and PHP upstreams read x_tenant_id as X-Tenant-Id (keygate removes such spellings of its own headers only); set DROP_HEADER"),
                hcm_line("use_remote_address is not set: Envoy takes the client address from X-Forwarded-For, which clients write; set use_remote_address: true (behind a load balancer, with xff_num_trusted_hops)"),
            ]
        );
    }

    #[test]
    fn unsafe_values_are_named_and_every_safe_one_accepted() {
        let at = |settings: Value| {
            let mut hcm = hardened_hcm();
            merge(&mut hcm, settings);
            hcm_warnings(
                &Located {
                    location: "l".into(),
                    value: hcm,
                },
                false,
            )
            .into_iter()
            .map(|w| w.message)
            .collect::<Vec<_>>()
        };
        for safe in [
            json!({"path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT"}),
            json!({"path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD"}),
            json!({"common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"}}),
        ] {
            assert_eq!(at(safe.clone()), Vec::<String>::new(), "{safe}");
        }
        for (unsafe_, starts) in [
            (
                json!({"normalize_path": false}),
                "normalize_path is false: ",
            ),
            (json!({"merge_slashes": false}), "merge_slashes is false: "),
            (
                json!({"path_with_escaped_slashes_action": "KEEP_UNCHANGED"}),
                "path_with_escaped_slashes_action is KEEP_UNCHANGED: ",
            ),
            (
                json!({"path_with_escaped_slashes_action": "IMPLEMENTATION_SPECIFIC_DEFAULT"}),
                "path_with_escaped_slashes_action is IMPLEMENTATION_SPECIFIC_DEFAULT: ",
            ),
            (
                json!({"common_http_protocol_options": {"headers_with_underscores_action": "ALLOW"}}),
                "common_http_protocol_options.headers_with_underscores_action is ALLOW: ",
            ),
            (
                json!({"common_http_protocol_options": {}}),
                "common_http_protocol_options.headers_with_underscores_action is not set: ",
            ),
            (
                json!({"use_remote_address": false}),
                "use_remote_address is false: ",
            ),
        ] {
            let got = at(unsafe_.clone());
            assert!(
                got.len() == 1 && got[0].starts_with(starts),
                "{unsafe_}: {got:?}"
            );
        }
    }

    #[test]
    fn allowed_ips_make_the_remote_address_warning_name_them() {
        let mut with_ips = plugin();
        with_ips["keys"][0]["allowed_ips"] = json!(["10.0.0.0/8"]);
        // Only one of the two keygate filters in the listener uses allowed_ips.
        let text = envoy(
            hardened_without("use_remote_address"),
            vec![
                keygate_filter(plugin(), fail_closed()),
                keygate_filter(with_ips, fail_closed()),
            ],
        );
        assert_eq!(
            warnings_in(&text),
            vec![hcm_line("use_remote_address is not set and keygate's allowed_ips are used: clients can choose their address with X-Forwarded-For; set use_remote_address: true (behind a load balancer, with xff_num_trusted_hops)")]
        );
        assert!(uses_allowed_ips(
            &json!({"roles": {"r": {"allowed_ips": []}}})
        ));
        assert!(!uses_allowed_ips(&plugin()));
    }

    #[test]
    fn a_filter_that_may_fail_open_is_named() {
        let text = |failure: Value| {
            warnings_in(&envoy(
                hardened_hcm(),
                vec![keygate_filter(plugin(), failure)],
            ))
        };
        let why =
            "a filter that cannot run must reject requests, not let them through unauthenticated";
        assert_eq!(
            text(json!({})),
            vec![format!(
                "{FILTER_AT}: config.failure_policy is not set: {why}; set FAIL_CLOSED"
            )]
        );
        assert_eq!(
            text(json!({"failure_policy": "FAIL_OPEN"})),
            vec![format!(
                "{FILTER_AT}: config.failure_policy is FAIL_OPEN: {why}; set FAIL_CLOSED"
            )]
        );
        assert_eq!(
            text(json!({"failure_policy": "FAIL_CLOSED", "fail_open": true})),
            vec![format!(
                "{FILTER_AT}: config.fail_open is true: {why}; remove it"
            )]
        );
    }

    #[test]
    fn plaintext_keys_are_counted_once_per_config_at_the_first() {
        let why = "plaintext keys stay visible in Envoy's /config_dump; use sha256 in production (keygate hash)";
        let config = json!({"keys": [
            {"id": "a", "sha256": "00"},
            {"id": "b", "key": "a_1"},
            {"id": "c", "key": "a_2"},
        ]});
        assert_eq!(
            warnings_in(&config.to_string()),
            vec![format!(
                "$.keys[1].key: 2 keys are in plaintext (this is the first): {why}"
            )]
        );
        let text = envoy(
            hardened_hcm(),
            vec![keygate_filter(
                json!({"keys": [{"id": "b", "key": "a_1"}]}),
                fail_closed(),
            )],
        );
        assert_eq!(
            warnings_in(&text),
            vec![format!("{FILTER_AT}.config.configuration.value: $.keys[0].key: 1 key is in plaintext: {why}")]
        );
        assert_eq!(plaintext_key_warning("", &plugin()), None);
    }

    #[test]
    fn istio_warns_only_for_an_explicit_fail_open_and_plaintext_keys() {
        let istio = |spec: &str| {
            format!("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: k}}\nspec:\n{spec}")
        };
        let open =
            istio("  failStrategy: FAIL_OPEN\n  pluginConfig: {keys: [{id: a, key: a_1}]}\n");
        assert_eq!(
            warnings_in(&open),
            vec![
                "spec: failStrategy is FAIL_OPEN: a filter that cannot run must reject requests, not let them through unauthenticated; set FAIL_CLOSE (Istio's default)".to_string(),
                "spec.pluginConfig: $.keys[0].key: 1 key is in plaintext: plaintext keys stay visible in Envoy's /config_dump; use sha256 in production (keygate hash)".to_string(),
            ]
        );
        let default = istio("  pluginConfig: {keys: [{id: a, sha256: '00'}]}\n");
        assert_eq!(warnings_in(&default), Vec::<String>::new());
    }

    #[test]
    fn locations_in_a_second_yaml_document_name_it() {
        // (A YAML stream: text starting with `{` would be read as JSON only.)
        let text = format!(
            "# two documents\n{}\n---\n{}",
            envoy(
                hardened_hcm(),
                vec![keygate_filter(plugin(), fail_closed())]
            ),
            envoy(
                hardened_without("use_remote_address"),
                vec![keygate_filter(plugin(), fail_closed())]
            ),
        );
        let got = warnings_in(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(&format!(
                "(document 2) {HCM_AT}: use_remote_address is not set: "
            )),
            "{got:?}"
        );
    }

    #[test]
    fn a_filter_outside_a_connection_manager_gets_only_its_own_warnings() {
        // An ECDS-style file: the Wasm filter alone, no HttpConnectionManager around it.
        let text = json!({"resources": [keygate_filter(plugin(), json!({}))]}).to_string();
        let got = warnings_in(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("resources[0].typed_config: config.failure_policy is not set: "),
            "{got:?}"
        );
    }
}

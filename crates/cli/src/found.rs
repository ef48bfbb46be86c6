//! Finding keygate's plugin configurations in a file, and what surrounds them: the Envoy Wasm
//! filter and HttpConnectionManager, or the Istio WasmPlugin.

use serde_json::Value;

const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const HTTP_CONNECTION_MANAGER: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// A part of a file and where it is (`static_resources.listeners[0]…`, "" for the whole file).
#[derive(Clone, Debug)]
pub struct Located {
    pub location: String,
    pub value: Value,
}

/// What holds a plugin configuration.
#[derive(Debug)]
pub enum Host {
    /// The file is the plugin configuration itself.
    Plain,
    /// An Envoy Wasm filter (`filter` is its typed_config), inside an HttpConnectionManager
    /// (its typed_config) when the file has one around it.
    Envoy {
        filter: Located,
        hcm: Option<Located>,
    },
    /// An Istio WasmPlugin (`spec` is its spec).
    Istio { spec: Located },
}

/// A plugin configuration found in a file: where it is, its JSON, what holds it, and its JSON
/// text when it has one (a plain JSON file, an Envoy StringValue; not an Istio YAML map).
#[derive(Debug)]
pub struct Found {
    pub location: String,
    pub config: Result<Value, String>,
    pub host: Host,
    pub source: Option<String>,
}

impl Found {
    /// The location of the HttpConnectionManager around this configuration, if any.
    pub fn hcm_location(&self) -> Option<&str> {
        match &self.host {
            Host::Envoy { hcm: Some(hcm), .. } => Some(&hcm.location),
            _ => None,
        }
    }

    /// The same, with every location prefixed (the document of a multi-document YAML).
    fn prefixed(mut self, prefix: &str) -> Self {
        let relocate = |l: &mut String| *l = format!("{prefix}{l}");
        relocate(&mut self.location);
        match &mut self.host {
            Host::Plain => {}
            Host::Envoy { filter, hcm } => {
                relocate(&mut filter.location);
                if let Some(hcm) = hcm {
                    relocate(&mut hcm.location);
                }
            }
            Host::Istio { spec } => relocate(&mut spec.location),
        }
        self
    }
}

fn field(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn is_keygate(plugin: &Value) -> bool {
    let named = |v: &Value| v.as_str().is_some_and(|s| s.contains("keygate"));
    named(&plugin["name"])
        || named(&plugin["root_id"])
        || named(&plugin["vm_config"]["vm_id"])
        || named(&plugin["vm_config"]["code"]["local"]["filename"])
        || named(&plugin["vm_config"]["code"]["remote"]["http_uri"]["uri"])
}

fn type_of(v: &Value) -> Option<&str> {
    v.get("@type").and_then(Value::as_str)
}

/// A keygate Wasm filter's typed_config at `path`.
fn envoy_filter(v: &Value, path: &str, hcm: Option<&Located>) -> Found {
    let source = v["config"]["configuration"]["value"].as_str();
    let config = match source {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| {
                format!(
                    "$: not valid JSON (line {} column {} of the value): {}",
                    e.line(),
                    e.column(),
                    json_problem(&e)
                )
            })
            .and_then(|v| {
                filter_reads(s).map(|()| v).map_err(|e| {
                    format!(
                        "$: not valid JSON (line {} column {} of the value): {}",
                        e.line, e.column, e.message
                    )
                })
            }),
        None => Err("$: no google.protobuf.StringValue configuration".into()),
    };
    Found {
        source: source.map(str::to_string),
        location: field(path, "config.configuration.value"),
        config,
        host: Host::Envoy {
            filter: Located {
                location: path.to_string(),
                value: v.clone(),
            },
            hcm: hcm.cloned(),
        },
    }
}

/// An Istio WasmPlugin at `path`.
fn wasm_plugin(v: &Value, path: &str) -> Found {
    let spec = Located {
        location: field(path, "spec"),
        value: v["spec"].clone(),
    };
    Found {
        source: None,
        location: field(&spec.location, "pluginConfig"),
        config: spec
            .value
            .get("pluginConfig")
            .cloned()
            .ok_or_else(|| "$: no spec.pluginConfig".to_string()),
        host: Host::Istio { spec },
    }
}

/// Walks a YAML/JSON document for keygate Wasm filters (Envoy) and WasmPlugins (Istio),
/// noting the HttpConnectionManager each filter is in.
fn find_configs(v: &Value, path: &str, hcm: Option<&Located>, out: &mut Vec<Found>) {
    match v {
        Value::Object(map) => {
            if type_of(v) == Some(WASM_FILTER) && is_keygate(&v["config"]) {
                out.push(envoy_filter(v, path, hcm));
            } else if v["kind"].as_str() == Some("WasmPlugin") {
                out.push(wasm_plugin(v, path));
            } else {
                let here = (type_of(v) == Some(HTTP_CONNECTION_MANAGER)).then(|| Located {
                    location: path.to_string(),
                    value: v.clone(),
                });
                for (k, child) in map {
                    find_configs(child, &field(path, k), here.as_ref().or(hcm), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_configs(child, &format!("{path}[{i}]"), hcm, out);
            }
        }
        _ => {}
    }
}

/// A JSON syntax error without its position.
fn json_problem(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    message.strip_suffix(&at).unwrap_or(&message).to_string()
}

/// The filter parses configuration text with its own reader, which refuses what serde_json
/// lets through (an object with the same field twice): `check` must refuse it too.
fn filter_reads(text: &str) -> Result<(), keygate::json::SyntaxError> {
    keygate::json::parse(text.as_bytes()).map(drop)
}

/// `line L column C: <problem>` for a JSON syntax error.
fn json_syntax_error(e: &serde_json::Error) -> String {
    format!(
        "line {} column {}: {}",
        e.line(),
        e.column(),
        json_problem(e)
    )
}

/// `line L column C: <problem>` for a YAML error (without the position when it has none).
fn yaml_error(e: &serde_yaml::Error) -> String {
    let message = e.to_string();
    match e.location() {
        Some(l) => {
            let at = format!(" at line {} column {}", l.line(), l.column());
            let problem = message.replacen(&at, "", 1);
            format!("line {} column {}: {problem}", l.line(), l.column())
        }
        None => message,
    }
}

/// A file named `.json`, or whose text starts with `{`, is JSON and nothing else (YAML, a
/// superset of JSON, would accept a trailing comma or an unquoted key as something else).
fn is_json(file: &str, text: &str) -> bool {
    file.ends_with(".json") || text.trim_start().starts_with('{')
}

/// The plugin configurations in a file: itself if it is one, else every one found inside.
/// A syntax error is `line L column C: <problem>`.
pub fn configs_in(file: &str, text: &str) -> Result<Vec<Found>, String> {
    if is_json(file, text) {
        let v = serde_json::from_str::<Value>(text).map_err(|e| json_syntax_error(&e))?;
        let mut found = Vec::new();
        find_configs(&v, "", None, &mut found);
        if found.is_empty() && v.get("static_resources").is_none() && v.get("kind").is_none() {
            filter_reads(text)
                .map_err(|e| format!("line {} column {}: {}", e.line, e.column, e.message))?;
            found.push(Found {
                location: String::new(),
                config: Ok(v),
                host: Host::Plain,
                source: Some(text.to_string()),
            });
        }
        return Ok(found);
    }
    let mut found = Vec::new();
    for (n, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| yaml_error(&e))?;
        let mut inner = Vec::new();
        find_configs(&v, "", None, &mut inner);
        let prefix = if n == 0 {
            String::new()
        } else {
            format!("(document {}) ", n + 1)
        };
        found.extend(inner.into_iter().map(|f| f.prefixed(&prefix)));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax_error(file: &str, text: &str) -> String {
        configs_in(file, text).map(|f| f.len()).unwrap_err()
    }

    #[test]
    fn json_is_parsed_as_json_only_and_its_errors_have_line_and_column() {
        let trailing_comma = "{\n  \"keys\": [],\n}\n";
        let unquoted_key = "{\n  \"keys\": [],\n  verify_path: \"/v\"\n}\n";
        for file in ["plugin.json", "plugin.yaml", "plugin"] {
            assert_eq!(
                syntax_error(file, trailing_comma),
                "line 3 column 1: trailing comma"
            );
            assert_eq!(
                syntax_error(file, unquoted_key),
                "line 3 column 3: key must be a string"
            );
        }
        // A .json file is JSON even when it does not start with `{`.
        assert_eq!(
            syntax_error("plugin.json", "keys: []\n"),
            "line 1 column 1: expected value"
        );
        // A field given twice: serde_json would keep the last, the filter refuses the text.
        assert_eq!(
            syntax_error("plugin.json", "{\"keys\": [],\n \"keys\": []}\n"),
            "line 2 column 9: an object has the same field twice"
        );
    }

    #[test]
    fn yaml_errors_have_line_and_column() {
        assert_eq!(
            syntax_error("envoy.yaml", "admin:\n  address: [1\nstatic_resources: {}\n"),
            "line 3 column 17: did not find expected ',' or ']', while parsing a flow sequence at line 2 column 12"
        );
        // In a later document, the line is the file's.
        assert_eq!(
            syntax_error("envoy.yaml", "a: 1\n---\nb: [\n"),
            "line 4 column 1: did not find expected node content, while parsing a flow node"
        );
    }

    #[test]
    fn a_broken_envoy_string_value_names_its_line_and_column() {
        let envoy = serde_json::json!({"static_resources": {"listeners": [{"filter": {
            "@type": WASM_FILTER,
            "config": {"name": "keygate", "configuration": {"value": "{\n \"keys\": [],\n}"}}
        }}]}});
        let found = configs_in("envoy.yaml", &envoy.to_string()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].config.as_ref().unwrap_err(),
            "$: not valid JSON (line 3 column 1 of the value): trailing comma"
        );
        let envoy = serde_json::json!({"static_resources": {"listeners": [{"filter": {
            "@type": WASM_FILTER,
            "config": {"name": "keygate", "configuration": {"value": "{\"keys\": [], \"keys\": []}"}}
        }}]}});
        let found = configs_in("envoy.yaml", &envoy.to_string()).unwrap();
        assert_eq!(
            found[0].config.as_ref().unwrap_err(),
            "$: not valid JSON (line 1 column 21 of the value): an object has the same field twice"
        );
    }
}

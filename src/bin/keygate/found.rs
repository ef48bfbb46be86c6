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

/// A plugin configuration found in a file: where it is, its JSON, and what holds it.
#[derive(Debug)]
pub struct Found {
    pub location: String,
    pub config: Result<Value, String>,
    pub host: Host,
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
    let config = match v["config"]["configuration"].get("value") {
        Some(Value::String(s)) => {
            serde_json::from_str(s).map_err(|e| format!("$: not valid JSON: {e}"))
        }
        _ => Err("$: no google.protobuf.StringValue configuration".into()),
    };
    Found {
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

/// The plugin configurations in a file: itself if it is one, else every one found inside.
pub fn configs_in(file: &str, text: &str) -> Result<Vec<Found>, String> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let mut found = Vec::new();
        find_configs(&v, "", None, &mut found);
        if found.is_empty() && v.get("static_resources").is_none() && v.get("kind").is_none() {
            found.push(Found {
                location: String::new(),
                config: Ok(v),
                host: Host::Plain,
            });
        }
        return Ok(found);
    }
    let mut found = Vec::new();
    for (n, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| format!("{file}: not valid JSON or YAML: {e}"))?;
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

//! A minimal proxy-wasm HTTP filter: reads `x-api-key` and lets the request continue.
//! `make bench` measures it as the floor any Wasm filter pays in Envoy's V8 runtime.
//!
//! With a plugin configuration `"<call> <n>"` it also makes `n` host calls of one kind per
//! request: `make bench` divides the extra CPU by `n` to price each kind of call (the
//! per-host-call cost table in docs/performance.md). The calls' outputs are chosen so the response stays the
//! same (headers nobody reads, a filter-state name nobody logs, a metric nobody reads).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::time::SystemTime;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// The kinds of host call a configuration can ask for.
#[derive(Clone, Copy, PartialEq)]
enum Call {
    /// `proxy_get_header_map_value` (one request header).
    Header,
    /// `proxy_get_header_map_pairs` (every request header).
    HeaderPairs,
    /// `proxy_replace_header_map_value` (a request header set).
    SetHeader,
    /// `proxy_remove_header_map_value` (a request header that is not there).
    RemoveHeader,
    /// `proxy_add_header_map_value` (a request header added).
    AddHeader,
    /// `proxy_set_header_map_pairs`: the request's headers, read once, written back `n` times.
    SetHeaderPairs,
    /// `proxy_set_property` (filter state).
    SetProperty,
    /// `proxy_get_property` (`xds.route_name`).
    GetProperty,
    /// `proxy_increment_metric`.
    IncrementMetric,
    /// `proxy_get_current_time_nanoseconds`.
    Clock,
    /// `proxy_get_shared_data`.
    GetSharedData,
    /// `proxy_set_shared_data` with compare-and-swap (read once, then `n` writes).
    SetSharedData,
}

fn parse(config: &[u8]) -> Option<(Call, u32)> {
    let text = std::str::from_utf8(config).ok()?;
    let (name, n) = text.trim().split_once(' ')?;
    let call = match name {
        "header" => Call::Header,
        "header_pairs" => Call::HeaderPairs,
        "set_header" => Call::SetHeader,
        "remove_header" => Call::RemoveHeader,
        "add_header" => Call::AddHeader,
        "set_header_pairs" => Call::SetHeaderPairs,
        "set_property" => Call::SetProperty,
        "get_property" => Call::GetProperty,
        "increment_metric" => Call::IncrementMetric,
        "clock" => Call::Clock,
        "get_shared_data" => Call::GetSharedData,
        "set_shared_data" => Call::SetSharedData,
        _ => return None,
    };
    Some((call, n.parse().ok()?))
}

#[derive(Default)]
struct Root {
    calls: Option<(Call, u32)>,
    metric: u32,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        if size == 0 {
            return true;
        }
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.calls = parse(&config);
        if let Some((Call::IncrementMetric, _)) = self.calls {
            self.metric = hostcalls::define_metric(MetricType::Counter, "bench.calls").unwrap_or(0);
        }
        if let Some((Call::GetSharedData | Call::SetSharedData, _)) = self.calls {
            let _ = hostcalls::set_shared_data("bench.shared", Some(b"0123456789abcdef"), None);
        }
        self.calls.is_some()
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            calls: self.calls,
            metric: self.metric,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    calls: Option<(Call, u32)>,
    metric: u32,
}

impl Context for Filter {}
impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let _key = self.get_http_request_header("x-api-key");
        if let Some((call, n)) = self.calls {
            self.make(call, n);
        }
        Action::Continue
    }
}

impl Filter {
    fn make(&self, call: Call, n: u32) {
        let req = MapType::HttpRequestHeaders;
        let pairs = match call {
            Call::SetHeaderPairs => hostcalls::get_map(req).unwrap_or_default(),
            _ => vec![],
        };
        let cas = match call {
            Call::SetSharedData => hostcalls::get_shared_data("bench.shared")
                .ok()
                .and_then(|(_, cas)| cas),
            _ => None,
        };
        let mut cas = cas;
        for _ in 0..n {
            match call {
                Call::Header => {
                    let _ = hostcalls::get_map_value(req, "x-bench-absent");
                }
                Call::HeaderPairs => {
                    let _ = hostcalls::get_map(req);
                }
                Call::SetHeader => {
                    let _ = hostcalls::set_map_value(req, "x-bench", Some("1"));
                }
                Call::RemoveHeader => {
                    let _ = hostcalls::set_map_value(req, "x-bench-absent", None);
                }
                Call::AddHeader => {
                    let _ = hostcalls::add_map_value(req, "x-bench", "1");
                }
                Call::SetHeaderPairs => {
                    let p: Vec<(&str, &str)> =
                        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let _ = hostcalls::set_map(req, p);
                }
                Call::SetProperty => {
                    let _ = hostcalls::set_property(vec!["bench.state"], Some(b"value"));
                }
                Call::GetProperty => {
                    let _ = hostcalls::get_property(vec!["xds", "route_name"]);
                }
                Call::IncrementMetric => {
                    let _ = hostcalls::increment_metric(self.metric, 1);
                }
                Call::Clock => {
                    let _: Option<SystemTime> = hostcalls::get_current_time().ok();
                }
                Call::GetSharedData => {
                    let _ = hostcalls::get_shared_data("bench.shared");
                }
                Call::SetSharedData => {
                    // A compare-and-swap that succeeds, as keygate's counter update does.
                    if hostcalls::set_shared_data("bench.shared", Some(b"0123456789abcdef"), cas)
                        .is_ok()
                    {
                        cas = cas.map(|c| c.wrapping_add(1));
                    }
                }
            }
        }
    }
}

//! What both benches measure with: Envoy CPU time per request over keep-alive connections,
//! interleaved rounds, medians.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;

use super::common::Envoy;

pub const ROUNDS: usize = 5;
pub const REQUESTS: usize = 40_000;
pub const CONNECTIONS: usize = 4;

pub fn ticks_per_sec() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok();
    out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `n` GETs over one keep-alive connection; returns how many got `want`.
pub fn keep_alive_burst(port: u16, n: usize, headers: &[(String, String)], want: u16) -> usize {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).ok();
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    let mut req = String::from("GET /v1/items HTTP/1.1\r\nhost: bench\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut ok = 0;
    for _ in 0..n {
        w.write_all(req.as_bytes()).expect("write");
        let mut status = 0;
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return ok;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if l.starts_with("HTTP/1.1 ") {
                status = l[9..12].parse().unwrap_or(0);
            } else if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).expect("body");
        if status == want {
            ok += 1;
        }
    }
    ok
}

pub struct Variant {
    pub name: &'static str,
    pub envoy: Envoy,
    pub headers: Vec<(String, String)>,
    pub want: u16,
    pub samples: Vec<f64>,
}

impl Variant {
    pub fn measure(&mut self, tck: f64) {
        self.measure_n(tck, REQUESTS);
    }

    /// One round of `requests` over [`CONNECTIONS`] keep-alive connections.
    pub fn measure_n(&mut self, tck: f64, requests: usize) {
        let pid = self.envoy.pid();
        keep_alive_burst(self.envoy.port, 50, &self.headers, self.want); // warm
        let before = cpu_ticks(pid);
        let per = requests / CONNECTIONS;
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (port, h, want) = (self.envoy.port, self.headers.clone(), self.want);
                thread::spawn(move || keep_alive_burst(port, per, &h, want))
            })
            .collect();
        let ok: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(ok, per * CONNECTIONS, "{}: unexpected statuses", self.name);
        let ticks = cpu_ticks(pid) - before;
        self.samples
            .push(ticks as f64 / tck * 1e6 / (per * CONNECTIONS) as f64);
    }

    pub fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

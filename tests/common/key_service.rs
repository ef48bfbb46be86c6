//! A real HTTP/1.1 key service on loopback (SPEC §4 answers), whose answer a test changes.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

/// What the key service answers, and what it saw.
pub struct KsState {
    pub status: u16,
    pub body: String,
    pub fetches: Vec<Instant>,
    /// Answers 304 to a matching If-None-Match.
    pub etags: bool,
    pub not_modified: usize,
    /// Bodies for specific paths (else `body`), and the paths asked for.
    pub by_path: Vec<(String, String)>,
    pub paths: Vec<(Instant, String)>,
}

/// A real HTTP/1.1 key service on loopback whose answer the test changes.
pub struct KeyService {
    pub port: u16,
    pub state: Arc<Mutex<KsState>>,
}

impl KeyService {
    pub fn start(status: u16, body: &str) -> KeyService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(KsState {
            status,
            body: body.to_string(),
            fetches: vec![],
            etags: true,
            not_modified: 0,
            by_path: vec![],
            paths: vec![],
        }));
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                thread::spawn(move || serve(conn, &st));
            }
        });
        KeyService { port, state }
    }

    pub fn answer(&self, status: u16, body: &str) {
        let mut s = self.state.lock().unwrap();
        s.status = status;
        s.body = body.to_string();
    }

    pub fn fetches(&self) -> usize {
        self.state.lock().unwrap().fetches.len()
    }

    pub fn fetches_since(&self, t: Instant) -> usize {
        self.state
            .lock()
            .unwrap()
            .fetches
            .iter()
            .filter(|f| **f >= t)
            .count()
    }
}

fn serve(conn: TcpStream, st: &Mutex<KsState>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0;
        let mut if_none_match: Option<String> = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if let Some(v) = h
                .split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("if-none-match"))
            {
                if_none_match = Some(v.1.trim().to_string());
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or_default().to_string();
        let (status, body) = {
            let mut s = st.lock().unwrap();
            s.fetches.push(Instant::now());
            s.paths.push((Instant::now(), path.clone()));
            if let Some((_, b)) = s.by_path.iter().find(|(p, _)| *p == path) {
                s.body = b.clone();
            }
            let version = serde_json::from_str::<Value>(&s.body)
                .ok()
                .and_then(|v| v["version"].as_str().map(|v| format!("\"{v}\"")));
            if s.etags && s.status == 200 && if_none_match.is_some() && if_none_match == version {
                s.not_modified += 1;
                (304, String::new())
            } else {
                (s.status, s.body.clone())
            }
        };
        let resp = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

pub fn key_set(version: &str, keys: Value) -> String {
    json!({"version": version, "keys": keys}).to_string()
}

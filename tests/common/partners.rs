//! A partner's side of leak reports (SPEC §15): a real HTTP/1.1 server on loopback (the key
//! list GitHub or GitLab publishes, or a webhook receiver) and a P-256 signing key a test makes,
//! signing reports as GitHub and GitLab sign them.
#![allow(dead_code)]

use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One request a [`Http`] server received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a [`Http`] server answers: status, body, and a delay before answering.
pub type Answer = Box<dyn Fn(&Received, usize) -> (u16, String, Duration) + Send>;

/// A real HTTP/1.1 server on loopback (the partner's key list, or a webhook receiver): records
/// what it receives and answers as the test says.
pub struct Http {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
}

impl Http {
    pub fn start(answer: Answer) -> Http {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::on(listener, answer)
    }

    pub fn on(listener: TcpListener, answer: Answer) -> Http {
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let (r, a) = (received.clone(), answer.clone());
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (r, a) = (r.clone(), a.clone());
                thread::spawn(move || serve(conn, &r, &a));
            }
        });
        Http {
            port,
            received,
            answer,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, received: &Mutex<Vec<Received>>, answer: &Mutex<Answer>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        let mut len = 0;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let r = Received {
            path: line.split(' ').nth(1).unwrap_or_default().to_string(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let n = {
            let mut all = received.lock().unwrap();
            all.push(r.clone());
            all.len()
        };
        let (status, body, delay) = (answer.lock().unwrap())(&r, n);
        thread::sleep(delay);
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A partner's signing key: its identifier and the key list entry that publishes it.
pub struct Partner {
    pub id: String,
    pub key: SigningKey,
}

impl Partner {
    pub fn new(seed: u8) -> Partner {
        let mut bytes = [seed; 32];
        bytes[0] = 1;
        let key = SigningKey::from_slice(&bytes).unwrap();
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        Partner {
            id: hex(&Sha256::digest(pem.as_bytes())),
            key,
        }
    }

    pub fn entry(&self) -> Value {
        let pem = self
            .key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        json!({"key_identifier": self.id, "key": pem, "is_current": true})
    }

    pub fn sign(&self, body: &[u8]) -> String {
        let sig: Signature = self.key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn key_list(partners: &[&Partner]) -> String {
    json!({"public_keys": partners.iter().map(|p| p.entry()).collect::<Vec<_>>()}).to_string()
}

/// Serves `list` as the key list.
pub fn keys_answer(list: String) -> Answer {
    Box::new(move |_, _| (200, list.clone(), Duration::ZERO))
}

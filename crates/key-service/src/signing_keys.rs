//! The public keys leak reports are signed with (SPEC §15): fetched from the partner's list
//! (`--github-keys-url`, `--gitlab-keys-url`), kept, and fetched again only for an identifier
//! the kept list lacks, at most once per [`REFETCH_AFTER`] (a flood of made-up identifiers
//! costs one fetch, not one per report), one fetch at a time, each within [`FETCH_TIMEOUT`].
//! Nothing is fetched before the first report: a service that never gets one never calls out.

use crate::leaks::{read_public_keys, PublicKey};
use p256::ecdsa::VerifyingKey;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a fetch may take, answer included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest time between two fetches of a list, by default (`--leak-keys-refetch-seconds`):
/// GitHub allows 60 unauthenticated calls an hour per address.
pub const REFETCH_AFTER: Duration = Duration::from_secs(60);
/// The largest key list read (GitHub's is a few KB).
const LIST_LIMIT: u64 = 256 * 1024;
/// The most keys kept from a list.
const KEYS_KEPT: usize = 32;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(VerifyingKey),
    /// The list (fetched again if it may be) has no such key.
    Unknown,
    /// The list could not be fetched, and the key is not among those kept.
    Unavailable,
}

/// One partner's keys.
pub struct KeySource {
    url: String,
    keys: Arc<RwLock<Arc<Vec<PublicKey>>>>,
    /// When the list was last fetched (or tried), and whether that worked: one fetch at a time.
    fetching: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// The shortest time between two fetches.
    refetch_after: Duration,
}

/// What happened to the last fetch (for metrics and logs).
pub type Fetched = Result<usize, String>;

impl KeySource {
    pub fn new(url: String, refetch_after: Duration) -> KeySource {
        KeySource {
            url,
            keys: Arc::new(RwLock::new(Arc::new(Vec::new()))),
            fetching: tokio::sync::Mutex::new(None),
            refetch_after,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn kept(&self, identifier: &str) -> Option<VerifyingKey> {
        let keys = self.keys.read().map(|k| k.clone()).ok()?;
        keys.iter()
            .find(|k| k.identifier == identifier)
            .map(|k| k.key)
    }

    /// The key named `identifier`; `on_fetch` is told of each fetch made.
    pub async fn lookup(
        &self,
        identifier: &str,
        on_fetch: impl FnOnce(&Fetched) + Send + 'static,
    ) -> Lookup {
        if let Some(k) = self.kept(identifier) {
            return Lookup::Found(k);
        }
        let mut last = self.fetching.lock().await;
        // Another report may have fetched while this one waited.
        if let Some(k) = self.kept(identifier) {
            return Lookup::Found(k);
        }
        if let Some((at, worked)) = *last {
            if at.elapsed() < self.refetch_after {
                return if worked {
                    Lookup::Unknown
                } else {
                    Lookup::Unavailable
                };
            }
        }
        // Counted before the fetch starts: a report abandoned mid-fetch (its client gone) still
        // leaves the next fetch `refetch_after` away.
        *last = Some((Instant::now(), false));
        // The fetch and the list's update run on their own: an abandoned report does not
        // abandon them.
        let (url, keys) = (self.url.clone(), self.keys.clone());
        let fetching = tokio::spawn(async move {
            let shown = url.clone();
            let fetched = tokio::task::spawn_blocking(move || fetch(&url))
                .await
                .unwrap_or_else(|e| Err(format!("the fetch failed: {e}")));
            on_fetch(&fetched.as_ref().map(Vec::len).map_err(Clone::clone));
            match fetched {
                Ok(mut list) => {
                    list.truncate(KEYS_KEPT);
                    if let Ok(mut kept) = keys.write() {
                        *kept = Arc::new(list);
                    }
                    true
                }
                Err(e) => {
                    eprintln!(
                        "keygate serve: cannot fetch the leak reports' keys from {shown}: {e}"
                    );
                    false
                }
            }
        });
        let worked = fetching.await.unwrap_or(false);
        *last = Some((Instant::now(), worked));
        match (worked, self.kept(identifier)) {
            (_, Some(k)) => Lookup::Found(k),
            (true, None) => Lookup::Unknown,
            (false, None) => Lookup::Unavailable,
        }
    }
}

/// Fetches and reads a key list (blocking: run off the async threads).
fn fetch(url: &str) -> Result<Vec<PublicKey>, String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(FETCH_TIMEOUT))
            .build(),
    );
    let mut answer = agent
        .get(url)
        .header("accept", "application/json")
        .header("user-agent", "keygate-serve")
        .call()
        .map_err(|e| e.to_string())?;
    if answer.status() != 200 {
        return Err(format!("answered {}", answer.status()));
    }
    let body = answer
        .body_mut()
        .with_config()
        .limit(LIST_LIMIT)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    read_public_keys(&body)
}

//! `key_sync` (SPEC §4): one VM per Envoy process fetches the key set; every VM reads it from
//! shared data. The logic (parsing, layout, lease) is in [`crate::keyset`]; this moves bytes.

use super::abi;
use super::host::{call_response_body, call_response_status, unix_now, SharedData};
use super::stats::Stats;
use crate::decide::Lookup;
use crate::json::Source;
use crate::json_reader::q;
use crate::keys::Digest;
use crate::keyset::{
    config_fingerprint, decode_record, find_in_shard, parse_binary_set, parse_key_set,
    records_in_blob, shard_key, shard_of, DecodeError, Delta, Fetched, Lease, Meta, ParsedSet,
    BINARY_MEDIA_TYPE, CONFIG_KEY, LEASE_KEY, META_KEY, VM_SEQ_KEY,
};
use crate::model::{Gate, KeySync};
use crate::ratelimit::{ensure_entry, CasStore};
use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use std::borrow::Cow;
use std::cell::RefCell;
use std::time::Duration;

/// The answers keygate reads: the compact form first, JSON otherwise.
const ACCEPT: &str = "application/vnd.keygate.keyset.v1, application/json;q=0.9";

/// The answer is the compact form (its `content-type`, parameters and case aside).
fn call_response_is_binary() -> bool {
    abi::header(MapType::HttpCallResponseHeaders, "content-type").is_some_and(|v| {
        let t = v.split(|b| *b == b';').next().unwrap_or_default();
        t.trim_ascii()
            .eq_ignore_ascii_case(BINARY_MEDIA_TYPE.as_bytes())
    })
}

/// How often every VM re-reads the published meta (new sets are seen within this) and the
/// fetching VM checks whether an interval has passed.
pub const TICK_MS: u32 = 500;
/// Extra lease time taken right before writing a set, so no other VM can start publishing.
const WRITE_BUDGET_S: u64 = 30;

/// The published set as this VM last read it.
#[derive(Debug, Default, Clone, Copy)]
pub struct View {
    pub gen: u64,
    pub slot: u8,
    pub bits: u8,
}

/// The published meta and its CAS token. One this build cannot read counts as "nothing
/// published": readers answer 503 until this build's fetcher publishes over it.
fn read_meta() -> Option<(Meta, u32)> {
    match SharedData.get(META_KEY) {
        Ok(Some((b, cas))) => Some((Meta::decode(&b).unwrap_or_default(), cas)),
        _ => None,
    }
}

pub fn refresh_view(view: &RefCell<View>) -> View {
    if let Some((m, _)) = read_meta() {
        *view.borrow_mut() = View {
            gen: m.gen,
            slot: m.slot,
            bits: m.bits,
        };
    }
    *view.borrow()
}

/// The synced record for `digest`, as of the published set (or `Unavailable`).
pub fn lookup<'g>(gate: &Gate, view: &RefCell<View>, digest: &Digest) -> Lookup<'g> {
    if gate.key_sync.is_none() {
        return Lookup::NotFound;
    }
    let mut v = *view.borrow();
    for attempt in 0..3 {
        if v.gen == 0 || attempt > 0 {
            v = refresh_view(view);
            if v.gen == 0 {
                return Lookup::Unavailable;
            }
        }
        let blob = match SharedData.get(&shard_key(v.slot, shard_of(digest, v.bits))) {
            Ok(Some((b, _))) => b,
            Ok(None) => continue,
            Err(_) => return Lookup::Unavailable,
        };
        match find_in_shard(&blob, v.gen, digest) {
            Ok(None) => return Lookup::NotFound,
            Ok(Some(rec)) => {
                return match decode_record(rec, &gate.roles) {
                    Ok(r) => Lookup::Found(Cow::Owned(r)),
                    Err(e) => {
                        error!("synced key record unusable, request rejected: {e}");
                        Lookup::Unavailable
                    }
                }
            }
            // Another generation (or a cleared blob): this VM's view is stale; re-read.
            Err(DecodeError::BadValue | DecodeError::Truncated) => continue,
            Err(DecodeError::UnknownRole) => return Lookup::Unavailable,
        }
    }
    Lookup::Unavailable
}

/// The fetching side, one per VM; only the lease holder fetches.
pub struct Syncer {
    cfg: KeySync,
    me: u64,
    /// Fingerprint of this VM's plugin configuration.
    config: u64,
    /// Whether this VM has announced its configuration as the one the process runs.
    announced: bool,
    /// The call in flight: its token and when it was made.
    pending: Option<(u32, u64)>,
    /// Ask for a full set next time (a delta did not fit the published version).
    full_next: bool,
}

/// The response body of the key service, read from Envoy in chunks (never copied whole).
struct CallBody {
    pos: usize,
    size: usize,
}

impl Source for CallBody {
    fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        let want = buf
            .len()
            .min(self.size.saturating_sub(self.pos))
            .min(256 * 1024);
        if want == 0 {
            return Some(0);
        }
        let chunk = call_response_body(self.pos, want)?;
        let n = chunk.len().min(want);
        buf.get_mut(..n)?.copy_from_slice(chunk.get(..n)?);
        self.pos += n;
        Some(n)
    }
}

impl Syncer {
    /// Prepares shared data (configuration time, main thread first: see
    /// [`crate::ratelimit::ensure_entry`]) and gives this VM its fetcher id.
    pub fn new(
        cfg: KeySync,
        config_bytes: &[u8],
        previous_id: Option<u64>,
    ) -> Result<Syncer, String> {
        let mut sd = SharedData;
        for (key, initial) in [
            (META_KEY, Meta::default().encode()),
            (LEASE_KEY, Lease::default().encode().to_vec()),
            (VM_SEQ_KEY, 0u64.to_le_bytes().to_vec()),
        ] {
            ensure_entry(&mut sd, key, &initial).map_err(|e| e.to_string())?;
        }
        let me = match previous_id {
            Some(id) => id,
            None => super::host::allocate_vm_id().ok_or("could not allocate a fetcher id")?,
        };
        Ok(Syncer {
            cfg,
            me,
            config: config_fingerprint(config_bytes),
            announced: false,
            pending: None,
            full_next: false,
        })
    }

    pub fn id(&self) -> u64 {
        self.me
    }

    /// Every tick: fetch if this VM holds (or may take) the lease and an interval has passed.
    pub fn tick(&mut self, stats: &RefCell<Stats>) {
        let now = unix_now();
        // Envoy answers every call (with nothing on timeout); a call it never answered is
        // dropped after its timeout plus a margin, so fetching can never stop for good.
        let give_up = self.cfg.timeout_ms.div_ceil(1000) + 5;
        match self.pending {
            Some((_, started)) if now < started.saturating_add(give_up) => return,
            Some(_) => self.pending = None,
            None => {}
        }
        // A VM that runs (ticks) announces its configuration as the process's current one, so
        // that VMs of a replaced configuration, still draining, stop fetching.
        if !self.announced {
            self.announced = SharedData
                .set(CONFIG_KEY, &self.config.to_le_bytes(), 0)
                .is_ok();
        }
        let Some(current) = current_config() else {
            return;
        };
        let Ok(Some((raw, cas))) = SharedData.get(LEASE_KEY) else {
            return;
        };
        // An unreadable lease (another build's layout) counts as free.
        let lease = Lease::decode(&raw).unwrap_or_default();
        #[cfg(feature = "fault-injection")]
        super::faults::on_fetcher_tick(self.me, lease.owner);
        let timeout_s = self.cfg.timeout_ms.div_ceil(1000);
        let Some(next) = lease.claim(
            self.me,
            self.config,
            current,
            now,
            self.cfg.interval_seconds,
            timeout_s,
        ) else {
            return;
        };
        if !matches!(SharedData.set(LEASE_KEY, &next.encode(), cas), Ok(true)) {
            return; // another VM claimed it first
        }
        // With a set published, ask for it only if it changed: a key service that supports
        // If-None-Match answers 304 and sends no body (others send the set; same version is
        // then recognised without parsing the keys).
        let published = read_meta().filter(|(m, _)| m.gen != 0).map(|(m, _)| m);
        let etag = published.as_ref().map(|m| format!("\"{}\"", m.version));
        // Holding a set this configuration fetched, ask for the changes since its version
        // (SPEC §4 delta answers); a key service that cannot answers with a full set.
        let path = match &published {
            Some(m) if m.config == self.config && !self.full_next => {
                since_path(&self.cfg.path, &m.version)
            }
            _ => self.cfg.path.clone(),
        };
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.cfg.authority.as_str()),
            // keygate's own key service answers a full set in its compact form; JSON is what
            // any other key service sends (SPEC §4).
            ("accept", ACCEPT),
        ];
        if let Some(tag) = etag.as_deref() {
            headers.push(("if-none-match", tag));
        }
        let auth = self.cfg.token.as_ref().map(|t| format!("Bearer {t}"));
        if let Some(a) = auth.as_deref() {
            headers.push(("authorization", a));
        }
        stats.borrow_mut().event("sync_fetches");
        // The SDK's call, not the raw ABI: only it registers the token with the SDK's
        // dispatcher, which routes the answer back here. It panics only on statuses Envoy's
        // httpCall never returns (Envoy answers Ok, BadArgument or InternalFailure).
        match hostcalls::dispatch_http_call(
            &self.cfg.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(self.cfg.timeout_ms),
        ) {
            Ok(token) => self.pending = Some((token, now)),
            Err(e) => {
                stats.borrow_mut().event("sync_failures");
                error!(
                    "key sync: cannot call cluster {}: status {}; keeping the last good key set",
                    q(&self.cfg.cluster),
                    e as u32
                );
            }
        }
    }

    /// The key service answered (or the call failed: no headers).
    pub fn on_response(
        &mut self,
        token: u32,
        body_size: usize,
        gate: &Gate,
        view: &RefCell<View>,
        stats: &RefCell<Stats>,
    ) {
        if self.pending.map(|(t, _)| t) != Some(token) {
            return;
        }
        self.pending = None;
        let status = call_response_status();
        if status.as_deref() == Some(b"304") {
            // Answer to our If-None-Match: the published version is current.
            return stats.borrow_mut().event("sync_unchanged");
        }
        if status.as_deref() != Some(b"200") {
            stats.borrow_mut().event("sync_failures");
            let status = status
                .map(|s| String::from_utf8(s).unwrap_or_else(|_| "(not UTF-8)".into()))
                .unwrap_or_else(|| {
                    "no answer (timeout, connection failure, or a body over Envoy's runtime \
                     http.async_response_buffer_limit, 32 MiB by default)"
                        .into()
                });
            warn!("key sync: key service answered {status}; keeping the last good key set");
            return;
        }
        let Some((meta, _)) = read_meta() else {
            stats.borrow_mut().event("sync_failures");
            return error!("key sync: shared data unavailable; keeping the last good key set");
        };
        let current = (meta.gen != 0).then_some(meta.version.as_str());
        let started = abi::now_ns().unwrap_or(0);
        let mut body = CallBody {
            pos: 0,
            size: body_size,
        };
        let binary = call_response_is_binary();
        let parsed = if binary {
            parse_binary_set(&mut body, body_size, gate, current)
        } else {
            parse_key_set(&mut body, body_size, gate, current)
        };
        let form = if binary { "compact" } else { "JSON" };
        match parsed {
            Ok(Fetched::Unchanged) => stats.borrow_mut().event("sync_unchanged"),
            Ok(Fetched::Delta(delta)) => match apply_delta(delta, &meta) {
                Ok(set) => self.publish_and_report(&set, (started, "delta"), view, stats),
                Err(e) => {
                    self.full_next = true;
                    stats.borrow_mut().event("sync_failures");
                    warn!("key sync: delta not applied: {e}; asking for the full set next");
                }
            },
            Ok(Fetched::Set(set)) => self.publish_and_report(&set, (started, form), view, stats),
            Err(errors) => {
                stats.borrow_mut().event("sync_failures");
                for e in &errors {
                    error!("key sync: answer rejected: {e}");
                }
                error!("key sync: keeping the last good key set");
            }
        }
    }

    /// Publishes a new set (full or delta-applied) and tells the view, stats and log.
    /// `started`: when the answer's parse began (ns), and the answer's form, for the log.
    fn publish_and_report(
        &mut self,
        set: &ParsedSet,
        (started, form): (u64, &str),
        view: &RefCell<View>,
        stats: &RefCell<Stats>,
    ) {
        let parsed = abi::now_ns().unwrap_or(0);
        let published = self.publish(set);
        let written = abi::now_ns().unwrap_or(0);
        match published {
            Ok(m) => {
                self.full_next = false;
                *view.borrow_mut() = View {
                    gen: m.gen,
                    slot: m.slot,
                    bits: m.bits,
                };
                let mut s = stats.borrow_mut();
                s.event("sync_updates");
                s.gauge("sync_keys", u64::from(m.count));
                // What the set occupies in shared data: per shard a 12-byte header and a
                // 4-byte offset per record, then the records (the other slot is cleared).
                let shards = 1u64 << m.bits;
                let bytes = set.encoded_bytes() as u64 + 12 * shards + 4 * u64::from(m.count);
                s.gauge("sync_shared_bytes", bytes);
                let ms = |from: u64, to: u64| to.saturating_sub(from) / 1_000_000;
                info!(
                    "key sync: published version {}: {} keys, {} bytes in {} shards ({form} answer read in {} ms, written in {} ms)",
                    q(&m.version),
                    m.count,
                    set.encoded_bytes(),
                    shards,
                    ms(started, parsed),
                    ms(parsed, written)
                );
            }
            Err(e) => {
                stats.borrow_mut().event("sync_failures");
                error!("key sync: could not publish: {e}; keeping the last good key set");
            }
        }
    }

    /// Writes `set` into the unpublished slot, flips the meta, then clears the old slot.
    fn publish(&self, set: &ParsedSet) -> Result<Meta, String> {
        let mut sd = SharedData;
        // Renew the lease for the write, so no other VM can be publishing at the same time.
        let (raw, cas) = sd.get(LEASE_KEY).ok().flatten().ok_or("lease missing")?;
        let lease = Lease::decode(&raw).map_err(|e| e.to_string())?;
        let now = unix_now();
        if lease.owner != self.me || lease.expires <= now {
            return Err("the fetch lease expired before the set could be written".into());
        }
        if current_config() != Some(self.config) {
            return Err("the configuration was replaced while the set was fetched".into());
        }
        let renewed = Lease {
            expires: now + WRITE_BUDGET_S,
            ..lease
        };
        if !matches!(sd.set(LEASE_KEY, &renewed.encode(), cas), Ok(true)) {
            return Err("lost the fetch lease".into());
        }
        let (meta, meta_cas) = read_meta().ok_or("meta missing")?;
        let next = meta.next(set, now, self.config);
        set.for_each_shard(next.gen, |shard, blob| {
            match sd.set(&shard_key(next.slot, shard), blob, 0) {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })?;
        if !matches!(sd.set(META_KEY, &next.encode(), meta_cas), Ok(true)) {
            return Err("the published meta changed during the write".into());
        }
        // Readers still on the old generation see a cleared blob as stale and re-read the meta.
        if next.stale_shards > 0 {
            let old = 1 - next.slot;
            for shard in 0..next.stale_shards {
                let _ = sd.set(&shard_key(old, shard), &[], 0);
            }
            if let Some((m, c)) = read_meta() {
                if m.gen == next.gen {
                    let _ = sd.set(
                        META_KEY,
                        &Meta {
                            stale_shards: 0,
                            ..m
                        }
                        .encode(),
                        c,
                    );
                }
            }
        }
        // Hand the lease back with its normal expiry.
        if let Ok(Some((raw, cas))) = sd.get(LEASE_KEY) {
            if let Ok(l) = Lease::decode(&raw) {
                if l.owner == self.me {
                    let timeout_s = self.cfg.timeout_ms.div_ceil(1000);
                    let expires = l.last_fetch + self.cfg.interval_seconds + timeout_s + 2;
                    let _ = sd.set(
                        LEASE_KEY,
                        &Lease {
                            expires: expires.max(unix_now() + 1),
                            ..l
                        }
                        .encode(),
                        cas,
                    );
                }
            }
        }
        Ok(next)
    }
}

/// The fingerprint of the configuration the process runs now.
/// The new set from a delta and the published set it applies to (read shard by shard).
fn apply_delta(delta: Delta, meta: &Meta) -> Result<ParsedSet, String> {
    if meta.gen == 0 || delta.since != meta.version {
        return Err(format!(
            "it applies to version {}, not to the published {}",
            q(&delta.since),
            q(&meta.version)
        ));
    }
    let mut applying = delta.start(meta.count as usize);
    for shard in 0..(1u32 << meta.bits) {
        let blob = match SharedData.get(&shard_key(meta.slot, shard)) {
            Ok(Some((blob, _))) => blob,
            _ => return Err(format!("shard {shard} of the published set is unreadable")),
        };
        let records = records_in_blob(&blob, meta.gen)
            .map_err(|e| format!("shard {shard} of the published set: {e}"))?;
        for rec in records {
            applying.old_record(rec);
        }
    }
    applying.finish().map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// `path` asking for the changes since `version` (`?since=`, or `&since=` after a query).
fn since_path(path: &str, version: &str) -> String {
    let mut out = String::with_capacity(path.len() + version.len() + 8);
    out.push_str(path);
    out.push(if path.contains('?') { '&' } else { '?' });
    out.push_str("since=");
    for b in version.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

fn current_config() -> Option<u64> {
    let (raw, _) = SharedData.get(CONFIG_KEY).ok().flatten()?;
    Some(u64::from_le_bytes(raw.get(..8)?.try_into().ok()?))
}

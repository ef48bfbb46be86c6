//! Exact fixed-window rate limits counted in a compare-and-swap store shared by all workers.
//!
//! Each key has one record in the store, `keygate.rl.<key id>`, with one slot per window length
//! (second, minute, hour, day). A slot is `(window start, count)`; it is reset in place when its
//! window rolls over, so memory is bounded by the number of keys, never by elapsed time. All of a
//! key's limits are checked and counted in one compare-and-swap, so a request that one limit
//! blocks consumes none of the others.

use crate::model::{Limit, Per};
use std::fmt;

/// A compare-and-swap store (Envoy shared data, or an in-memory fake in tests).
pub trait CasStore {
    /// The value and its CAS token, or `None` if the entry does not exist.
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes if the entry's CAS token still equals `cas` (0 = unconditional).
    /// `Ok(false)` is a CAS mismatch.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The host refused the call.
    Host,
    /// The stored record is not one of ours.
    Corrupt,
    /// Every compare-and-swap attempt lost to another worker.
    Contention,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreError::Host => "shared data call failed",
            StoreError::Corrupt => "rate-limit record has an unexpected size",
            StoreError::Contention => "compare-and-swap retries exhausted",
        })
    }
}

/// How many compare-and-swap attempts a request gets before it is rejected (fail closed).
pub const MAX_CAS_ATTEMPTS: u32 = 32;

const SLOTS: usize = 4;
const RECORD_LEN: usize = SLOTS * 16;

/// The store key of a key id's counter record.
pub fn counter_key(key_id: &str) -> String {
    format!("keygate.rl.{key_id}")
}

/// Start of the fixed window (aligned to the Unix epoch) that contains `now`.
pub fn window_start(now: u64, per: Per) -> u64 {
    now - now % per.seconds()
}

/// Unix second at which the window containing `now` ends.
pub fn window_reset(now: u64, per: Per) -> u64 {
    window_start(now, per).saturating_add(per.seconds())
}

/// Whole seconds until `reset`, at least 1.
pub fn seconds_until(reset: u64, now: u64) -> u64 {
    reset.saturating_sub(now).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Slot {
    start: u64,
    count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Record([Slot; SLOTS]);

impl Record {
    fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
        if bytes.len() != RECORD_LEN {
            return Err(StoreError::Corrupt);
        }
        let mut r = Record::default();
        for (slot, chunk) in r.0.iter_mut().zip(bytes.chunks_exact(16)) {
            let (a, b) = chunk.split_at(8);
            slot.start = u64::from_le_bytes(a.try_into().map_err(|_| StoreError::Corrupt)?);
            slot.count = u64::from_le_bytes(b.try_into().map_err(|_| StoreError::Corrupt)?);
        }
        Ok(r)
    }

    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        for (slot, chunk) in self.0.iter().zip(out.chunks_exact_mut(16)) {
            let (a, b) = chunk.split_at_mut(8);
            a.copy_from_slice(&slot.start.to_le_bytes());
            b.copy_from_slice(&slot.count.to_le_bytes());
        }
        out
    }

    /// Requests already counted in the current window of `per`.
    fn used(&self, per: Per, now: u64) -> u64 {
        match self.0.get(per.slot()) {
            Some(s) if s.start == window_start(now, per) => s.count,
            _ => 0,
        }
    }
}

/// The `X-RateLimit-*` values of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit: u64,
    pub remaining: u64,
    /// Unix seconds when the window resets.
    pub reset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    /// Counted; the headers of the limit closest to exhaustion.
    Admitted(RateHeaders),
    /// Not counted: a limit is used up. `retry_after` whole seconds until it resets (≥ 1).
    Blocked {
        headers: RateHeaders,
        retry_after: u64,
    },
}

/// Orders headers by how close their limit is to exhaustion: fewest remaining first; on a
/// tie, the later reset first (the `X-RateLimit-*` a client sees).
pub fn closer(a: &RateHeaders, b: &RateHeaders) -> std::cmp::Ordering {
    a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset))
}

/// The limit closest to exhaustion (fewest remaining; on a tie, the later reset).
fn closest(limits: &[Limit], rec: &Record, now: u64, extra: u64) -> Option<RateHeaders> {
    limits
        .iter()
        .map(|l| RateHeaders {
            limit: l.requests,
            remaining: l
                .requests
                .saturating_sub(rec.used(l.per, now).saturating_add(extra)),
            reset: window_reset(now, l.per),
        })
        .min_by(closer)
}

fn read(store: &mut impl CasStore, key: &str) -> Result<Option<(Record, u32)>, StoreError> {
    match store.get(key)? {
        None => Ok(None),
        Some((bytes, cas)) => Ok(Some((Record::decode(&bytes)?, cas))),
    }
}

/// The entry that serialises counter creation (see [`create_counter`]).
pub const CREATION_LOCK: &str = "keygate.rl.lock";
/// A creation lock older than this (seconds) belongs to a VM that went away: it may be taken.
const LOCK_TTL: u64 = 2;
/// How many times a request tries to take the creation lock before failing closed.
const LOCK_ATTEMPTS: u32 = 256;

/// Creates an entry if it is missing, at a moment when nothing else can be creating it
/// (Envoy's first `on_configure` runs on the main thread before any worker starts).
/// The host accepts any CAS on a missing entry, so creation must never race with counting.
pub fn ensure_entry(
    store: &mut impl CasStore,
    key: &str,
    initial: &[u8],
) -> Result<bool, StoreError> {
    if store.get(key)?.is_some() {
        return Ok(false);
    }
    store.set(key, initial, 0)?;
    Ok(true)
}

/// Makes sure the creation lock exists; call where [`ensure_entry`] is safe.
pub fn ensure_creation_lock(store: &mut impl CasStore) -> Result<bool, StoreError> {
    ensure_entry(store, CREATION_LOCK, &0u64.to_le_bytes())
}

/// Makes sure a key's counter record exists (configuration time, see [`ensure_entry`]).
pub fn ensure_counter(store: &mut impl CasStore, key_id: &str) -> Result<bool, StoreError> {
    ensure_entry(store, &counter_key(key_id), &Record::default().encode())
}

/// Creates a missing counter record on the request path without racing other workers:
/// only the holder of the (pre-created) creation lock may insert, and it inserts only after
/// seeing the record missing while holding the lock. Counting never inserts, so no count can
/// be overwritten by a late creation.
pub fn create_counter(store: &mut impl CasStore, key: &str, now: u64) -> Result<(), StoreError> {
    create_entry(store, key, &Record::default().encode(), now)
}

/// [`create_counter`] for any record (a credit balance's too): inserts `initial` at `key` if
/// it is missing, under the creation lock.
pub fn create_entry(
    store: &mut impl CasStore,
    key: &str,
    initial: &[u8],
    now: u64,
) -> Result<(), StoreError> {
    for _ in 0..LOCK_ATTEMPTS {
        let Some((lock, cas)) = store.get(CREATION_LOCK)? else {
            // Never created: configuration did not run as expected. Fail closed.
            return Err(StoreError::Host);
        };
        let held_until = lock
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or(StoreError::Corrupt)?;
        if held_until > now {
            continue; // another worker is creating; it holds the lock for a few host calls
        }
        if !store.set(CREATION_LOCK, &(now + LOCK_TTL).to_le_bytes(), cas)? {
            continue;
        }
        let created = match store.get(key) {
            Ok(None) => store.set(key, initial, 0).map(|_| ()),
            Ok(Some(_)) => Ok(()),
            Err(e) => Err(e),
        };
        // Release: only if still ours (a stolen stale lock has a different token).
        if let Some((_, cas)) = store.get(CREATION_LOCK)? {
            let _ = store.set(CREATION_LOCK, &0u64.to_le_bytes(), cas);
        }
        return created;
    }
    Err(StoreError::Contention)
}

/// Counts one request against every limit of `key_id`, or blocks it without counting.
///
/// A missing record is created first under the creation lock (see [`create_counter`]);
/// `created` reports that so the caller can count the event.
pub fn admit(
    store: &mut impl CasStore,
    key_id: &str,
    limits: &[Limit],
    now: u64,
    created: &mut bool,
) -> Result<Option<RateOutcome>, StoreError> {
    if limits.is_empty() {
        return Ok(None);
    }
    let key = counter_key(key_id);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (rec, cas) = match read(store, &key)? {
            Some(x) => x,
            None => {
                *created = true;
                create_counter(store, &key, now)?;
                continue;
            }
        };
        let blocking = limits
            .iter()
            .filter(|l| rec.used(l.per, now) >= l.requests)
            .max_by_key(|l| window_reset(now, l.per));
        if let Some(l) = blocking {
            let reset = window_reset(now, l.per);
            let headers = RateHeaders {
                limit: l.requests,
                remaining: 0,
                reset,
            };
            return Ok(Some(RateOutcome::Blocked {
                headers,
                retry_after: seconds_until(reset, now),
            }));
        }
        let mut next = rec;
        for l in limits {
            let used = rec.used(l.per, now);
            if let Some(slot) = next.0.get_mut(l.per.slot()) {
                *slot = Slot {
                    start: window_start(now, l.per),
                    count: used + 1,
                };
            }
        }
        if store.set(&key, &next.encode(), cas)? {
            let headers = closest(limits, &rec, now, 1).ok_or(StoreError::Corrupt)?;
            return Ok(Some(RateOutcome::Admitted(headers)));
        }
    }
    Err(StoreError::Contention)
}

/// Gives back one request counted by [`admit`] at `now` (it was refused afterwards, for its
/// credits): each limit's window is decremented if it is still the one counted in.
pub fn release(
    store: &mut impl CasStore,
    key_id: &str,
    limits: &[Limit],
    now: u64,
) -> Result<(), StoreError> {
    if limits.is_empty() {
        return Ok(());
    }
    let key = counter_key(key_id);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some((rec, cas)) = read(store, &key)? else {
            return Ok(());
        };
        let mut next = rec;
        // One count per slot, as `admit` counted it (two limits of one length share a slot).
        let mut released = [false; SLOTS];
        for l in limits {
            let i = l.per.slot();
            if let (Some(slot), Some(done)) = (next.0.get_mut(i), released.get_mut(i)) {
                if !*done && slot.start == window_start(now, l.per) {
                    slot.count = slot.count.saturating_sub(1);
                    *done = true;
                }
            }
        }
        if next == rec || store.set(&key, &next.encode(), cas)? {
            return Ok(());
        }
    }
    Err(StoreError::Contention)
}

/// The headers a key's limits would show now, without counting (for answers that are not
/// counted, like 403s).
pub fn peek(
    store: &mut impl CasStore,
    key_id: &str,
    limits: &[Limit],
    now: u64,
) -> Result<Option<RateHeaders>, StoreError> {
    if limits.is_empty() {
        return Ok(None);
    }
    let rec = read(store, &counter_key(key_id))?
        .map(|(r, _)| r)
        .unwrap_or_default();
    Ok(closest(limits, &rec, now, 0))
}

#[cfg(test)]
mod release_tests {
    use super::mem::MemStore;
    use super::*;

    #[test]
    fn release_gives_back_one_count_per_window_even_for_two_limits_of_one_length() {
        let mut store = MemStore::default();
        ensure_creation_lock(&mut store).unwrap();
        let limits = [
            Limit {
                requests: 10,
                per: Per::Minute,
            },
            Limit {
                requests: 5,
                per: Per::Minute,
            },
            Limit {
                requests: 100,
                per: Per::Day,
            },
        ];
        let now = 1_800_000_000;
        let mut created = false;
        for _ in 0..3 {
            admit(&mut store, "k", &limits, now, &mut created).unwrap();
        }
        release(&mut store, "k", &limits, now).unwrap();
        let h = peek(&mut store, "k", &limits, now).unwrap().unwrap();
        assert_eq!(h.remaining, 3, "5 a minute, 2 counted");
        // A window that rolled over since is left alone.
        release(&mut store, "k", &limits, now + 60).unwrap();
        assert_eq!(
            peek(&mut store, "k", &limits, now)
                .unwrap()
                .unwrap()
                .remaining,
            3
        );
    }
}

/// An in-memory [`CasStore`] with the host's semantics, for tests: CAS tokens increase
/// globally, a missing entry accepts any CAS, and conflicts can be injected.
#[cfg(test)]
pub mod mem {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct MemStore {
        pub entries: HashMap<String, (Vec<u8>, u32)>,
        next_cas: u32,
        /// The next this-many `set` calls with a CAS fail as if another worker wrote first.
        pub inject_conflicts: u32,
        pub sets: u32,
    }

    impl CasStore for MemStore {
        fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            Ok(self.entries.get(key).cloned())
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, StoreError> {
            self.sets += 1;
            if let Some((_, cur)) = self.entries.get(key) {
                if cas != 0 && self.inject_conflicts > 0 {
                    self.inject_conflicts -= 1;
                    // Another worker's write: the token moves on.
                    self.next_cas += 1;
                    let v = self
                        .entries
                        .get(key)
                        .map(|e| e.0.clone())
                        .unwrap_or_default();
                    self.entries.insert(key.to_string(), (v, self.next_cas));
                    return Ok(false);
                }
                if cas != 0 && cas != *cur {
                    return Ok(false);
                }
            }
            self.next_cas += 1;
            self.entries
                .insert(key.to_string(), (value.to_vec(), self.next_cas));
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mem::MemStore;
    use super::*;

    /// A store as configuration leaves it: the creation lock exists.
    fn store() -> MemStore {
        let mut s = MemStore::default();
        ensure_creation_lock(&mut s).unwrap();
        s
    }

    fn lim(requests: u64, per: Per) -> Limit {
        Limit { requests, per }
    }

    fn admit_now(s: &mut MemStore, limits: &[Limit], now: u64) -> RateOutcome {
        let mut created = false;
        admit(s, "k", limits, now, &mut created).unwrap().unwrap()
    }

    #[test]
    fn window_math() {
        assert_eq!(window_start(125, Per::Minute), 120);
        assert_eq!(window_reset(125, Per::Minute), 180);
        assert_eq!(window_reset(86_399, Per::Day), 86_400);
        assert_eq!(window_reset(86_400, Per::Day), 172_800);
        assert_eq!(window_reset(7, Per::Second), 8);
        assert_eq!(seconds_until(180, 125), 55);
        assert_eq!(seconds_until(180, 180), 1);
    }

    #[test]
    fn counts_down_then_blocks_then_resets() {
        let mut s = store();
        ensure_counter(&mut s, "k").unwrap();
        let limits = [lim(3, Per::Minute)];
        for remaining in [2, 1, 0] {
            assert_eq!(
                admit_now(&mut s, &limits, 125),
                RateOutcome::Admitted(RateHeaders {
                    limit: 3,
                    remaining,
                    reset: 180
                })
            );
        }
        assert_eq!(
            admit_now(&mut s, &limits, 130),
            RateOutcome::Blocked {
                headers: RateHeaders {
                    limit: 3,
                    remaining: 0,
                    reset: 180
                },
                retry_after: 50
            }
        );
        // Next minute: reset in place, same entry.
        assert_eq!(
            admit_now(&mut s, &limits, 180),
            RateOutcome::Admitted(RateHeaders {
                limit: 3,
                remaining: 2,
                reset: 240
            })
        );
        assert_eq!(
            s.entries.len(),
            2,
            "one record for the key (plus the creation lock)"
        );
    }

    #[test]
    fn a_blocked_request_consumes_no_other_limit() {
        let mut s = store();
        let limits = [lim(2, Per::Second), lim(10, Per::Day)];
        admit_now(&mut s, &limits, 1000);
        admit_now(&mut s, &limits, 1000);
        for _ in 0..5 {
            assert!(matches!(
                admit_now(&mut s, &limits, 1000),
                RateOutcome::Blocked { retry_after: 1, .. }
            ));
        }
        // The day limit saw only the two admitted requests.
        assert_eq!(
            peek(&mut s, "k", &[lim(10, Per::Day)], 1001).unwrap(),
            Some(RateHeaders {
                limit: 10,
                remaining: 8,
                reset: 86_400
            })
        );
        // Headers show the limit closest to exhaustion.
        assert_eq!(
            admit_now(&mut s, &limits, 1001),
            RateOutcome::Admitted(RateHeaders {
                limit: 2,
                remaining: 1,
                reset: 1002
            })
        );
    }

    #[test]
    fn limits_sharing_a_window_share_its_count_and_the_smallest_binds() {
        let mut s = store();
        let limits = [lim(5, Per::Minute), lim(2, Per::Minute)];
        for remaining in [1, 0] {
            assert_eq!(
                admit_now(&mut s, &limits, 60),
                RateOutcome::Admitted(RateHeaders {
                    limit: 2,
                    remaining,
                    reset: 120
                })
            );
        }
        assert!(matches!(
            admit_now(&mut s, &limits, 61),
            RateOutcome::Blocked {
                retry_after: 59,
                ..
            }
        ));
        assert_eq!(
            peek(&mut s, "k", &[lim(5, Per::Minute)], 61)
                .unwrap()
                .map(|h| h.remaining),
            Some(3)
        );
    }

    #[test]
    fn blocked_by_the_longest_window_reports_its_reset() {
        let mut s = store();
        let limits = [lim(1, Per::Second), lim(1, Per::Hour)];
        admit_now(&mut s, &limits, 3600);
        assert_eq!(
            admit_now(&mut s, &limits, 3600),
            RateOutcome::Blocked {
                headers: RateHeaders {
                    limit: 1,
                    remaining: 0,
                    reset: 7200
                },
                retry_after: 3600
            }
        );
    }

    #[test]
    fn cas_conflicts_are_retried_then_fail_closed() {
        let mut s = store();
        ensure_counter(&mut s, "k").unwrap();
        s.inject_conflicts = 5;
        assert!(matches!(
            admit_now(&mut s, &[lim(10, Per::Minute)], 60),
            RateOutcome::Admitted(_)
        ));
        assert_eq!(
            peek(&mut s, "k", &[lim(10, Per::Minute)], 60)
                .unwrap()
                .map(|h| h.remaining),
            Some(9)
        );
        s.inject_conflicts = MAX_CAS_ATTEMPTS;
        let mut created = false;
        assert_eq!(
            admit(&mut s, "k", &[lim(10, Per::Minute)], 60, &mut created),
            Err(StoreError::Contention)
        );
        // Nothing was counted by the failed request.
        assert_eq!(
            peek(&mut s, "k", &[lim(10, Per::Minute)], 60)
                .unwrap()
                .map(|h| h.remaining),
            Some(9)
        );
    }

    #[test]
    fn limit_change_applies_to_existing_counts() {
        let mut s = store();
        for _ in 0..5 {
            admit_now(&mut s, &[lim(10, Per::Minute)], 60);
        }
        assert!(matches!(
            admit_now(&mut s, &[lim(5, Per::Minute)], 61),
            RateOutcome::Blocked { .. }
        ));
        assert!(matches!(
            admit_now(&mut s, &[lim(7, Per::Minute)], 61),
            RateOutcome::Admitted(RateHeaders { remaining: 1, .. })
        ));
    }

    #[test]
    fn missing_record_is_created_under_the_lock_and_corrupt_fails_closed() {
        let mut s = MemStore::default();
        let mut created = false;
        // Without the creation lock (configuration never ran) nothing is created: fail closed.
        assert_eq!(
            admit(&mut s, "k", &[lim(1, Per::Day)], 5, &mut created),
            Err(StoreError::Host)
        );
        ensure_creation_lock(&mut s).unwrap();
        assert!(admit(&mut s, "k", &[lim(1, Per::Day)], 5, &mut created)
            .unwrap()
            .is_some());
        assert!(created);
        assert!(!ensure_counter(&mut s, "k").unwrap());
        s.entries.insert(counter_key("k"), (vec![1, 2, 3], 99));
        assert_eq!(
            admit(&mut s, "k", &[lim(1, Per::Day)], 5, &mut created),
            Err(StoreError::Corrupt)
        );
    }

    #[test]
    fn a_held_creation_lock_waits_then_a_stale_one_is_taken() {
        let mut s = store();
        // Another worker holds the lock until t=100.
        s.entries
            .insert(CREATION_LOCK.into(), (100u64.to_le_bytes().to_vec(), 7));
        assert_eq!(
            create_counter(&mut s, "keygate.rl.k", 50),
            Err(StoreError::Contention)
        );
        assert!(!s.entries.contains_key("keygate.rl.k"));
        // At t=100 the holder is gone: the lock is taken, the record created, the lock freed.
        create_counter(&mut s, "keygate.rl.k", 100).unwrap();
        assert!(s.entries.contains_key("keygate.rl.k"));
        assert_eq!(s.entries[CREATION_LOCK].0, 0u64.to_le_bytes().to_vec());
        // An existing record is never overwritten by creation.
        s.entries
            .insert("keygate.rl.k".into(), (vec![9; RECORD_LEN], 50));
        create_counter(&mut s, "keygate.rl.k", 101).unwrap();
        assert_eq!(s.entries["keygate.rl.k"].0, vec![9; RECORD_LEN]);
    }

    /// Two "workers" interleave read and write on one store: exactly the limit is admitted.
    #[test]
    fn interleaved_workers_admit_exactly_the_limit() {
        let mut s = store();
        ensure_counter(&mut s, "k").unwrap();
        let limits = [lim(50, Per::Minute)];
        let mut admitted = 0;
        for i in 0..200 {
            // Every other request loses its first CAS to the "other worker".
            s.inject_conflicts = i % 2;
            if let RateOutcome::Admitted(_) = admit_now(&mut s, &limits, 600) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 50);
    }
}

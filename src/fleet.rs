//! Fleet-wide limits (SPEC §10), the pure part: what one request asks the rate-limit service,
//! how its answer becomes the same outcome a local limit gives, and the per-VM cache that
//! answers 429 without a call while a key's window is known to be used up.
//!
//! The proxy-wasm side (`filter/fleet.rs`) only dispatches the call and hands the answer here.

use crate::keys::FastMap;
use crate::model::{Limit, Per};
use crate::ratelimit::{closer, seconds_until, window_reset, RateHeaders, RateOutcome};
use crate::rls_wire::{Balance, Descriptor, Response, CODE_OK, CODE_OVER_LIMIT};
use std::fmt;

/// A key's limits as sent to the service: one descriptor per window length, the smallest limit
/// of that length (several of one length bind as the smallest does locally). Copy, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Requests per window, by [`Per::slot`]; 0 = no limit of that length.
    requests: [u64; 4],
    /// The balance of credits the service spends from too (SPEC §14), last; `true`: a
    /// tenant's.
    pub balance: Option<(bool, Balance)>,
}

impl Windows {
    /// `None` for a key without limits: it makes no call.
    pub fn of(limits: &[Limit]) -> Option<Windows> {
        let mut requests = [0u64; 4];
        for l in limits {
            if let Some(r) = requests.get_mut(l.per.slot()) {
                *r = if *r == 0 {
                    l.requests
                } else {
                    (*r).min(l.requests)
                };
            }
        }
        requests.iter().any(|&r| r > 0).then_some(Windows {
            requests,
            balance: None,
        })
    }

    /// `w` (or no windows) and a balance to spend from.
    pub fn with_balance(w: Option<Windows>, tenant: bool, b: Balance) -> Windows {
        Windows {
            balance: Some((tenant, b)),
            ..w.unwrap_or(Windows {
                requests: [0; 4],
                balance: None,
            })
        }
    }

    /// The call: the windows, then the balance (`tenant`: the key's, named when the balance is
    /// the tenant's).
    pub fn request(&self, domain: &str, key_id: &str, tenant: Option<&str>) -> Vec<u8> {
        let tenant = tenant.filter(|_| matches!(self.balance, Some((true, _))));
        crate::rls_wire::encode_request(
            domain,
            tenant,
            self.descriptors(key_id),
            self.balance.map(|(_, b)| (key_id, b)),
        )
    }

    /// The limits, shortest window first.
    pub fn limits(&self) -> impl Iterator<Item = Limit> + '_ {
        Per::ALL
            .into_iter()
            .zip(self.requests)
            .filter(|&(_, r)| r > 0)
            .map(|(per, requests)| Limit { requests, per })
    }

    /// The limits as a slice-backed list (for the local counters on failure).
    pub fn to_vec(&self) -> Vec<Limit> {
        self.limits().collect()
    }

    pub fn len(&self) -> usize {
        self.requests.iter().filter(|&&r| r > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The requests per window of length `per`, if the key has such a limit.
    pub fn requests(&self, per: Per) -> Option<u64> {
        self.requests.get(per.slot()).copied().filter(|&r| r > 0)
    }

    /// The descriptors of one call, in [`Windows::limits`] order.
    pub fn descriptors<'a>(&'a self, key_id: &'a str) -> impl Iterator<Item = Descriptor<'a>> {
        self.limits().map(move |l| Descriptor {
            key_id,
            per: l.per,
            requests: l.requests,
        })
    }
}

/// An answer keygate cannot act on: treated as a failed call (`on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerError {
    /// Not one status per descriptor sent.
    StatusCount { sent: usize, got: usize },
    /// `overall_code` neither `OK` nor `OVER_LIMIT`.
    OverallCode(u64),
}

impl fmt::Display for AnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnswerError::StatusCount { sent, got } => {
                write!(f, "{got} statuses for {sent} descriptors")
            }
            AnswerError::OverallCode(c) => write!(f, "overall_code {c}"),
        }
    }
}

/// The `X-RateLimit-*` values one status gives for `limit`.
fn status_headers(limit: Limit, s: &crate::rls_wire::Status, now_ms: u64) -> RateHeaders {
    // The service's own limit is what it enforces; keygate's is what it asked for.
    let limit_value = match s.current_limit {
        Some((r, _)) if r > 0 => r,
        _ => limit.requests,
    };
    let now = now_ms / 1000;
    // duration_until_reset is authoritative: rounded to the nearest second, a service whose
    // clock agrees with this Envoy's to within half a second names the epoch-aligned reset.
    let reset = match s.until_reset_ms {
        Some(ms) => now_ms.saturating_add(ms).saturating_add(500) / 1000,
        None => window_reset(now, limit.per),
    };
    RateHeaders {
        limit: limit_value,
        remaining: s.limit_remaining.min(limit_value),
        reset: reset.max(now),
    }
}

/// What the service answered for a balance: spent, with what is left, or not (it does not
/// cover the request: nothing was counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceAnswer {
    Spent { remaining: u64 },
    Exceeded,
}

/// The outcome the service's answer gives, as [`crate::ratelimit::admit`] gives it locally:
/// the windows admitted with the headers of the limit closest to exhaustion, or blocked with
/// those of the limit that blocked (the one resetting last, if several did); and the balance's.
/// A request a window blocks is a window's refusal (credits come last); one only its balance
/// refuses has no window outcome, as a local refusal for credits shows no rate headers.
pub fn read_answer(
    w: &Windows,
    resp: &Response,
    now_ms: u64,
) -> Result<(Option<RateOutcome>, Option<BalanceAnswer>), AnswerError> {
    let windows = w.len();
    let sent = windows + usize::from(w.balance.is_some());
    if resp.statuses.len() != sent {
        return Err(AnswerError::StatusCount {
            sent,
            got: resp.statuses.len(),
        });
    }
    let now = now_ms / 1000;
    let each = w
        .limits()
        .zip(&resp.statuses)
        .map(|(l, s)| (s.code, status_headers(l, s, now_ms)));
    let balance = w.balance.and(resp.statuses.get(windows));
    let balance_over = balance.is_some_and(|s| s.code == CODE_OVER_LIMIT);
    let admitted = match resp.overall_code {
        CODE_OK => true,
        CODE_OVER_LIMIT => false,
        other => return Err(AnswerError::OverallCode(other)),
    };
    let all: Vec<(u64, RateHeaders)> = each.collect();
    let window_over = all.iter().any(|(c, _)| *c == CODE_OVER_LIMIT);
    let rate = if admitted {
        all.iter()
            .map(|(_, h)| *h)
            .min_by(closer)
            .map(RateOutcome::Admitted)
    } else if balance_over && !window_over {
        None
    } else {
        // The statuses that say OVER_LIMIT; a service that only sets overall_code blocks on
        // the status with the fewest remaining.
        let blocking = all
            .iter()
            .filter(|(c, _)| *c == CODE_OVER_LIMIT)
            .map(|(_, h)| *h)
            .max_by_key(|h| h.reset)
            .or_else(|| all.iter().map(|(_, h)| *h).min_by(closer));
        match blocking {
            Some(blocking) => {
                let reset = blocking.reset.max(now + 1);
                Some(RateOutcome::Blocked {
                    headers: RateHeaders {
                        remaining: 0,
                        reset,
                        ..blocking
                    },
                    retry_after: seconds_until(reset, now),
                })
            }
            // No window at all: the balance refused it.
            None => None,
        }
    };
    let balance = match (balance, admitted) {
        (None, _) => None,
        (Some(s), true) => Some(BalanceAnswer::Spent {
            remaining: s.limit_remaining,
        }),
        (Some(_), false) => Some(BalanceAnswer::Exceeded),
    };
    Ok((rate, balance))
}

/// What this VM last learnt of a key's fleet-wide count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    headers: RateHeaders,
    /// The window that blocked and the limit keygate sent for it; `None` if not blocked.
    blocked: Option<(Per, u64)>,
}

/// Entries a VM keeps at most (one per key seen within its windows).
pub const MAX_CACHED_KEYS: usize = 10_000;

/// Per VM (one per worker thread): the over-limit cache and the last headers seen per key.
/// Bounded by [`MAX_CACHED_KEYS`]; an entry is dropped once its window has reset.
#[derive(Debug, Default)]
pub struct FleetCache {
    keys: FastMap<String, Known>,
}

impl FleetCache {
    /// A 429 without calling the service: the key's blocking window (for the limit it still
    /// has) has not reset yet.
    pub fn blocked(&self, key_id: &str, w: &Windows, now: u64) -> Option<RateOutcome> {
        let k = self.keys.get(key_id)?;
        let (per, sent) = k.blocked?;
        if now >= k.headers.reset || w.requests(per) != Some(sent) {
            return None;
        }
        Some(RateOutcome::Blocked {
            headers: k.headers,
            retry_after: seconds_until(k.headers.reset, now),
        })
    }

    /// The headers of an answer that is not counted (a 403): the last ones seen for this key
    /// in the current windows, else each limit untouched.
    pub fn peek(&self, key_id: &str, w: &Windows, now: u64) -> Option<RateHeaders> {
        if let Some(k) = self.keys.get(key_id).filter(|k| now < k.headers.reset) {
            return Some(k.headers);
        }
        w.limits()
            .map(|l| RateHeaders {
                limit: l.requests,
                remaining: l.requests,
                reset: window_reset(now, l.per),
            })
            .min_by(closer)
    }

    /// Remembers an answer. An unblocked answer never replaces a block still in force (a call
    /// that was already under way when another learnt of the block).
    pub fn learn(&mut self, key_id: &str, w: &Windows, outcome: &RateOutcome, now: u64) {
        let known = match *outcome {
            RateOutcome::Admitted(headers) => Known {
                headers,
                blocked: None,
            },
            RateOutcome::Blocked { headers, .. } => {
                // The window that blocked: the key's limit whose window resets then, else the
                // longest (a service with other windows than keygate's).
                let per = w
                    .limits()
                    .find(|l| window_reset(now, l.per) == headers.reset)
                    .or_else(|| w.limits().last())
                    .map(|l| (l.per, l.requests));
                Known {
                    headers,
                    blocked: per,
                }
            }
        };
        if let Some(k) = self.keys.get_mut(key_id) {
            let block_in_force = k.blocked.is_some() && now < k.headers.reset;
            if !(block_in_force && known.blocked.is_none()) {
                *k = known;
            }
            return;
        }
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.retain(|_, k| now < k.headers.reset);
            if self.keys.len() >= MAX_CACHED_KEYS {
                self.keys.clear();
            }
        }
        self.keys.insert(key_id.to_string(), known);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rls_wire::Status;

    fn lim(requests: u64, per: Per) -> Limit {
        Limit { requests, per }
    }

    fn st(code: u64, remaining: u64, ms: u64) -> Status {
        Status {
            code,
            current_limit: None,
            limit_remaining: remaining,
            until_reset_ms: Some(ms),
        }
    }

    /// The windows' outcome of an answer without a balance.
    fn rate_of(w: &Windows, resp: &Response) -> Result<RateOutcome, AnswerError> {
        read_answer(w, resp, NOW_MS).map(|(rate, balance)| {
            assert_eq!(balance, None);
            rate.unwrap()
        })
    }

    #[test]
    fn a_balance_comes_last_and_only_it_refusing_is_no_window_refusal() {
        let b = Balance {
            period: 0,
            serial: 0,
            until: 0,
            grant: 10,
            cost: 3,
        };
        let w = Windows::with_balance(Windows::of(&[lim(10, Per::Minute)]), false, b);
        assert_eq!(w.len(), 1);
        let answer = |overall, window, balance| Response {
            overall_code: overall,
            statuses: vec![st(window, 7, 29_750), st(balance, 4, 1_000)],
        };
        let admitted = read_answer(&w, &answer(CODE_OK, CODE_OK, CODE_OK), NOW_MS).unwrap();
        assert!(matches!(admitted.0, Some(RateOutcome::Admitted(h)) if h.remaining == 7));
        assert_eq!(admitted.1, Some(BalanceAnswer::Spent { remaining: 4 }));
        // Only the balance over: no window outcome, the balance exceeded.
        assert_eq!(
            read_answer(
                &w,
                &answer(CODE_OVER_LIMIT, CODE_OK, CODE_OVER_LIMIT),
                NOW_MS
            ),
            Ok((None, Some(BalanceAnswer::Exceeded)))
        );
        // A window over too: the window's refusal.
        let both = read_answer(
            &w,
            &answer(CODE_OVER_LIMIT, CODE_OVER_LIMIT, CODE_OVER_LIMIT),
            NOW_MS,
        )
        .unwrap();
        assert!(matches!(both.0, Some(RateOutcome::Blocked { .. })));
        // A balance alone (no windows): one status, and a refusal without one is the balance's.
        let alone = Windows::with_balance(None, true, b);
        let one = |code| Response {
            overall_code: code,
            statuses: vec![st(code, 0, 1_000)],
        };
        assert_eq!(
            read_answer(&alone, &one(CODE_OVER_LIMIT), NOW_MS),
            Ok((None, Some(BalanceAnswer::Exceeded)))
        );
        assert_eq!(
            read_answer(&alone, &one(CODE_OK), NOW_MS),
            Ok((None, Some(BalanceAnswer::Spent { remaining: 0 })))
        );
        assert_eq!(
            read_answer(&alone, &answer(CODE_OK, CODE_OK, CODE_OK), NOW_MS),
            Err(AnswerError::StatusCount { sent: 1, got: 2 })
        );
    }

    #[test]
    fn a_tenants_balance_leads_every_descriptor_with_the_tenant() {
        let b = Balance {
            period: 1_764_547_200,
            serial: 2,
            until: 1_767_225_600,
            grant: 100,
            cost: 5,
        };
        let w = Windows::with_balance(Windows::of(&[lim(10, Per::Day)]), true, b);
        let msg = w.request("keygate", "k1", Some("org_1"));
        let text = String::from_utf8_lossy(&msg);
        assert_eq!(text.matches("tenant").count(), 2);
        assert_eq!(text.matches("org_1").count(), 2);
        assert!(text.contains("1764547200.2") && text.contains("1767225600"));
        // A key's own balance: led by the key id, the tenant not named.
        let own = Windows::with_balance(Windows::of(&[lim(10, Per::Day)]), false, b);
        let text =
            String::from_utf8_lossy(&own.request("keygate", "k1", Some("org_1"))).to_string();
        assert!(!text.contains("org_1") && text.matches("key_id").count() == 2);
    }

    // 2026-12-04T10:00:30.250Z
    const NOW_MS: u64 = 1_796_378_430_250;
    const NOW: u64 = NOW_MS / 1000;

    #[test]
    fn one_descriptor_per_window_length_the_smallest_binds() {
        let w = Windows::of(&[lim(100, Per::Day), lim(5, Per::Second), lim(50, Per::Day)]).unwrap();
        assert_eq!(w.to_vec(), vec![lim(5, Per::Second), lim(50, Per::Day)]);
        let d: Vec<_> = w.descriptors("k").collect();
        assert_eq!(d.len(), 2);
        assert_eq!((d[1].key_id, d[1].per, d[1].requests), ("k", Per::Day, 50));
        assert_eq!(Windows::of(&[]), None);
    }

    #[test]
    fn an_admitted_answer_gives_the_limit_closest_to_exhaustion() {
        let w = Windows::of(&[lim(10, Per::Minute), lim(1000, Per::Day)]).unwrap();
        let minute_left = 29_750; // the minute resets at :01:00
        let day_left = (NOW / 86_400 + 1) * 86_400 * 1000 - NOW_MS;
        let resp = Response {
            overall_code: CODE_OK,
            statuses: vec![st(CODE_OK, 7, minute_left), st(CODE_OK, 990, day_left)],
        };
        assert_eq!(
            rate_of(&w, &resp),
            Ok(RateOutcome::Admitted(RateHeaders {
                limit: 10,
                remaining: 7,
                reset: window_reset(NOW, Per::Minute)
            }))
        );
        // Rounded to the nearest second: a service clock 400 ms behind names the same reset.
        let resp = Response {
            overall_code: CODE_OK,
            statuses: vec![
                st(CODE_OK, 7, minute_left + 400),
                st(CODE_OK, 990, day_left),
            ],
        };
        let Ok(RateOutcome::Admitted(h)) = rate_of(&w, &resp) else {
            panic!()
        };
        assert_eq!(h.reset, window_reset(NOW, Per::Minute));
    }

    #[test]
    fn an_over_limit_answer_blocks_with_the_window_that_resets_last() {
        let w = Windows::of(&[lim(10, Per::Minute), lim(100, Per::Hour)]).unwrap();
        let resp = Response {
            overall_code: CODE_OVER_LIMIT,
            statuses: vec![
                st(CODE_OVER_LIMIT, 0, 29_750),
                st(CODE_OVER_LIMIT, 0, 3_569_750),
            ],
        };
        let out = rate_of(&w, &resp).unwrap();
        let reset = window_reset(NOW, Per::Hour);
        assert_eq!(
            out,
            RateOutcome::Blocked {
                headers: RateHeaders {
                    limit: 100,
                    remaining: 0,
                    reset
                },
                retry_after: reset - NOW
            }
        );
    }

    #[test]
    fn answers_keygate_cannot_act_on_are_errors() {
        let w = Windows::of(&[lim(10, Per::Minute)]).unwrap();
        let two = Response {
            overall_code: CODE_OK,
            statuses: vec![st(CODE_OK, 1, 1), st(CODE_OK, 1, 1)],
        };
        assert_eq!(
            rate_of(&w, &two),
            Err(AnswerError::StatusCount { sent: 1, got: 2 })
        );
        let unknown = Response {
            overall_code: 0,
            statuses: vec![st(CODE_OK, 1, 1)],
        };
        assert_eq!(rate_of(&w, &unknown), Err(AnswerError::OverallCode(0)));
    }

    #[test]
    fn an_answer_without_durations_uses_epoch_windows_and_remaining_is_capped() {
        let w = Windows::of(&[lim(10, Per::Minute)]).unwrap();
        let resp = Response {
            overall_code: CODE_OK,
            statuses: vec![Status {
                code: CODE_OK,
                current_limit: None,
                limit_remaining: 4_000_000,
                until_reset_ms: None,
            }],
        };
        assert_eq!(
            rate_of(&w, &resp),
            Ok(RateOutcome::Admitted(RateHeaders {
                limit: 10,
                remaining: 10,
                reset: window_reset(NOW, Per::Minute)
            }))
        );
    }

    #[test]
    fn the_cache_blocks_until_the_window_resets_and_only_for_that_limit() {
        let w = Windows::of(&[lim(10, Per::Minute)]).unwrap();
        let mut c = FleetCache::default();
        let resp = Response {
            overall_code: CODE_OVER_LIMIT,
            statuses: vec![st(CODE_OVER_LIMIT, 0, 29_750)],
        };
        let out = rate_of(&w, &resp).unwrap();
        c.learn("k", &w, &out, NOW);
        let reset = window_reset(NOW, Per::Minute);
        assert_eq!(
            c.blocked("k", &w, NOW + 10),
            Some(RateOutcome::Blocked {
                headers: RateHeaders {
                    limit: 10,
                    remaining: 0,
                    reset
                },
                retry_after: reset - NOW - 10
            })
        );
        assert_eq!(c.blocked("k", &w, reset), None, "the window reset");
        assert_eq!(c.blocked("other", &w, NOW), None);
        let raised = Windows::of(&[lim(20, Per::Minute)]).unwrap();
        assert_eq!(c.blocked("k", &raised, NOW), None, "the limit changed");
        // A late OK answer (a call already under way) does not lift the block.
        let ok = RateOutcome::Admitted(RateHeaders {
            limit: 10,
            remaining: 0,
            reset,
        });
        c.learn("k", &w, &ok, NOW);
        assert!(c.blocked("k", &w, NOW).is_some());
        assert_eq!(c.peek("k", &w, NOW).map(|h| h.remaining), Some(0));
    }

    #[test]
    fn peeks_show_the_last_answer_in_its_window_else_the_untouched_limit() {
        let w = Windows::of(&[lim(10, Per::Minute), lim(1000, Per::Day)]).unwrap();
        let mut c = FleetCache::default();
        assert_eq!(
            c.peek("k", &w, NOW),
            Some(RateHeaders {
                limit: 10,
                remaining: 10,
                reset: window_reset(NOW, Per::Minute)
            })
        );
        let seen = RateHeaders {
            limit: 10,
            remaining: 3,
            reset: window_reset(NOW, Per::Minute),
        };
        c.learn("k", &w, &RateOutcome::Admitted(seen), NOW);
        assert_eq!(c.peek("k", &w, NOW), Some(seen));
        assert_eq!(c.peek("k", &w, seen.reset).map(|h| h.remaining), Some(10));
    }

    #[test]
    fn the_cache_is_bounded() {
        let w = Windows::of(&[lim(10, Per::Second)]).unwrap();
        let mut c = FleetCache::default();
        let h = |reset| {
            RateOutcome::Admitted(RateHeaders {
                limit: 10,
                remaining: 1,
                reset,
            })
        };
        for i in 0..MAX_CACHED_KEYS {
            c.learn(&format!("k{i}"), &w, &h(NOW + 1), NOW);
        }
        assert_eq!(c.len(), MAX_CACHED_KEYS);
        // A second later every entry has reset: they make room.
        c.learn("new", &w, &h(NOW + 2), NOW + 1);
        assert_eq!(c.len(), 1);
        for i in 0..MAX_CACHED_KEYS {
            c.learn(&format!("k{i}"), &w, &h(NOW + 10), NOW + 1);
        }
        assert!(c.len() <= MAX_CACHED_KEYS);
    }
}

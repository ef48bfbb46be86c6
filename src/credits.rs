//! Credits (SPEC §14): a balance per key, or one per tenant that every key of the tenant without
//! its own draws from. Each admitted request spends its cost; a refill replaces the balance at
//! the start of each period (a day, or a month on a chosen day, 00:00 UTC).
//!
//! A balance is one record in the shared store, `keygate.cr.k.<key id>` or
//! `keygate.cr.t.<tenant>`: `(period start, spent)`, 16 bytes, reset in place when a period
//! begins, so memory is bounded by the keys and tenants, never by time. It is spent and refunded
//! by compare-and-swap, as rate-limit records are counted, so N concurrent requests against a
//! balance B spend exactly what the admissible ones cost, across workers, and never below zero.

use crate::model::{CostRule, Credits, Refill};
use crate::path::any_match;
use crate::ratelimit::{create_entry, CasStore, StoreError, MAX_CAS_ATTEMPTS};
use crate::timestamp::{civil_from_days, days_from_civil, days_in_month};

const RECORD_LEN: usize = 20;
/// A record written before `serial` existed (a filter upgraded in a running Envoy): serial 0.
const OLD_RECORD_LEN: usize = 16;
const DAY: u64 = 86_400;

/// Whose balance a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    Key(&'a str),
    Tenant(&'a str),
}

/// The store key of a balance.
pub fn balance_key(owner: Owner) -> String {
    match owner {
        Owner::Key(id) => format!("keygate.cr.k.{id}"),
        Owner::Tenant(t) => format!("keygate.cr.t.{t}"),
    }
}

/// The 00:00 UTC that starts month `m` (1–12) of year `y` on `day`, clamped to its last day.
fn month_refill(y: i64, m: i64, day: u8) -> u64 {
    let d = i64::from(day).min(days_in_month(y, m)).max(1);
    u64::try_from(days_from_civil(y, m, d)).map_or(0, |days| days * DAY)
}

/// The period holding `now`: its start, and the next refill (`None`: credits without refill,
/// one period for ever, starting at 0).
pub fn period(credits: &Credits, now: u64) -> (u64, Option<u64>) {
    match credits.refill {
        None => (0, None),
        Some(Refill::Day) => {
            let start = now - now % DAY;
            (start, Some(start + DAY))
        }
        Some(Refill::Month { day }) => {
            let (y, m, _) = civil_from_days(i64::try_from(now / DAY).unwrap_or(i64::MAX));
            let this = month_refill(y, m, day);
            let (py, pm) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            if now >= this {
                (this, Some(month_refill(ny, nm, day)))
            } else {
                (month_refill(py, pm, day), Some(this))
            }
        }
    }
}

/// What a request costs: the first matching rule's cost, else 1.
pub fn cost(rules: &[CostRule], method: &str, path: &str) -> u64 {
    rules
        .iter()
        .find(|r| {
            r.methods.as_ref().is_none_or(|ms| {
                ms.iter()
                    .any(|m| m == "*" || m.eq_ignore_ascii_case(method))
            }) && r.paths.as_ref().is_none_or(|p| any_match(p, path))
        })
        .map_or(1, |r| r.cost)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Record {
    period: u64,
    spent: u64,
    /// The balance's `serial` this was spent under.
    serial: u32,
}

impl Record {
    fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
        let word = |r: std::ops::Range<usize>| {
            bytes
                .get(r)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or(StoreError::Corrupt)
        };
        let serial = match bytes.len() {
            RECORD_LEN => bytes
                .get(16..20)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes),
            OLD_RECORD_LEN => 0,
            _ => return Err(StoreError::Corrupt),
        };
        Ok(Record {
            period: word(0..8)?,
            spent: word(8..16)?,
            serial,
        })
    }

    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[..8].copy_from_slice(&self.period.to_le_bytes());
        out[8..16].copy_from_slice(&self.spent.to_le_bytes());
        out[16..].copy_from_slice(&self.serial.to_le_bytes());
        out
    }
}

/// What `credits` grants in the period starting at `start`: `granted` and that period's
/// top-ups, never below zero.
pub fn granted_in(credits: &Credits, start: u64) -> u64 {
    match credits.top_up {
        Some((period, amount)) if period == start => credits.granted.saturating_add_signed(amount),
        _ => credits.granted,
    }
}

/// The period (its start) and the `serial` a spend was made in: a refund gives back to that
/// one only.
pub type Stamp = (u64, u32);

/// A spend's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Spent: what is left after this request, the next refill, and the period it was spent
    /// in (a refund names it).
    Spent {
        remaining: u64,
        reset: Option<u64>,
        period: Stamp,
    },
    /// Not spent: the cost exceeds what is left. `retry_after`: whole seconds until the next
    /// refill (none without refill).
    Exceeded {
        remaining: u64,
        retry_after: Option<u64>,
    },
}

fn read(store: &mut impl CasStore, key: &str) -> Result<Option<(Record, u32)>, StoreError> {
    match store.get(key)? {
        None => Ok(None),
        Some((bytes, cas)) => Ok(Some((Record::decode(&bytes)?, cas))),
    }
}

/// Makes sure a balance's record exists (where creation cannot race: configuration time).
pub fn ensure_balance(store: &mut impl CasStore, owner: Owner) -> Result<bool, StoreError> {
    crate::ratelimit::ensure_entry(store, &balance_key(owner), &Record::default().encode())
}

/// Spends `cost` from `owner`'s balance of `credits`, or nothing when it does not cover it.
/// `created`: a record had to be made on the request path.
pub fn spend(
    store: &mut impl CasStore,
    owner: Owner,
    credits: &Credits,
    cost: u64,
    now: u64,
    created: &mut bool,
) -> Result<Spend, StoreError> {
    let key = balance_key(owner);
    let (start, reset) = period(credits, now);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some((rec, cas)) = read(store, &key)? else {
            *created = true;
            create_entry(store, &key, &Record::default().encode(), now)?;
            continue;
        };
        // The record counts if it is of this period, or of the next one (another worker
        // crossed the refill instant first: spent from, never rewound). Anything else (a period
        // that ended, a refill that changed) starts over.
        let live = rec.period == start || Some(rec.period) == reset;
        if live && rec.serial > credits.serial {
            // Another worker holds a newer `set` than this one's key set: the grant it set is
            // not known here. Refused for the moment the new set takes to arrive.
            return Ok(Spend::Exceeded {
                remaining: 0,
                retry_after: Some(1),
            });
        }
        let serial = credits.serial;
        let (start, spent) = match (live, rec.serial == serial) {
            (true, true) => (rec.period, rec.spent),
            (true, false) => (rec.period, 0),
            (false, _) => (start, 0),
        };
        let left = granted_in(credits, start).saturating_sub(spent);
        if cost > left {
            return Ok(Spend::Exceeded {
                remaining: left,
                retry_after: reset.map(|r| r.saturating_sub(now).max(1)),
            });
        }
        if cost == 0 {
            return Ok(Spend::Spent {
                remaining: left,
                reset,
                period: (start, serial),
            });
        }
        let next = Record {
            period: start,
            spent: spent + cost,
            serial,
        };
        if store.set(&key, &next.encode(), cas)? {
            return Ok(Spend::Spent {
                remaining: left - cost,
                reset,
                period: (start, serial),
            });
        }
    }
    Err(StoreError::Contention)
}

/// Gives back `cost` spent in the period starting at `period` (a request charged only on
/// success that did not succeed). Nothing once that period has ended: a refill replaced it.
pub fn refund(
    store: &mut impl CasStore,
    owner: Owner,
    cost: u64,
    period: Stamp,
) -> Result<(), StoreError> {
    let key = balance_key(owner);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some((rec, cas)) = read(store, &key)? else {
            return Ok(());
        };
        if (rec.period, rec.serial) != period || cost == 0 {
            return Ok(());
        }
        let next = Record {
            spent: rec.spent.saturating_sub(cost),
            ..rec
        };
        if store.set(&key, &next.encode(), cas)? {
            return Ok(());
        }
    }
    Err(StoreError::Contention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::mem::MemStore;
    use crate::timestamp::parse_rfc3339;

    fn at(s: &str) -> u64 {
        parse_rfc3339(s).unwrap() as u64
    }

    fn credits(granted: u64, refill: Option<Refill>) -> Credits {
        Credits {
            granted,
            refill,
            top_up: None,
            serial: 0,
        }
    }

    #[test]
    fn periods_are_days_or_months_on_a_clamped_day() {
        let daily = credits(10, Some(Refill::Day));
        assert_eq!(
            period(&daily, at("2026-12-07T13:00:00Z")),
            (at("2026-12-07T00:00:00Z"), Some(at("2026-12-08T00:00:00Z")))
        );
        let monthly = credits(10, Some(Refill::Month { day: 31 }));
        // February has no 31st: its refill is on the 28th (29th in a leap year).
        assert_eq!(
            period(&monthly, at("2027-02-15T00:00:00Z")),
            (at("2027-01-31T00:00:00Z"), Some(at("2027-02-28T00:00:00Z")))
        );
        assert_eq!(
            period(&monthly, at("2027-02-28T00:00:00Z")),
            (at("2027-02-28T00:00:00Z"), Some(at("2027-03-31T00:00:00Z")))
        );
        assert_eq!(
            period(&monthly, at("2028-02-29T12:00:00Z")).0,
            at("2028-02-29T00:00:00Z")
        );
        let first = credits(10, Some(Refill::Month { day: 1 }));
        assert_eq!(
            period(&first, at("2026-12-31T23:59:59Z")),
            (at("2026-12-01T00:00:00Z"), Some(at("2027-01-01T00:00:00Z")))
        );
        assert_eq!(
            period(&first, at("2027-01-01T00:00:00Z")),
            (at("2027-01-01T00:00:00Z"), Some(at("2027-02-01T00:00:00Z")))
        );
        let mid = credits(10, Some(Refill::Month { day: 15 }));
        assert_eq!(
            period(&mid, at("2027-01-10T00:00:00Z")),
            (at("2026-12-15T00:00:00Z"), Some(at("2027-01-15T00:00:00Z")))
        );
        assert_eq!(period(&credits(10, None), 12345), (0, None));
    }

    #[test]
    fn costs_take_the_first_matching_rule_else_one() {
        let rules = vec![
            CostRule {
                methods: Some(vec!["POST".into()]),
                paths: Some(vec![
                    crate::path::Pattern::parse_path("/v1/search/*").unwrap()
                ]),
                cost: 5,
            },
            CostRule {
                methods: None,
                paths: Some(vec![crate::path::Pattern::parse_path("/healthz").unwrap()]),
                cost: 0,
            },
        ];
        assert_eq!(cost(&rules, "POST", "/v1/search/x"), 5);
        assert_eq!(cost(&rules, "GET", "/v1/search/x"), 1);
        assert_eq!(cost(&rules, "GET", "/healthz"), 0);
        assert_eq!(cost(&[], "GET", "/"), 1);
    }

    #[test]
    fn spending_is_exact_never_below_zero_and_refills_replace() {
        let mut store = MemStore::default();
        crate::ratelimit::ensure_creation_lock(&mut store).unwrap();
        let c = credits(10, Some(Refill::Day));
        let now = at("2026-12-07T10:00:00Z");
        let owner = Owner::Tenant("org_1");
        let mut created = false;
        let mut spent = 0;
        // Costs 3, 3, 3, 3, 1: the fourth does not fit (1 left), the fifth does.
        for c_ in [3, 3, 3, 3, 1] {
            match spend(&mut store, owner, &c, c_, now, &mut created).unwrap() {
                Spend::Spent {
                    remaining, reset, ..
                } => {
                    spent += c_;
                    assert_eq!(remaining, 10 - spent);
                    assert_eq!(reset, Some(at("2026-12-08T00:00:00Z")));
                }
                Spend::Exceeded {
                    remaining,
                    retry_after,
                } => {
                    assert_eq!((c_, remaining), (3, 1));
                    assert_eq!(retry_after, Some(14 * 3600));
                }
            }
        }
        assert!(created);
        assert_eq!(spent, 10);
        // The next day: the whole grant again (unused credits never roll over).
        let tomorrow = at("2026-12-08T00:00:00Z");
        assert_eq!(
            spend(&mut store, owner, &c, 4, tomorrow, &mut created).unwrap(),
            Spend::Spent {
                remaining: 6,
                reset: Some(at("2026-12-09T00:00:00Z")),
                period: (tomorrow, 0)
            }
        );
        // A refund gives back within its period only.
        refund(&mut store, owner, 4, (tomorrow, 0)).unwrap();
        refund(&mut store, owner, 3, (at("2026-12-07T00:00:00Z"), 0)).unwrap();
        assert_eq!(
            spend(&mut store, owner, &c, 10, tomorrow, &mut created).unwrap(),
            Spend::Spent {
                remaining: 0,
                reset: Some(at("2026-12-09T00:00:00Z")),
                period: (tomorrow, 0)
            }
        );
        // Without refill: one period for ever, nothing to wait for.
        let once = credits(2, None);
        let key = Owner::Key("k1");
        assert!(matches!(
            spend(&mut store, key, &once, 2, now, &mut created),
            Ok(Spend::Spent {
                remaining: 0,
                reset: None,
                ..
            })
        ));
        assert_eq!(
            spend(&mut store, key, &once, 1, now + 10 * DAY, &mut created).unwrap(),
            Spend::Exceeded {
                remaining: 0,
                retry_after: None
            }
        );
    }

    #[test]
    fn top_ups_count_in_their_period_only_and_a_set_starts_spending_anew() {
        let mut store = MemStore::default();
        crate::ratelimit::ensure_creation_lock(&mut store).unwrap();
        let day = at("2026-12-07T00:00:00Z");
        let now = day + 3600;
        let owner = Owner::Key("k");
        let mut created = false;
        let mut c = credits(5, Some(Refill::Day));
        let left = |store: &mut MemStore, c: &Credits, t: u64| match spend(
            store, owner, c, 0, t, &mut false,
        ) {
            Ok(Spend::Spent { remaining, .. }) => remaining,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            spend(&mut store, owner, &c, 4, now, &mut created),
            Ok(Spend::Spent { remaining: 1, .. })
        ));
        // add 10 (this period): 11 left; a top-up of yesterday's period adds nothing.
        c.top_up = Some((day, 10));
        assert_eq!(left(&mut store, &c, now), 11);
        c.top_up = Some((day - DAY, 10));
        assert_eq!(left(&mut store, &c, now), 1);
        // subtract below what was spent: nothing left, never below zero.
        c.top_up = Some((day, -3));
        assert_eq!(left(&mut store, &c, now), 0);
        assert_eq!(granted_in(&credits(2, None), 0), 2);
        // set 7: serial 1, top-up 7 − 5: what was spent before no longer counts.
        c.top_up = Some((day, 2));
        c.serial = 1;
        assert!(matches!(
            spend(&mut store, owner, &c, 3, now, &mut created),
            Ok(Spend::Spent { remaining: 4, period, .. }) if period == (day, 1)
        ));
        // A worker still on the old set is refused for the moment (it cannot know the grant
        // set), and never rewinds the newer record.
        let old = credits(5, Some(Refill::Day));
        assert_eq!(
            spend(&mut store, owner, &old, 1, now, &mut created).unwrap(),
            Spend::Exceeded {
                remaining: 0,
                retry_after: Some(1)
            }
        );
        assert_eq!(left(&mut store, &c, now), 4);
        // A refund of a spend before the set gives nothing back to the new count.
        refund(&mut store, owner, 4, (day, 0)).unwrap();
        assert_eq!(left(&mut store, &c, now), 4);
        refund(&mut store, owner, 3, (day, 1)).unwrap();
        assert_eq!(left(&mut store, &c, now), 7);
        // The next day: the grant alone (the top-up was for the period that ended).
        assert_eq!(left(&mut store, &c, day + DAY), 5);
        // A refill that changes (to none) starts over: the day's record is not this period's.
        assert!(matches!(
            spend(&mut store, owner, &c, 2, day + DAY, &mut created),
            Ok(Spend::Spent { remaining: 3, .. })
        ));
        let once = Credits {
            refill: None,
            top_up: Some((0, 1)),
            ..c
        };
        assert_eq!(left(&mut store, &once, day + DAY), 6);
    }

    #[test]
    fn a_record_written_before_serials_reads_as_serial_zero() {
        let mut store = MemStore::default();
        crate::ratelimit::ensure_creation_lock(&mut store).unwrap();
        let mut old = Vec::new();
        old.extend_from_slice(&0u64.to_le_bytes());
        old.extend_from_slice(&3u64.to_le_bytes());
        create_entry(&mut store, &balance_key(Owner::Key("k")), &old, 0).unwrap();
        assert!(matches!(
            spend(
                &mut store,
                Owner::Key("k"),
                &credits(5, None),
                1,
                10,
                &mut false
            ),
            Ok(Spend::Spent { remaining: 1, .. })
        ));
    }

    #[test]
    fn lost_compare_and_swaps_are_retried_and_a_foreign_record_fails_closed() {
        let mut store = MemStore::default();
        crate::ratelimit::ensure_creation_lock(&mut store).unwrap();
        let c = credits(5, None);
        let owner = Owner::Key("k");
        ensure_balance(&mut store, owner).unwrap();
        store.inject_conflicts = 3;
        let mut created = false;
        assert!(matches!(
            spend(&mut store, owner, &c, 2, 1, &mut created),
            Ok(Spend::Spent { remaining: 3, .. })
        ));
        assert!(!created);
        store
            .entries
            .insert(balance_key(owner), (vec![1, 2, 3], 99));
        assert_eq!(
            spend(&mut store, owner, &c, 1, 1, &mut created),
            Err(StoreError::Corrupt)
        );
    }
}

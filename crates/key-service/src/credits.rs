//! A key's credits as the key service keeps them (SPEC §14): what the proxies enforce (the
//! filter's [`Credits`]: `granted`, `refill`, the top-ups of one period, the serial a `set`
//! raises), what they reported spent, and the arithmetic of `add`, `subtract` and `set`. Plain
//! Rust, unit-tested; the period math is the filter's own ([`keygate::credits::period`]).

use super::views::{CreditsView, RefillView};
use keygate::credits::period;
use keygate::model::{Credits, Refill};
use serde_json::{json, Map, Value};

/// The largest `granted`, `amount` or top-up: what a JSON number holds exactly (2^53 - 1).
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;

/// What the proxies reported spent of a key's balance: in the period starting at `period`,
/// since the balance's serial was `serial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub period: u64,
    pub serial: u32,
    /// Net of refunds (a report may carry a refund of an earlier report's spending).
    pub amount: i64,
}

/// A key's credits: the balance the proxies enforce, and what the service knows of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCredits {
    pub credits: Credits,
    /// When the serial was last raised (a `set`, Unix seconds): spending reported as made in
    /// an earlier second is not counted against the new serial.
    pub set_at: Option<i64>,
    /// What the proxies reported spent (`None`: nothing yet).
    pub spent: Option<Spent>,
}

/// A change of a balance (`POST /v1/api-keys/{id}/credits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The remaining balance becomes `amount`: the serial is raised (spending counts anew).
    Set,
    /// `amount` more in the current period.
    Add,
    /// `amount` less in the current period.
    Subtract,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Set, Op::Add, Op::Subtract];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Add => "add",
            Op::Subtract => "subtract",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

fn unix(now: i64) -> u64 {
    u64::try_from(now).unwrap_or(0)
}

/// The top-ups that count at `now`: the stored ones if they are of the current period, else 0.
pub fn top_up_now(c: &Credits, now: i64) -> i64 {
    let (start, _) = period(c, unix(now));
    match c.top_up {
        Some((p, amount)) if p == start => amount,
        _ => 0,
    }
}

/// `op` of `amount` applied to `c` at `now`: `add`/`subtract` change the current period's
/// top-ups (a stored top-up of an ended period counting as 0 first); `set` raises the serial
/// and makes the top-up `amount - granted`, so that `granted + top-up` is `amount` with nothing
/// spent. `Err`: the message of a 400 (a top-up beyond ±[`MAX_AMOUNT`]).
pub fn apply(c: &Credits, op: Op, amount: u64, now: i64) -> Result<Credits, String> {
    let (start, _) = period(c, unix(now));
    let amount = i128::from(amount.min(MAX_AMOUNT));
    let current = i128::from(top_up_now(c, now));
    let (top_up, serial) = match op {
        Op::Add => (current + amount, c.serial),
        Op::Subtract => (current - amount, c.serial),
        Op::Set => (
            amount - i128::from(c.granted),
            c.serial.checked_add(1).ok_or_else(|| {
                "op: this balance was set 4294967295 times; remove and grant its credits again"
                    .to_string()
            })?,
        ),
    };
    if top_up.unsigned_abs() > u128::from(MAX_AMOUNT) {
        return Err(format!(
            "amount: this period's top-ups would pass ±{MAX_AMOUNT}"
        ));
    }
    let top_up = i64::try_from(top_up).map_err(|_| "amount: too large".to_string())?;
    Ok(Credits {
        top_up: (top_up != 0 || op == Op::Set).then_some((start, top_up)),
        serial,
        ..*c
    })
}

impl KeyCredits {
    /// What the proxies reported spent in the current period under the current serial.
    pub fn spent_now(&self, now: i64) -> i64 {
        let (start, _) = period(&self.credits, unix(now));
        match self.spent {
            Some(s) if s.period == start && s.serial == self.credits.serial => s.amount,
            _ => 0,
        }
    }

    /// `max(0, granted + the current top-ups - spent)`.
    pub fn remaining(&self, now: i64) -> u64 {
        let left = i128::from(self.credits.granted) + i128::from(top_up_now(&self.credits, now))
            - i128::from(self.spent_now(now));
        u64::try_from(left.max(0)).unwrap_or(u64::MAX)
    }

    /// The key's answer's `credits`.
    pub fn view(&self, now: i64) -> CreditsView {
        let (_, reset) = period(&self.credits, unix(now));
        CreditsView {
            granted: self.credits.granted,
            refill: self.credits.refill.map(|r| match r {
                Refill::Day => RefillView {
                    interval: "day".into(),
                    day: None,
                },
                Refill::Month { day } => RefillView {
                    interval: "month".into(),
                    day: Some(day),
                },
            }),
            remaining: self.remaining(now),
            spent: u64::try_from(self.spent_now(now).max(0)).unwrap_or(0),
            reset: reset.and_then(|r| i64::try_from(r).ok()),
        }
    }

    /// The credits a roll gives the new key: the same grant, starting with what this key has
    /// left at `now` (the new key's balance is a new one at the proxies).
    pub fn carried_over(&self, now: i64) -> Credits {
        let (start, _) = period(&self.credits, unix(now));
        let left = i64::try_from(self.remaining(now)).unwrap_or(i64::MAX);
        let top_up = left.saturating_sub(i64::try_from(self.credits.granted).unwrap_or(0));
        Credits {
            granted: self.credits.granted,
            refill: self.credits.refill,
            top_up: (top_up != 0).then_some((start, top_up)),
            serial: 0,
        }
    }
}

/// `refill` as the API and the key set write it.
pub fn refill_json(r: Refill) -> Value {
    match r {
        Refill::Day => json!({"interval": "day"}),
        Refill::Month { day } => json!({"interval": "month", "day": day}),
    }
}

/// `credits` as a key-set entry carries it (SPEC §4 with the key service's `top_up` and
/// `serial`; each left out when unset).
pub fn entry_json(c: &Credits) -> Value {
    let mut o = Map::new();
    o.insert("granted".into(), json!(c.granted));
    if let Some(r) = c.refill {
        o.insert("refill".into(), refill_json(r));
    }
    if let Some((period, amount)) = c.top_up {
        o.insert("top_up".into(), json!({"period": period, "amount": amount}));
    }
    if c.serial != 0 {
        o.insert("serial".into(), json!(c.serial));
    }
    Value::Object(o)
}

/// A refill as stored: `day`, or `month:<day>`.
pub fn refill_text(r: Refill) -> String {
    match r {
        Refill::Day => "day".into(),
        Refill::Month { day } => format!("month:{day}"),
    }
}

/// [`refill_text`] read back (`None`: not one).
pub fn parse_refill_text(s: &str) -> Option<Refill> {
    match s {
        "day" => Some(Refill::Day),
        _ => {
            let day: u8 = s.strip_prefix("month:")?.parse().ok()?;
            (1..=31).contains(&day).then_some(Refill::Month { day })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate::timestamp::parse_rfc3339;

    fn at(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    fn monthly(granted: u64) -> Credits {
        Credits {
            granted,
            refill: Some(Refill::Month { day: 1 }),
            top_up: None,
            serial: 0,
        }
    }

    fn with(c: Credits, spent: Option<Spent>) -> KeyCredits {
        KeyCredits {
            credits: c,
            set_at: None,
            spent,
        }
    }

    #[test]
    fn add_and_subtract_change_this_periods_top_up_only() {
        let now = at("2026-03-10T12:00:00Z");
        let march = at("2026-03-01T00:00:00Z") as u64;
        let c = apply(&monthly(100), Op::Add, 50, now).unwrap();
        assert_eq!(c.top_up, Some((march, 50)));
        assert_eq!(c.serial, 0);
        let c = apply(&c, Op::Add, 25, now).unwrap();
        assert_eq!(c.top_up, Some((march, 75)));
        let c = apply(&c, Op::Subtract, 200, now).unwrap();
        assert_eq!(c.top_up, Some((march, -125)));
        assert_eq!(with(c, None).remaining(now), 0, "never below zero");
        // Back to nothing: no top-up kept.
        let c = apply(&c, Op::Add, 125, now).unwrap();
        assert_eq!(c.top_up, None);

        // A top-up of an ended period counts as 0, then is replaced.
        let april = at("2026-04-02T00:00:00Z");
        let c = apply(&monthly(100), Op::Add, 40, now).unwrap();
        assert_eq!(top_up_now(&c, now), 40);
        assert_eq!(top_up_now(&c, april), 0);
        assert_eq!(with(c, None).remaining(april), 100);
        let c = apply(&c, Op::Add, 5, april).unwrap();
        assert_eq!(
            c.top_up,
            Some((at("2026-04-01T00:00:00Z") as u64, 5)),
            "not 45: March's top-up ended with March"
        );
        // Without a refill there is one period, starting at 0.
        let once = Credits {
            refill: None,
            ..monthly(10)
        };
        let c = apply(&once, Op::Subtract, 3, now).unwrap();
        assert_eq!(c.top_up, Some((0, -3)));
        assert_eq!(with(c, None).remaining(at("2030-01-01T00:00:00Z")), 7);
    }

    #[test]
    fn set_raises_the_serial_and_spending_counts_anew() {
        let now = at("2026-03-10T12:00:00Z");
        let march = at("2026-03-01T00:00:00Z") as u64;
        let spent = Some(Spent {
            period: march,
            serial: 0,
            amount: 90,
        });
        let before = with(apply(&monthly(100), Op::Add, 20, now).unwrap(), spent);
        assert_eq!((before.spent_now(now), before.remaining(now)), (90, 30));
        let c = apply(&before.credits, Op::Set, 7, now).unwrap();
        assert_eq!((c.serial, c.top_up), (1, Some((march, -93))));
        let after = with(c, spent);
        assert_eq!(
            after.spent_now(now),
            0,
            "spent under serial 0 no longer counts"
        );
        assert_eq!(after.remaining(now), 7);
        // Spending reported under the new serial counts.
        let later = with(
            c,
            Some(Spent {
                period: march,
                serial: 1,
                amount: 2,
            }),
        );
        assert_eq!(later.remaining(now), 5);
        assert_eq!(
            later.view(now),
            CreditsView {
                granted: 100,
                refill: Some(RefillView {
                    interval: "month".into(),
                    day: Some(1)
                }),
                remaining: 5,
                spent: 2,
                reset: Some(at("2026-04-01T00:00:00Z")),
            }
        );
        // Set to what is granted: a top-up of 0 is still this period's (the serial moved).
        let c = apply(&monthly(100), Op::Set, 100, now).unwrap();
        assert_eq!((c.serial, c.top_up), (1, Some((march, 0))));
        // In the next period the set's top-up is gone: the grant again, the serial stays.
        let april = at("2026-04-05T00:00:00Z");
        let c = apply(&monthly(100), Op::Set, 3, now).unwrap();
        assert_eq!(with(c, None).remaining(april), 100);
        assert_eq!(c.serial, 1);
    }

    #[test]
    fn spending_of_an_ended_period_or_a_negative_net_counts_as_nothing() {
        let now = at("2026-03-10T12:00:00Z");
        let feb = at("2026-02-01T00:00:00Z") as u64;
        let k = with(
            monthly(10),
            Some(Spent {
                period: feb,
                serial: 0,
                amount: 10,
            }),
        );
        assert_eq!((k.spent_now(now), k.remaining(now)), (0, 10));
        let k = with(
            monthly(10),
            Some(Spent {
                period: at("2026-03-01T00:00:00Z") as u64,
                serial: 0,
                amount: -4,
            }),
        );
        assert_eq!(k.view(now).spent, 0);
        assert_eq!(k.remaining(now), 14, "a refund beyond what was reported");
    }

    #[test]
    fn top_ups_are_bounded_and_a_roll_carries_what_is_left() {
        let now = at("2026-03-10T12:00:00Z");
        let c = apply(&monthly(0), Op::Add, MAX_AMOUNT, now).unwrap();
        assert_eq!(
            apply(&c, Op::Add, 1, now),
            Err(format!(
                "amount: this period's top-ups would pass ±{MAX_AMOUNT}"
            ))
        );
        let c = apply(&monthly(MAX_AMOUNT), Op::Set, 0, now).unwrap();
        assert_eq!(c.top_up.map(|t| t.1), Some(-(MAX_AMOUNT as i64)));

        let march = at("2026-03-01T00:00:00Z") as u64;
        let k = with(
            apply(&monthly(100), Op::Add, 10, now).unwrap(),
            Some(Spent {
                period: march,
                serial: 0,
                amount: 30,
            }),
        );
        let new = k.carried_over(now);
        assert_eq!((new.granted, new.serial), (100, 0));
        assert_eq!(new.top_up, Some((march, -20)));
        assert_eq!(with(new, None).remaining(now), 80);
        assert_eq!(with(monthly(5), None).carried_over(now).top_up, None);
    }

    #[test]
    fn the_entry_and_the_stored_refill() {
        let c = Credits {
            granted: 10,
            refill: Some(Refill::Day),
            top_up: Some((86_400, -3)),
            serial: 2,
        };
        assert_eq!(
            entry_json(&c),
            json!({"granted": 10, "refill": {"interval": "day"}, "top_up": {"period": 86400, "amount": -3}, "serial": 2})
        );
        assert_eq!(
            entry_json(&monthly(1)),
            json!({"granted": 1, "refill": {"interval": "month", "day": 1}})
        );
        for r in [Refill::Day, Refill::Month { day: 31 }] {
            assert_eq!(parse_refill_text(&refill_text(r)), Some(r));
        }
        for bad in ["", "week", "month:0", "month:32", "month:x"] {
            assert_eq!(parse_refill_text(bad), None);
        }
        assert_eq!(Op::parse("add"), Some(Op::Add));
        assert_eq!(Op::parse("Add"), None);
    }
}

//! Credits' statements (SPEC §14, migration 10): a key's balance settings are columns of
//! `api_keys` (what the key set carries: `granted`, `refill`, the top-ups of one period, the
//! serial a `set` raises); what the proxies report spent goes, with the report's counts, into
//! `credit_balances` (one row per key: the period and serial it counts, reset in place when
//! either moves on), and a `credits.exhausted` event is queued at most once per key, period and
//! serial (`credit_alerts`, one row per key), in the report's transaction.

use super::interface::Result;
use super::usage::{placeholders, saturating_sum, ROWS_PER_STATEMENT};
use super::webhooks;
use crate::credits::{apply, parse_refill_text, refill_text, KeyCredits, Op, Spent};
use crate::model::TenantBalance;
use crate::model::UsageEntry;
use keygate::credits::period;
use keygate::model::Credits;
use keygate::timestamp::format_rfc3339;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;

/// The columns [`from_row`] reads (`k`: api_keys, `b`: credit_balances joined on the key).
pub(super) const COLUMNS: &str = "k.credits_granted, k.credits_refill, k.credits_top_up_period, \
     k.credits_top_up_amount, k.credits_serial, k.credits_set_at, b.period AS spent_period, \
     b.serial AS spent_serial, b.spent AS spent";

/// The join [`COLUMNS`] needs.
pub(super) const JOIN: &str = "LEFT JOIN credit_balances b ON b.key_id = k.id";

fn decode(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("a stored {what} is not one this service writes").into())
}

fn unsigned(n: i64, what: &str) -> std::result::Result<u64, sqlx::Error> {
    u64::try_from(n).map_err(|_| decode(what))
}

/// A key's credits from a row with [`COLUMNS`] (`None`: the key has none).
pub(super) fn from_row(row: &AnyRow) -> std::result::Result<Option<KeyCredits>, sqlx::Error> {
    let Some(granted) = row.try_get::<Option<i64>, _>("credits_granted")? else {
        return Ok(None);
    };
    let refill = match row.try_get::<Option<String>, _>("credits_refill")? {
        None => None,
        Some(t) => Some(parse_refill_text(&t).ok_or_else(|| decode("refill"))?),
    };
    let top_up = match (
        row.try_get::<Option<i64>, _>("credits_top_up_period")?,
        row.try_get::<Option<i64>, _>("credits_top_up_amount")?,
    ) {
        (Some(p), Some(a)) => Some((unsigned(p, "top-up period")?, a)),
        _ => None,
    };
    let serial =
        u32::try_from(row.try_get::<i64, _>("credits_serial")?).map_err(|_| decode("serial"))?;
    let spent = match (
        row.try_get::<Option<i64>, _>("spent_period")?,
        row.try_get::<Option<i64>, _>("spent_serial")?,
        row.try_get::<Option<i64>, _>("spent")?,
    ) {
        (Some(p), Some(s), Some(amount)) => Some(Spent {
            period: unsigned(p, "period")?,
            serial: u32::try_from(s).map_err(|_| decode("serial"))?,
            amount,
        }),
        _ => None,
    };
    Ok(Some(KeyCredits {
        credits: Credits {
            granted: unsigned(granted, "grant")?,
            refill,
            top_up,
            serial,
        },
        set_at: row.try_get("credits_set_at")?,
        spent,
    }))
}

/// The key service's changes of a key's tenant's balance, from a row with the join's
/// `tenant_top_up_period`, `tenant_top_up_amount` and `tenant_serial` (`None`: none).
pub(super) fn tenant_from_row(
    row: &AnyRow,
) -> std::result::Result<Option<TenantBalance>, sqlx::Error> {
    let Some(serial) = row.try_get::<Option<i64>, _>("tenant_serial")? else {
        return Ok(None);
    };
    let top_up = match (
        row.try_get::<Option<i64>, _>("tenant_top_up_period")?,
        row.try_get::<Option<i64>, _>("tenant_top_up_amount")?,
    ) {
        (Some(p), Some(a)) => Some((unsigned(p, "top-up period")?, a)),
        _ => None,
    };
    Ok(Some(TenantBalance {
        top_up,
        serial: u32::try_from(serial).map_err(|_| decode("serial"))?,
    }))
}

/// Changes `tenant`'s balance (its grant `base`, the configuration's) by `op` of `amount`, at
/// `seq`: its row, and every key of the tenant moved to `seq` so the next key-set delta carries
/// them with the new balance. The new balance, or the message of a 400.
pub(super) async fn change_tenant(
    tx: &mut AnyConnection,
    tenant: &str,
    base: &Credits,
    op: Op,
    amount: u64,
    at: i64,
    seq: i64,
) -> Result<std::result::Result<Credits, String>> {
    let row = sqlx::query(
        "SELECT top_up_period AS tenant_top_up_period, top_up_amount AS tenant_top_up_amount, \
         serial AS tenant_serial FROM tenant_balances WHERE tenant = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    let stored = row.as_ref().map(tenant_from_row).transpose()?.flatten();
    let current = Credits {
        top_up: stored.and_then(|b| b.top_up),
        serial: stored.map_or(0, |b| b.serial),
        ..*base
    };
    let changed = match apply(&current, op, amount, at) {
        Ok(c) => c,
        Err(m) => return Ok(Err(m)),
    };
    let (period, top_up) = match changed.top_up {
        Some((p, a)) => (Some(i64::try_from(p).unwrap_or(i64::MAX)), Some(a)),
        None => (None, None),
    };
    sqlx::query(
        "INSERT INTO tenant_balances (tenant, top_up_period, top_up_amount, serial) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant) DO UPDATE SET \
         top_up_period = excluded.top_up_period, top_up_amount = excluded.top_up_amount, \
         serial = excluded.serial",
    )
    .bind(tenant)
    .bind(period)
    .bind(top_up)
    .bind(i64::from(changed.serial))
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE api_keys SET seq = $1 WHERE tenant = $2")
        .bind(seq)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    Ok(Ok(changed))
}

/// The settings columns' values of `c` (`None`: no credits): granted, refill, top-up period
/// and amount, serial, when set.
#[allow(clippy::type_complexity)]
pub(super) fn params(
    c: Option<&KeyCredits>,
) -> (
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
    Option<i64>,
) {
    let Some(k) = c else {
        return (None, None, None, None, 0, None);
    };
    let c = &k.credits;
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    (
        Some(as_i64(c.granted)),
        c.refill.map(refill_text),
        c.top_up.map(|(p, _)| as_i64(p)),
        c.top_up.map(|(_, a)| a),
        i64::from(c.serial),
        k.set_at,
    )
}

/// Writes a key's top-up and serial after a credits call (`set_at`: when the serial moved).
pub(super) async fn write_balance(
    conn: &mut AnyConnection,
    id: &str,
    c: &Credits,
    set_at: Option<i64>,
    seq: i64,
) -> std::result::Result<(), sqlx::Error> {
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    sqlx::query(
        "UPDATE api_keys SET credits_top_up_period = $1, credits_top_up_amount = $2, \
         credits_serial = $3, credits_set_at = $4, seq = $5 WHERE id = $6",
    )
    .bind(c.top_up.map(|(p, _)| as_i64(p)))
    .bind(c.top_up.map(|(_, a)| a))
    .bind(i64::from(c.serial))
    .bind(set_at)
    .bind(seq)
    .bind(id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// One key of a report that spent credits or was refused for them, as the service has it.
struct Known {
    tenant: Option<String>,
    prefix: String,
    name: Option<String>,
    environment: Option<String>,
    credits: Option<KeyCredits>,
}

/// The keys `ids` with their credits.
async fn known(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> std::result::Result<BTreeMap<String, Known>, sqlx::Error> {
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT k.id, k.tenant, k.prefix, k.name, k.environment, {COLUMNS} FROM api_keys k \
             {JOIN} WHERE k.id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.insert(
                row.try_get("id")?,
                Known {
                    tenant: row.try_get("tenant")?,
                    prefix: row.try_get("prefix")?,
                    name: row.try_get("name")?,
                    environment: row.try_get("environment")?,
                    credits: from_row(&row)?,
                },
            );
        }
    }
    Ok(out)
}

/// When an entry's requests happened: its `last_used`, else when the report arrived.
fn time_of(e: &UsageEntry, now: i64) -> i64 {
    e.last_used.unwrap_or(now)
}

/// Whose balance `e` spent and its period at the entry's time: the key's own (under its
/// current serial; `None` for spending from before the second of the last `set`: a report
/// arriving after a `set` counts against the new serial, but for what it says was used
/// earlier), else its tenant's in the service's configuration (serial 0).
fn balance_of<'a>(
    e: &UsageEntry,
    k: &'a Known,
    tenants: &'a [(String, Credits)],
    now: i64,
) -> Option<(&'static str, &'a Credits, u64, Option<u64>)> {
    let t = time_of(e, now);
    let (kind, credits) = match &k.credits {
        Some(own) if own.set_at.is_some_and(|s| t < s) => return None,
        Some(own) => ("key", &own.credits),
        None => {
            let tenant = k.tenant.as_deref()?;
            let (_, c) = tenants.iter().find(|(name, _)| name == tenant)?;
            ("tenant", c)
        }
    };
    let (start, reset) = period(credits, u64::try_from(t).unwrap_or(0));
    Some((kind, credits, start, reset))
}

/// What a report's `entries` (of keys the service has) spent, added to their balances; and,
/// with `alerts` (the tenants' credits of the configuration; `None`: no webhooks), a
/// `credits.exhausted` event for each key refused for credits (`usage_exceeded`) whose balance
/// had none queued in that period under that serial. In the report's transaction.
pub(super) async fn record(
    conn: &mut AnyConnection,
    entries: &[&UsageEntry],
    now: i64,
    alerts: Option<&[(String, Credits)]>,
) -> Result<()> {
    let exceeded = |e: &UsageEntry| alerts.is_some() && e.count_of("usage_exceeded") > 0;
    let mut ids: Vec<&str> = entries
        .iter()
        .filter(|e| e.credits != 0 || exceeded(e))
        .map(|e| e.id.as_str())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    let keys = known(conn, &ids).await?;

    // Spent: by key, period and serial (a report may name a key twice).
    let mut spent: BTreeMap<(&str, u64, u32), i64> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.credits != 0) {
        let Some(k) = keys.get(&e.id) else { continue };
        let Some(own) = &k.credits else { continue };
        if let Some(("key", _, start, _)) = balance_of(e, k, &[], now) {
            let slot = spent
                .entry((e.id.as_str(), start, own.credits.serial))
                .or_default();
            *slot = slot.saturating_add(e.credits);
        }
    }
    // One row per key and statement: a key with rows of two periods (a report across a
    // refill) is written in two rounds, the earlier first.
    let mut rounds: Vec<Vec<(&str, u64, u32, i64)>> = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for ((id, start, serial), n) in spent {
        let round = seen.entry(id).or_default();
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        if let Some(r) = rounds.get_mut(*round) {
            r.push((id, start, serial, n));
        }
        *round += 1;
    }
    // A row of an earlier period, or of an earlier serial in the same period, is replaced; a
    // later one is kept (this report's spending ended with its period, or was made before a
    // `set`).
    let keep = "credit_balances.period > excluded.period OR (credit_balances.period = \
                excluded.period AND credit_balances.serial > excluded.serial)";
    let same = "credit_balances.period = excluded.period AND credit_balances.serial = \
                excluded.serial";
    for round in rounds {
        for chunk in round.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO credit_balances (key_id, period, serial, spent) VALUES {} \
                 ON CONFLICT (key_id) DO UPDATE SET \
                 spent = CASE WHEN {same} THEN {sum} WHEN {keep} THEN credit_balances.spent \
                 ELSE excluded.spent END, \
                 serial = CASE WHEN {keep} THEN credit_balances.serial ELSE excluded.serial END, \
                 period = CASE WHEN {keep} THEN credit_balances.period ELSE excluded.period END",
                placeholders(chunk.len(), 4),
                sum = saturating_sum("credit_balances.spent", "excluded.spent"),
            );
            let mut q = sqlx::query(&sql);
            for (id, start, serial, n) in chunk {
                q = q
                    .bind(*id)
                    .bind(i64::try_from(*start).unwrap_or(i64::MAX))
                    .bind(i64::from(*serial))
                    .bind(*n);
            }
            q.execute(&mut *conn).await?;
        }
    }

    let Some(tenants) = alerts else {
        return Ok(());
    };
    // Refused for credits: one event per key, period and serial.
    let mut due: BTreeMap<&str, (&'static str, &Credits, u64, Option<u64>)> = BTreeMap::new();
    for e in entries.iter().filter(|e| exceeded(e)) {
        let Some(k) = keys.get(&e.id) else { continue };
        let Some(b) = balance_of(e, k, tenants, now) else {
            continue;
        };
        let later = due
            .get(e.id.as_str())
            .is_none_or(|d| (b.2, b.1.serial) > (d.2, d.1.serial));
        if later {
            due.insert(e.id.as_str(), b);
        }
    }
    let due: Vec<_> = due.into_iter().collect();
    for chunk in due.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO credit_alerts (key_id, period, serial) VALUES {} \
             ON CONFLICT (key_id) DO UPDATE SET period = excluded.period, serial = excluded.serial \
             WHERE credit_alerts.period < excluded.period OR (credit_alerts.period = \
             excluded.period AND credit_alerts.serial < excluded.serial) RETURNING key_id",
            placeholders(chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for (id, (_, credits, start, _)) in chunk {
            q = q
                .bind(*id)
                .bind(i64::try_from(*start).unwrap_or(i64::MAX))
                .bind(i64::from(credits.serial));
        }
        let queued: Vec<String> = q
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get("key_id"))
            .collect::<std::result::Result<_, _>>()?;
        for id in queued {
            let (Some(k), Some((_, (kind, credits, start, reset)))) =
                (keys.get(&id), chunk.iter().find(|(d, _)| *d == id.as_str()))
            else {
                continue;
            };
            let as_time = |t: u64| format_rfc3339(i64::try_from(t).unwrap_or(i64::MAX));
            let data = json!({
                "key_id": id, "tenant": k.tenant, "prefix": k.prefix, "name": k.name,
                "environment": k.environment,
                "balance": kind, "granted": credits.granted, "serial": credits.serial,
                "period_start": as_time(*start), "reset": reset.map(as_time),
            });
            webhooks::enqueue(conn, "credits.exhausted", data, now).await?;
        }
    }
    Ok(())
}

//! Webhooks (SPEC §15): key events, queued in the transaction of the change they announce
//! (`store/webhooks.rs`), delivered by one task per replica as JSON with
//! `Keygate-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`, retried with backoff until
//! [`ATTEMPTS`] have failed. Delivery never blocks the change: the change is committed first.

use crate::metrics::{metrics, Delivered};
use crate::state::now;
use crate::store::{Delivery, DeliveryOutcome, Store};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// Where and with what secret events go (`--webhook-url`, `--webhook-secret`).
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

/// Attempts before a delivery is given up: waits of 2 s, 4 s, … at most an hour between
/// them, about 5 hours in all.
pub const ATTEMPTS: i64 = 16;
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the queue is looked at.
const POLL: Duration = Duration::from_millis(500);
/// Deliveries attempted at once.
const BATCH: usize = 8;

/// The signature header's value for `body` sent at `t`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes a key of any length: never reached.
        Err(_) => return format!("t={t},v1="),
    };
    mac.update(format!("{t}.").as_bytes());
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// What one attempt's answer means.
fn outcome(d: &Delivery, answered: Result<u16, String>, now: i64) -> DeliveryOutcome {
    let failed = d.attempts + 1;
    let (status, error) = match answered {
        Ok(s) if (200..300).contains(&s) => {
            return DeliveryOutcome::Delivered {
                status: i64::from(s),
            }
        }
        Ok(s) => (Some(i64::from(s)), format!("answered {s}")),
        Err(e) => (None, e),
    };
    if failed >= ATTEMPTS {
        DeliveryOutcome::GaveUp { status, error }
    } else {
        let wait = (1i64 << failed.min(12)).min(3600);
        DeliveryOutcome::Retry {
            at: now + wait,
            status,
            error,
        }
    }
}

/// Sends one delivery (blocking: run off the async threads).
fn send(webhook: &Webhook, d: &Delivery) -> Result<u16, String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(ATTEMPT_TIMEOUT))
            .max_redirects(0)
            .build(),
    );
    let t = now();
    agent
        .post(&webhook.url)
        .header("content-type", "application/json")
        .header("user-agent", "keygate-serve")
        .header("keygate-event", &d.event)
        .header("keygate-delivery", &d.id)
        .header("keygate-signature", &signature(&webhook.secret, t, &d.body))
        .send(d.body.as_bytes())
        .map(|a| a.status().as_u16())
        .map_err(|e| e.to_string())
}

/// Delivers due events until the service stops.
pub async fn deliver<S: Store>(store: &S, webhook: Webhook) {
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let due = match store.claim_deliveries(now(), BATCH).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("keygate serve: webhook queue unreadable (tried again): {e:?}");
                continue;
            }
        };
        let attempts = due.into_iter().map(|d| {
            let webhook = webhook.clone();
            async move {
                let sent = {
                    let d = d.clone();
                    tokio::task::spawn_blocking(move || send(&webhook, &d))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()))
                };
                let result = outcome(&d, sent, now());
                metrics().webhook(match result {
                    DeliveryOutcome::Delivered { .. } => Delivered::delivered,
                    DeliveryOutcome::Retry { .. } => Delivered::retried,
                    DeliveryOutcome::GaveUp { .. } => Delivered::given_up,
                });
                if let DeliveryOutcome::GaveUp { error, .. } = &result {
                    eprintln!(
                        "keygate serve: webhook {} ({}) given up after {ATTEMPTS} attempts: {error}",
                        d.id, d.event
                    );
                }
                (d.id, result)
            }
        });
        for (id, result) in futures_join(attempts).await {
            if let Err(e) = store.finish_delivery(&id, &result, now()).await {
                // Claimed: tried again when the claim lapses.
                eprintln!("keygate serve: webhook {id}: outcome not recorded: {e:?}");
            }
        }
    }
}

/// Runs the attempts at once and collects their results.
async fn futures_join<F: std::future::Future<Output = T> + Send + 'static, T: Send + 'static>(
    attempts: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = attempts.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body() {
        // As Python computes it: hmac.new(b"whsec", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("whsec", 1_700_000_000, "{}"),
            "t=1700000000,v1=".to_string()
                + &{
                    let mut m = Hmac::<Sha256>::new_from_slice(b"whsec").unwrap();
                    m.update(b"1700000000.{}");
                    hex::encode(m.finalize().into_bytes())
                }
        );
    }

    fn delivery(attempts: i64) -> Delivery {
        Delivery {
            id: "evt_1".into(),
            event: "key.created".into(),
            body: "{}".into(),
            created_at: 0,
            attempts,
            next_attempt_at: Some(0),
            delivered_at: None,
            last_status: None,
            last_error: None,
        }
    }

    #[test]
    fn failures_back_off_then_give_up() {
        assert_eq!(
            outcome(&delivery(0), Ok(204), 100),
            DeliveryOutcome::Delivered { status: 204 }
        );
        assert_eq!(
            outcome(&delivery(0), Ok(500), 100),
            DeliveryOutcome::Retry {
                at: 102,
                status: Some(500),
                error: "answered 500".into()
            }
        );
        assert_eq!(
            outcome(&delivery(3), Err("refused".into()), 100),
            DeliveryOutcome::Retry {
                at: 116,
                status: None,
                error: "refused".into()
            }
        );
        assert_eq!(
            outcome(&delivery(13), Ok(502), 0),
            DeliveryOutcome::Retry {
                at: 3600,
                status: Some(502),
                error: "answered 502".into()
            }
        );
        assert_eq!(
            outcome(&delivery(ATTEMPTS - 1), Ok(410), 0),
            DeliveryOutcome::GaveUp {
                status: Some(410),
                error: "answered 410".into()
            }
        );
    }
}

//! Where keys and usage live: one small trait, [`Store`], and its SQL implementation that runs on
//! SQLite (embedded, a file in WAL mode) and PostgreSQL (several service replicas on one
//! database) through sqlx's `Any` driver. The few places where the two dialects differ are in
//! [`Backend`].
//!
//! Versions of the key set: every change to `api_keys` takes the next value of one counter row
//! (`keygate_meta.seq`) inside its transaction. Taking it locks that row until commit, so writers
//! commit in counter order (on PostgreSQL across replicas too) and a reader's snapshot always holds
//! a prefix of the changes: `version` = `<database epoch>-<seq>`, and the delta since a version
//! is the rows with a larger `seq`. The epoch (random, made when the database is created) keeps
//! a version of another database from ever being taken for one of this one.

//!
//! The steps: [`interface`] (the trait and its records), [`schema`] (the two backends,
//! migrations, the epoch), [`sql`] (the statements; [`requests`]: the request log's; [`leaks`]:
//! leak reports; [`webhooks`]: the deliveries queued with the changes they announce; [`credits`]:
//! balances, what the proxies spent, `credits.exhausted`).

mod audit;
mod credits;
mod interface;
mod leaks;
mod portal;
mod requests;
mod schema;
mod sessions;
mod sql;
mod usage;
mod webhooks;

pub use interface::*;
pub use schema::Backend;
pub use sql::{OpenError, SqlStore};
pub use webhooks::EVENTS as WEBHOOK_EVENTS;

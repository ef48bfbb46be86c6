//! Writing the request log in batches (SPEC §13): every export's records go to one writer task,
//! which takes what has queued up (from every Envoy and worker at once) and stores it in one
//! transaction, then answers each export. An export is answered only once its records are
//! stored (or not): Envoy never hears "stored" for a record that was not.
//!
//! The queue is bounded: when it is full an export is answered at once (`UNAVAILABLE`), never
//! held, so a slow database slows no proxy (Envoy drops the records and counts them).

use crate::metrics::{metrics, Logged};
use crate::request_log::RequestRecord;
use crate::store::Store;
use tokio::sync::{mpsc, oneshot};

/// Exports waiting for the writer at most.
const QUEUE: usize = 256;
/// Records per transaction at most.
const MAX_BATCH: usize = 5_000;

/// Why records were not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// The queue is full: the database is behind.
    Busy,
    /// The database failed the write.
    Failed,
}

struct Batch {
    records: Vec<RequestRecord>,
    done: oneshot::Sender<Result<(), NotStored>>,
}

/// The handle exports write through.
pub struct RequestLog {
    queue: mpsc::Sender<Batch>,
}

/// The writer's end, run by [`write_batches`].
pub struct Writer(mpsc::Receiver<Batch>);

pub fn request_log() -> (RequestLog, Writer) {
    let (queue, rx) = mpsc::channel(QUEUE);
    (RequestLog { queue }, Writer(rx))
}

impl RequestLog {
    /// Stores `records`, answering once they are (or cannot be).
    pub async fn write(&self, records: Vec<RequestRecord>) -> Result<(), NotStored> {
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len() as u64;
        let (done, stored) = oneshot::channel();
        if self.queue.try_send(Batch { records, done }).is_err() {
            metrics().logged(Logged::dropped, n);
            return Err(NotStored::Busy);
        }
        // The writer gone (the service stopping): not stored.
        stored.await.unwrap_or(Err(NotStored::Failed))
    }
}

/// The writer task: until the handle is dropped, takes every batch queued and stores them in one
/// transaction.
pub async fn write_batches<S: Store>(store: &S, mut writer: Writer) {
    while let Some(first) = writer.0.recv().await {
        let mut batches = vec![first];
        let mut n = batches[0].records.len();
        while n < MAX_BATCH {
            match writer.0.try_recv() {
                Ok(b) => {
                    n += b.records.len();
                    batches.push(b);
                }
                Err(_) => break,
            }
        }
        let records: Vec<RequestRecord> = batches
            .iter_mut()
            .flat_map(|b| std::mem::take(&mut b.records))
            .collect();
        let outcome = match store.record_requests(&records).await {
            Ok(()) => {
                metrics().logged(Logged::stored, records.len() as u64);
                Ok(())
            }
            Err(e) => {
                eprintln!(
                    "keygate serve: request log: {} records not stored: {e:?}",
                    records.len()
                );
                metrics().database_error();
                metrics().logged(Logged::dropped, records.len() as u64);
                Err(NotStored::Failed)
            }
        };
        for b in batches {
            let _ = b.done.send(outcome);
        }
    }
}

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
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Exports waiting for the writer at most, and records.
const QUEUE: usize = 256;
const QUEUED_RECORDS: usize = 200_000;
/// Records per transaction at most.
const MAX_BATCH: usize = 5_000;
/// The longest a write may take (a database that hangs is a failed write, not a stalled log).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// The batch's place among the queued records, given back once it is written.
    _room: OwnedSemaphorePermit,
}

/// The handle exports write through.
pub struct RequestLog {
    queue: mpsc::Sender<Batch>,
    room: Arc<Semaphore>,
}

/// The writer's end, run by [`write_batches`].
pub struct Writer(mpsc::Receiver<Batch>);

pub fn request_log() -> (RequestLog, Writer) {
    let (queue, rx) = mpsc::channel(QUEUE);
    (
        RequestLog {
            queue,
            room: Arc::new(Semaphore::new(QUEUED_RECORDS)),
        },
        Writer(rx),
    )
}

impl RequestLog {
    /// Stores `records`, answering once they are (or cannot be).
    pub async fn write(&self, records: Vec<RequestRecord>) -> Result<(), NotStored> {
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len() as u64;
        let (done, stored) = oneshot::channel();
        let room = u32::try_from(records.len())
            .ok()
            .and_then(|n| self.room.clone().try_acquire_many_owned(n).ok());
        let Some(room) = room else {
            metrics().logged(Logged::dropped, n);
            return Err(NotStored::Busy);
        };
        if self
            .queue
            .try_send(Batch {
                records,
                done,
                _room: room,
            })
            .is_err()
        {
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
        let written = tokio::time::timeout(WRITE_TIMEOUT, store.record_requests(&records))
            .await
            .unwrap_or_else(|_| {
                Err(crate::store::StoreError::Unavailable(
                    "the write took longer than 30 s".into(),
                ))
            });
        let outcome = match written {
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

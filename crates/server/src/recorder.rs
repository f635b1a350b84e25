//! Execution records are written behind the request path: a request hands its record to the
//! recorder and answers; a background task writes records in batches, one transaction each.
//! Until a record is in the store, `get` serves it from memory, so a caller never sees an
//! execution go missing between its answer and the next write.
//!
//! Before the answer is released, each record is also appended to a journal with one
//! `write(2)`: the kernel keeps it through a crash of the process (`kill -9`), and the next
//! start writes what the journal holds to the store (see [`crate::journal`]). Every answered
//! request therefore has its record; a request still running at the crash is recorded as
//! failed.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::journal::Journal;
use crate::store::{self, Db, Execution};

/// Unwritten records by id, each with the sequence number of its latest version and whether that
/// version was handed to the writer, and the last sequence number handed out.
type Pending = (u64, HashMap<String, (u64, Execution, bool)>);

/// How long the writer waits for more records before writing a batch.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

pub struct Recorder {
    tx: mpsc::UnboundedSender<(u64, Execution)>,
    /// Records not yet written, with the sequence number of their latest version.
    pending: Mutex<Pending>,
    journal: Journal,
}

impl Recorder {
    /// The recorder and the receiving end its writer task drains.
    pub fn new(journal: Journal) -> (Recorder, mpsc::UnboundedReceiver<(u64, Execution)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Recorder {
                tx,
                pending: Mutex::new((0, HashMap::new())),
                journal,
            },
            rx,
        )
    }

    /// Notes an execution that has started. It is visible at once and journaled (a crash from
    /// here on leaves it recorded as failed); it is written to the store only if it is still
    /// running after a moment ([`Recorder::flush_running`]), so a quick request costs one
    /// store write, not two.
    pub fn begin(&self, e: Execution) {
        self.journal.append_then(e, |e| {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.0 += 1;
            let seq = pending.0;
            pending.1.insert(e.id.clone(), (seq, e, false));
        });
    }

    /// Records (a new version of) an execution and queues it for writing. It is in the journal
    /// when this returns, before the caller answers.
    pub fn record(&self, e: Execution) {
        // Journaled and queued under one lock, so the writer's rotation of the journal finds
        // every record of the old segment already queued.
        let sent = self.journal.append_then(e, |e| {
            let seq = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                pending.0 += 1;
                let seq = pending.0;
                pending.1.insert(e.id.clone(), (seq, e.clone(), true));
                seq
            };
            // A refused send hands the record back.
            self.tx.send((seq, e)).err().map(|refused| refused.0.1.id)
        });
        if let Some(id) = sent {
            tracing::error!("execution {id} could not be queued for writing");
        }
    }

    /// Takes back a record begun for a request that turned out not to be an execution (a
    /// remote node's throttle: the control plane begins the record before it knows). The
    /// journal gets a tombstone (`discarded`), which a replay skips.
    pub fn discard(&self, e: &Execution) {
        let mut tombstone = e.clone();
        tombstone.status = crate::journal::DISCARDED.into();
        self.journal.append_then(tombstone, |_| {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            // Once handed to the writer (a request waiting half a second for a throttle) it
            // stays; a throttle answers at once, long before that.
            if pending.1.get(&e.id).is_some_and(|(_, _, queued)| !*queued) {
                pending.1.remove(&e.id);
            }
        });
    }

    /// Queues for writing the executions begun before `started_before` (ms since the epoch) and
    /// not yet written, so that a long request is on disk while it runs. `None` queues all.
    pub fn flush_running(&self, started_before: Option<i64>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (seq, e, queued) in pending.1.values_mut() {
            if !*queued && started_before.is_none_or(|t| e.started_at < t) {
                *queued = true;
                let _ = self.tx.send((*seq, e.clone()));
            }
        }
    }

    /// Executions begun and not yet finished.
    fn unfinished(&self) -> Vec<Execution> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .1
            .values()
            .filter(|(_, e, _)| e.finished_at.is_none())
            .map(|(_, e, _)| e.clone())
            .collect()
    }

    /// A record not yet written, if there is one.
    pub fn get(&self, org: &str, id: &str) -> Option<Execution> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .1
            .get(id)
            .filter(|(_, e, _)| e.org == org)
            .map(|(_, e, _)| e.clone())
    }

    /// Writes records (begun by `replica`) until every sender is gone (the server is
    /// stopping), then returns.
    pub async fn run(
        &self,
        db: Db,
        replica: &str,
        mut rx: mpsc::UnboundedReceiver<(u64, Execution)>,
    ) {
        let mut batch = Vec::with_capacity(1024);
        while rx.recv_many(&mut batch, 1024).await > 0 {
            // Gather what arrives in the next few milliseconds too: one transaction for many
            // records instead of one (and three round trips to SQLite's thread) per request.
            // The writer sleeps through the window rather than listening: a record sent
            // meanwhile wakes nobody (listening, every request's record woke this task, which
            // the runtime may run on another, idle worker), and the window's records are taken
            // together below.
            tokio::time::sleep(BATCH_WINDOW).await;
            // New records go to a fresh journal segment from here; every record of the old
            // one was queued before the switch, so taking what is queued now gets them all,
            // and once they are committed the old segment can go.
            let done = self.journal.rotate(|| self.unfinished());
            while let Ok(item) = rx.try_recv() {
                batch.push(item);
            }
            // Keep the latest version of each execution in this batch.
            let mut latest: HashMap<String, (u64, Execution)> = HashMap::new();
            for (seq, e) in batch.drain(..) {
                latest.insert(e.id.clone(), (seq, e));
            }
            let records: Vec<Execution> = latest.values().map(|(_, e)| e.clone()).collect();
            let mut tries = 0;
            let mut written = true;
            let writing = std::time::Instant::now();
            while let Err(e) = store::upsert_executions(&db, replica, &records).await {
                tries += 1;
                tracing::error!(
                    "writing {} execution records failed (try {tries}): {e}",
                    records.len()
                );
                if tries >= 5 {
                    written = false;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
            }
            if !written {
                // Kept in memory (still served) and in the journal (replayed at the next start),
                // and tried again with the next batch.
                if let Some(done) = done {
                    tracing::error!("keeping journal segment {done} for the next start");
                    self.journal.keep(done);
                }
                for (seq, e) in latest.into_values() {
                    let _ = self.tx.send((seq, e));
                }
                continue;
            }
            tracing::debug!(
                records = records.len(),
                ms = writing.elapsed().as_secs_f64() * 1e3,
                "execution records written"
            );
            if let Some(done) = done {
                self.journal.retire(done);
            }
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (id, (seq, _)) in latest {
                if pending.1.get(&id).is_some_and(|(s, _, _)| *s == seq) {
                    pending.1.remove(&id);
                }
            }
        }
    }

    /// The unwritten records of an org that `keep` selects.
    pub fn pending(&self, org: &str, keep: impl Fn(&Execution) -> bool) -> Vec<Execution> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .1
            .values()
            .map(|(_, e, _)| e)
            .filter(|e| e.org == org && keep(e))
            .cloned()
            .collect()
    }

    /// Whether every record handed in so far has been written.
    pub fn is_flushed(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .is_empty()
    }
}

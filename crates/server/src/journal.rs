//! The execution journal: every record is appended (one JSON line, one `write(2)`) before the
//! request it describes is answered, so a crash of the process loses none — the kernel holds
//! the write. The store's batch writer follows behind; once a batch is committed, the journal
//! segments it covers are deleted, so the journal holds only what the store may not yet have.
//! The next start writes whatever the journal holds to the store ([`replay`]).
//!
//! A crash of the machine (power, kernel) can lose what neither the journal nor the store had
//! flushed to disk — the journal is not fsynced per record, as SQLite's WAL is not per commit.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::Execution;

/// The status of a tombstone: a begun record taken back ([`crate::recorder::Recorder::discard`]).
pub const DISCARDED: &str = "discarded";

struct Segment {
    number: u64,
    file: File,
    /// The last write failed part-way: the next line starts on a line of its own.
    torn: bool,
    /// The line being written, kept between writes (no allocation per record).
    line: Vec<u8>,
}

pub struct Journal {
    dir: PathBuf,
    current: Mutex<Segment>,
    /// Segments whose batch the store refused: kept for the next start to replay.
    kept: Mutex<std::collections::BTreeSet<u64>>,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.ndjson"))
}

fn open_segment(dir: &Path, number: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, number))
}

/// The journal's segments, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ndjson"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

/// What the journal in `dir` holds from an earlier run: the latest version of each execution,
/// in the order they were first seen. A line cut short by the crash is skipped.
pub fn replay(dir: &Path) -> io::Result<Vec<Execution>> {
    std::fs::create_dir_all(dir)?;
    let mut latest: Vec<Execution> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (_, path) in segments(dir)? {
        let file = File::open(&path)?;
        for line in io::BufReader::new(file).split(b'\n') {
            let line = line?;
            let Ok(e) = serde_json::from_slice::<Execution>(&line) else {
                continue;
            };
            match index.get(&e.id) {
                Some(&i) => latest[i] = e,
                None => {
                    index.insert(e.id.clone(), latest.len());
                    latest.push(e);
                }
            }
        }
    }
    latest.retain(|e| e.status != DISCARDED);
    Ok(latest)
}

impl Journal {
    /// Opens the journal in `dir` for this run, after [`replay`] and the store have taken what an
    /// earlier run left: its old segments are deleted.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let old = segments(dir)?;
        let number = old.last().map_or(0, |(n, _)| n + 1);
        for (_, path) in old {
            std::fs::remove_file(path)?;
        }
        Ok(Journal {
            dir: dir.to_path_buf(),
            current: Mutex::new(Segment {
                number,
                file: open_segment(dir, number)?,
                torn: false,
                line: Vec::with_capacity(4096),
            }),
            kept: Mutex::default(),
        })
    }

    fn write(segment: &mut Segment, e: &Execution) {
        let mut line = std::mem::take(&mut segment.line);
        line.clear();
        if segment.torn {
            line.push(b'\n');
        }
        if let Err(err) = serde_json::to_writer(&mut line, e) {
            tracing::error!("execution {} cannot be journaled: {err}", e.id);
            segment.line = line;
            return;
        }
        line.push(b'\n');
        // O_APPEND: one write(2) for a line this size.
        let written = segment.file.write_all(&line);
        // A record with a large log leaves no large buffer behind.
        if line.capacity() <= 64 * 1024 {
            segment.line = line;
        }
        match written {
            Ok(()) => segment.torn = false,
            Err(err) => {
                segment.torn = true;
                tracing::error!("execution {} could not be journaled: {err}", e.id);
            }
        }
    }

    /// Appends a record, then hands it to `then`, which runs before any rotation can happen.
    pub fn append_then<R>(&self, e: Execution, then: impl FnOnce(Execution) -> R) -> R {
        let mut segment = self.current.lock().unwrap_or_else(|p| p.into_inner());
        Self::write(&mut segment, &e);
        then(e)
    }

    /// Starts a new segment, into which `carry` (records that must outlive the old segment:
    /// executions still running) is written first; returns the old segment's number, to
    /// [`Journal::retire`] once the store has everything queued before this call. `None` when
    /// no new segment could be made: the old one stays current, and nothing may be retired.
    pub fn rotate(&self, carry: impl FnOnce() -> Vec<Execution>) -> Option<u64> {
        let mut segment = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let number = segment.number + 1;
        match open_segment(&self.dir, number) {
            Ok(file) => {
                let line = std::mem::take(&mut segment.line);
                let old = std::mem::replace(
                    &mut *segment,
                    Segment {
                        number,
                        file,
                        torn: false,
                        line,
                    },
                );
                for e in carry() {
                    Self::write(&mut segment, &e);
                }
                Some(old.number)
            }
            Err(err) => {
                tracing::error!("cannot start a new journal segment: {err}");
                None
            }
        }
    }

    /// Keeps segment `number` until the next start, whatever is retired later: the store did not
    /// take its batch.
    pub fn keep(&self, number: u64) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number);
    }

    /// Deletes the segments numbered up to `up_to` (their records are in the store), but those
    /// [kept](Journal::keep).
    pub fn retire(&self, up_to: u64) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .number;
        let Ok(found) = segments(&self.dir) else {
            return;
        };
        for (number, path) in found {
            if number <= up_to && number < current && !kept.contains(&number) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: &str) -> Execution {
        Execution {
            status: status.into(),
            logs: vec!["a line".into()],
            ..Execution::begun(id.into(), "acme-corp", "tiny", 1, "http")
        }
    }

    #[test]
    fn what_a_crash_leaves_is_replayed_latest_version_first_seen_order() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal.append_then(record("a", "running"), |_| ());
        journal.append_then(record("b", "succeeded"), |_| ());
        let old = journal.rotate(|| vec![record("a", "running")]).unwrap();
        journal.append_then(record("a", "succeeded"), |_| ());
        // The process dies here: nothing retired. A torn last line is skipped.
        drop(journal);
        let mut f = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), old + 1))
            .unwrap();
        f.write_all(b"{\"id\":\"c\",\"org\"").unwrap();
        let replayed = replay(dir.path()).unwrap();
        let got: Vec<(&str, &str)> = replayed
            .iter()
            .map(|e| (e.id.as_str(), e.status.as_str()))
            .collect();
        assert_eq!(got, [("a", "succeeded"), ("b", "succeeded")]);
        // The next run starts empty.
        let journal = Journal::open(dir.path()).unwrap();
        assert!(replay(dir.path()).unwrap().is_empty());
        journal.append_then(record("d", "succeeded"), |_| ());
        // The store refused d's batch: its segment outlives later batches.
        let refused = journal.rotate(Vec::new).unwrap();
        journal.keep(refused);
        journal.append_then(record("e", "succeeded"), |_| ());
        let old = journal.rotate(Vec::new).unwrap();
        journal.retire(old);
        let left: Vec<String> = replay(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, ["d"]);
    }
}

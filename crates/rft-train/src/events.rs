//! A job's event log: `events.jsonl` in its folder, `fine_tuning.job.event` objects oldest
//! first, appended and fsynced one by one by the loop and by the server.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rft_types::api::event::{EventBody, EventLevel, JobEvent, StepMetrics};

use crate::TrainError;

/// The log's file in a job folder.
const EVENTS: &str = "events.jsonl";

/// Appends one event to `dir/events.jsonl` (fsynced) and returns it.
///
/// Ids number the file's lines (`ftevent-<job>-000042`), counted under an exclusive lock on
/// the file: the loop and the server (its "paused", "cancelled" messages) may append at the
/// same moment, and a count kept in memory would go stale as soon as the other one writes,
/// or after a restart. Counting every line, torn ones included, keeps ids unique and in file
/// order.
fn write_event(
    dir: &Path,
    job_id: &str,
    level: EventLevel,
    message: String,
    body: EventBody,
) -> Result<JobEvent, TrainError> {
    let path = dir.join(EVENTS);
    let io = |source| TrainError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    // Released when `file` is closed, including on an early return.
    file.lock().map_err(io)?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(io)?;
    let mut count = text.iter().filter(|&&b| b == b'\n').count();
    // A crash mid-write can leave a last line without its newline: end it, so this event
    // starts a line of its own (the torn line is skipped by readers, but keeps its number).
    if text.last().is_some_and(|&b| b != b'\n') {
        file.write_all(b"\n").map_err(io)?;
        count += 1;
    }
    let event = JobEvent {
        id: format!("ftevent-{}-{count:06}", job_id.trim_start_matches("ftjob-")),
        object: JobEvent::OBJECT.into(),
        created_at: crate::unix_now(),
        level,
        message,
        body,
    };
    let line = serde_json::to_string(&event).map_err(|e| TrainError::Invalid(e.to_string()))?;
    writeln!(file, "{line}").map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(event)
}

/// Appends a message event to a job folder from outside the loop (the server's "queued",
/// "cancelled", "failed" messages). Safe while the loop runs on the folder: appends are
/// serialised by a lock on the events file.
pub fn append_event(
    dir: &Path,
    job_id: &str,
    level: EventLevel,
    message: impl Into<String>,
) -> Result<JobEvent, TrainError> {
    write_event(dir, job_id, level, message.into(), EventBody::Message {})
}

/// A job folder's events, oldest first; a line cut short by a crash mid-write is skipped.
pub fn read_events(dir: &Path) -> Vec<JobEvent> {
    crate::read_jsonl(&dir.join(EVENTS))
}

/// Where a job's events and durable state go. The loop writes each event under a `key` that
/// names it within the job (`step-3/metrics`): a sink that keeps keys (the server's database)
/// drops a second write of the same key, so a step retrained after a takeover writes nothing
/// twice. After each step's events, [`EventSink::step_saved`] is told the state is in the job
/// folder, so a sink can copy it where another machine can resume from it.
pub trait EventSink {
    /// Writes an event (unless `key` was written before: then returns that event).
    fn write(
        &mut self,
        key: &str,
        level: EventLevel,
        message: String,
        body: EventBody,
    ) -> Result<JobEvent, TrainError>;

    /// The state after `step` is complete in `dir` (`checkpoints/latest`, and the checkpoint
    /// of `step` when it was validated), and the step's events are written.
    fn step_saved(&mut self, _step: usize, _dir: &Path) -> Result<(), TrainError> {
        Ok(())
    }

    /// The final adapter is complete in `dir/final`; the completion event comes next.
    fn finished(&mut self, _dir: &Path) -> Result<(), TrainError> {
        Ok(())
    }
}

/// The job folder's `events.jsonl` (`rft train`, and tests): numbered by line. Keys are not
/// kept: a local run resumes from its own folder's state, which the loop saves just before a
/// step's events, so a kill between the two loses that step's events (never duplicates them);
/// the server's sink, keyed, publishes the state after the events instead.
#[derive(Debug, Clone)]
pub struct FileEvents {
    dir: PathBuf,
    job_id: String,
}

impl FileEvents {
    /// The log of job `job_id` in `dir`.
    pub fn new(dir: &Path, job_id: &str) -> FileEvents {
        FileEvents {
            dir: dir.to_owned(),
            job_id: job_id.to_owned(),
        }
    }
}

impl EventSink for FileEvents {
    fn write(
        &mut self,
        _key: &str,
        level: EventLevel,
        message: String,
        body: EventBody,
    ) -> Result<JobEvent, TrainError> {
        write_event(&self.dir, &self.job_id, level, message, body)
    }
}

/// The loop's side of the log: the sink, and who to tell about each event.
pub(crate) struct EventLog<'a> {
    sink: &'a mut dyn EventSink,
    on_event: &'a mut dyn FnMut(&JobEvent),
}

impl<'a> EventLog<'a> {
    /// Events go to `sink`; `on_event` sees every event written.
    pub(crate) fn new(
        sink: &'a mut dyn EventSink,
        on_event: &'a mut dyn FnMut(&JobEvent),
    ) -> EventLog<'a> {
        EventLog { sink, on_event }
    }

    /// Writes an `info` message.
    pub(crate) fn info(&mut self, key: &str, message: String) -> Result<(), TrainError> {
        self.write(key, message, EventBody::Message {})
    }

    /// Writes a `warn` message.
    pub(crate) fn warn(&mut self, key: &str, message: String) -> Result<(), TrainError> {
        let event = self
            .sink
            .write(key, EventLevel::Warn, message, EventBody::Message {})?;
        (self.on_event)(&event);
        Ok(())
    }

    /// Writes a step's metrics.
    pub(crate) fn metrics(
        &mut self,
        key: &str,
        message: String,
        metrics: StepMetrics,
    ) -> Result<(), TrainError> {
        self.write(key, message, EventBody::Metrics(Box::new(metrics)))
    }

    fn write(&mut self, key: &str, message: String, body: EventBody) -> Result<(), TrainError> {
        let event = self.sink.write(key, EventLevel::Info, message, body)?;
        (self.on_event)(&event);
        Ok(())
    }

    pub(crate) fn step_saved(&mut self, step: usize, dir: &Path) -> Result<(), TrainError> {
        self.sink.step_saved(step, dir)
    }

    pub(crate) fn finished(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.sink.finished(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writers_get_unique_event_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        // A torn last line, as a kill mid-write leaves it, keeps its number.
        std::fs::write(dir.join(EVENTS), "{\"id\": \"torn").unwrap();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        append_event(&dir, "ftjob-x", EventLevel::Info, format!("{w}-{i}"))
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let events = read_events(&dir);
        assert_eq!(events.len(), 100);
        let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let in_file_order = ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, in_file_order, "ids follow the file's order");
        ids.dedup();
        assert_eq!(ids.len(), 100, "duplicate event ids");
        assert_eq!(ids[0], "ftevent-x-000001");
    }
}

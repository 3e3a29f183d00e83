//! One writer thread owns the only write connection. Writes queue up while it commits and
//! are then applied together: each in its own savepoint (so one failing write rolls back
//! alone), all under one `COMMIT`, so concurrent writers share the fsync. A write is
//! acknowledged only after the commit that holds it returns.

use crate::error::SqliteError;
use rusqlite::Connection;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// The most writes one commit takes.
const MAX_BATCH: usize = 256;

/// A queued write.
trait Job: Send {
    /// Runs inside a savepoint; says whether it succeeded, and how to answer once the
    /// commit's fate is known.
    fn run(self: Box<Self>, conn: &Connection) -> Done;
    /// Answers without running: the transaction could not start.
    fn fail(self: Box<Self>, error: &rusqlite::Error);
}

/// Answers a write once its commit succeeded (`None`) or failed.
type Answer = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

struct Done {
    ok: bool,
    answer: Answer,
}

struct WriteJob<F, C, R> {
    write: F,
    on_commit: C,
    reply: oneshot::Sender<Result<R, SqliteError>>,
}

impl<F, C, R> Job for WriteJob<F, C, R>
where
    F: FnOnce(&Connection) -> Result<R, SqliteError> + Send,
    C: FnOnce(&R) + Send + 'static,
    R: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Done {
        let result = (self.write)(conn);
        let (reply, on_commit) = (self.reply, self.on_commit);
        Done {
            ok: result.is_ok(),
            answer: Box::new(move |commit_error| {
                let answer = match commit_error {
                    Some(e) => Err(SqliteError::Commit(e.to_string())),
                    None => {
                        if let Ok(r) = &result {
                            on_commit(r);
                        }
                        result
                    }
                };
                // The caller may have gone away; the write stands either way.
                let _ = reply.send(answer);
            }),
        }
    }

    fn fail(self: Box<Self>, error: &rusqlite::Error) {
        let _ = self.reply.send(Err(SqliteError::Commit(error.to_string())));
    }
}

/// The handle to the writer thread. Dropping it lets the thread finish the writes it has,
/// then waits for it to close its connection, so the file is closed when the store is.
#[derive(Debug)]
pub struct Writer {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub fn start(conn: Connection) -> Result<Self, SqliteError> {
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("statebase-sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| SqliteError::Commit(e.to_string()))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `write` in the next group commit and returns its result once committed. If it
    /// succeeded and committed, `on_commit` sees its result first, on the writer thread:
    /// in commit order, before any later write runs.
    pub async fn write<R: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> Result<R, SqliteError> + Send + 'static,
        on_commit: impl FnOnce(&R) + Send + 'static,
    ) -> Result<R, SqliteError> {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(WriteJob {
            write,
            on_commit,
            reply,
        });
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or(SqliteError::WriterStopped)?;
        rx.await.map_err(|_| SqliteError::WriterStopped)?
    }
}

fn run(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (result, answers) = commit(&conn, batch);
        for answer in answers {
            answer(result.as_ref().err());
        }
    }
}

/// Runs one statement of the group commit's frame (parsed once, then cached).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs the batch in one transaction: its outcome, and how to answer each write.
fn commit(conn: &Connection, batch: Vec<Box<dyn Job>>) -> (rusqlite::Result<()>, Vec<Answer>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        for job in batch {
            job.fail(&e);
        }
        return (Err(e), Vec::new());
    }
    let mut answers = Vec::with_capacity(batch.len());
    let mut broken = None;
    for job in batch {
        if let Err(e) = exec(conn, "SAVEPOINT write") {
            broken = Some(e);
        }
        let done = job.run(conn);
        let undone = if done.ok {
            Ok(())
        } else {
            exec(conn, "ROLLBACK TO write")
        };
        if let Err(e) = undone.and_then(|()| exec(conn, "RELEASE write")) {
            broken = Some(e);
        }
        answers.push(done.answer);
    }
    let result = match broken {
        Some(e) => Err(e),
        None => exec(conn, "COMMIT"),
    };
    if result.is_err() {
        let _ = exec(conn, "ROLLBACK");
    }
    (result, answers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Dropping the writer waits for the writes it was given and for its thread, so the
    /// connection is closed when the drop returns.
    #[tokio::test]
    async fn drop_waits_for_queued_writes_and_the_thread() {
        let writer = Writer::start(Connection::open_in_memory().unwrap()).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let mut write = Box::pin(writer.write(
            move |_| {
                std::thread::sleep(Duration::from_millis(200));
                flag.store(true, Ordering::SeqCst);
                Ok(())
            },
            |_| {},
        ));
        // Long enough to hand the job over, not to finish it.
        let pending = tokio::time::timeout(Duration::from_millis(20), &mut write).await;
        assert!(pending.is_err());
        drop(write);
        drop(writer);
        assert!(done.load(Ordering::SeqCst));
    }
}

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

struct WriteJob<F, R> {
    write: F,
    reply: oneshot::Sender<Result<R, SqliteError>>,
}

impl<F, R> Job for WriteJob<F, R>
where
    F: FnOnce(&Connection) -> Result<R, SqliteError> + Send,
    R: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Done {
        let result = (self.write)(conn);
        let reply = self.reply;
        Done {
            ok: result.is_ok(),
            answer: Box::new(move |commit_error| {
                let answer = match commit_error {
                    Some(e) => Err(SqliteError::Commit(e.to_string())),
                    None => result,
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

/// The handle to the writer thread; dropping every handle stops it.
#[derive(Debug, Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub fn start(conn: Connection) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("statebase-sqlite-writer".into())
            .spawn(move || run(conn, rx))?;
        Ok(Self { jobs })
    }

    /// Runs `write` in the next group commit and returns its result once committed.
    pub async fn write<R: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> Result<R, SqliteError> + Send + 'static,
    ) -> Result<R, SqliteError> {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(WriteJob { write, reply });
        self.jobs
            .send(job)
            .map_err(|_| SqliteError::WriterStopped)?;
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
        commit(&conn, batch);
    }
}

fn commit(conn: &Connection, batch: Vec<Box<dyn Job>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        for job in batch {
            job.fail(&e);
        }
        return;
    }
    let mut answers = Vec::with_capacity(batch.len());
    let mut broken = None;
    for job in batch {
        if let Err(e) = conn.execute_batch("SAVEPOINT write") {
            broken = Some(e);
        }
        let done = job.run(conn);
        let end = if done.ok {
            "RELEASE write"
        } else {
            "ROLLBACK TO write; RELEASE write"
        };
        if let Err(e) = conn.execute_batch(end) {
            broken = Some(e);
        }
        answers.push(done.answer);
    }
    let result = match broken {
        Some(e) => Err(e),
        None => conn.execute_batch("COMMIT"),
    };
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for answer in answers {
        answer(result.as_ref().err());
    }
}

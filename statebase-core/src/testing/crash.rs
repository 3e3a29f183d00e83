//! The crash test every persistent backend runs: a child process writes versions and turns
//! in a loop and prints each acknowledged write; the parent kills it with SIGKILL at a
//! random moment, several times, and after each kill checks that every acknowledged write is
//! in the reopened store and that no session has a gap in its versions or turn numbers.
//!
//! A backend's test file holds both sides: a `#[test] fn crash_child()` that calls
//! [`child`] when [`PATH_ENV`] is set (and does nothing otherwise), and a multi-threaded
//! tokio test that calls [`kill_and_verify`], which runs the test binary itself as that
//! child.

use crate::store::{Store, TurnQuery};
use crate::{AddTurn, CreateSession, ListSessions, StateBase, StateWrite};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable that holds the store's path for the child.
pub const PATH_ENV: &str = "STATEBASE_CRASH_PATH";

const SESSIONS: usize = 4;

/// The child's loop: never returns. Prints `ack session <id>`, `ack version <id> <n>` and
/// `ack turn <id> <n>` lines, each only after the write returned `Ok`.
pub async fn child<S: Store>(store: S) {
    let sb = StateBase::new(store);
    let out = std::io::stdout();
    let ack = |line: String| {
        let mut out = out.lock();
        let _ = writeln!(out, "ack {line}");
        let _ = out.flush();
    };
    let listed = sb
        .list_sessions(ListSessions {
            limit: Some(100),
            ..Default::default()
        })
        .await
        .expect("list sessions");
    let mut ids: Vec<String> = listed.data.into_iter().map(|s| s.id).collect();
    while ids.len() < SESSIONS {
        let s = sb
            .create_session(CreateSession::new("crash-child"))
            .await
            .expect("create session");
        ack(format!("session {}", s.id));
        ids.push(s.id);
    }
    for i in 0u64.. {
        let id = &ids[(i as usize) % ids.len()];
        if i % 2 == 0 {
            let patch = json!({ format!("k{}", i % 50): i });
            let s = sb
                .merge_state(id, StateWrite::new(patch))
                .await
                .expect("merge state");
            ack(format!("version {id} {}", s.version));
        } else {
            let turn = AddTurn {
                state_after: (i % 3 == 0).then(|| json!({ "turn": i })),
                ..AddTurn::text("ping", "pong")
            };
            let t = sb.add_turn(id, turn).await.expect("add turn");
            ack(format!("turn {id} {}", t.turn_number));
            if let Some(v) = t.state_version {
                ack(format!("version {id} {v}"));
            }
        }
    }
}

/// What the children acknowledged, per session: the highest version and turn number.
#[derive(Debug, Default, Clone)]
pub struct Acks {
    /// Session id -> (highest acknowledged version, highest acknowledged turn number).
    pub sessions: BTreeMap<String, (u64, u64)>,
    /// Every acknowledged write.
    pub count: usize,
}

impl Acks {
    /// Counts `line` if it is one of [`child`]'s `ack` lines; ignores any other line.
    pub fn record(&mut self, line: &str) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (id, version, turn) = match parts.as_slice() {
            ["ack", "session", id] => (id, 0, 0),
            ["ack", "version", id, n] => (id, n.parse().expect("version number"), 0),
            ["ack", "turn", id, n] => (id, 0, n.parse().expect("turn number")),
            _ => return,
        };
        let e = self.sessions.entry((*id).to_owned()).or_default();
        e.0 = e.0.max(version);
        e.1 = e.1.max(turn);
        self.count += 1;
    }
}

/// A small random number from the clock: only the moment of the kill needs to vary.
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(nanos) % max_ms.max(1))
}

/// Runs `child` (a command that runs [`child`] on the store), waits until it has
/// acknowledged a few writes, kills it with SIGKILL after a random further moment, and adds
/// its acknowledged writes to `acks`. Only complete lines count: a line cut by the kill was
/// not seen by the parent, so it is not an acknowledgement.
pub fn kill_once(mut child: Command, acks: &mut Acks) {
    let mut process = child
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash child");
    let stdout = process.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.ends_with('\n') && tx.send(line.trim_end().to_owned()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let started = Instant::now();
    let mut seen = 0;
    let mut kill_at = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(line) => {
                if line.starts_with("ack ") {
                    seen += 1;
                }
                acks.record(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the crash child exited"),
        }
        if seen >= 5 && kill_at.is_none() {
            kill_at = Some(Instant::now() + jitter(400));
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the crash child acknowledged only {seen} writes in 60 s"
        );
    }
    process.kill().expect("SIGKILL the child");
    process.wait().expect("reap the child");
    reader.join().expect("reader thread");
    // Lines the child flushed before it died are acknowledgements too.
    while let Ok(line) = rx.try_recv() {
        acks.record(&line);
    }
}

/// Kills the child (this test binary's `crash_child` test) five times, reopening the store
/// with `open` after each kill, checking it with [`verify`] and then with `check` (for
/// backend-specific checks such as SQLite's integrity check). Needs a multi-threaded
/// runtime.
pub async fn kill_and_verify<S, F>(
    path: &std::path::Path,
    open: impl Fn(&std::path::Path) -> S,
    check: impl Fn(S) -> F,
) where
    S: Store,
    F: std::future::Future<Output = ()>,
{
    let mut acks = Acks::default();
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"));
        child
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(PATH_ENV, path);
        let before = acks.count;
        tokio::task::block_in_place(|| kill_once(child, &mut acks));
        assert!(acks.count > before, "round {round}: no acknowledged write");
        let store = open(path);
        verify(&store, &acks).await;
        check(store).await;
    }
    assert_eq!(acks.sessions.len(), SESSIONS);
}

/// Checks a reopened store after kills: every acknowledged write is there, and versions and
/// turn numbers run without gaps.
pub async fn verify<S: Store>(store: &S, acks: &Acks) {
    let tenant = crate::DEFAULT_TENANT;
    for (id, &(version, turns)) in &acks.sessions {
        let rec = store
            .session(tenant, id)
            .await
            .expect("read session")
            .unwrap_or_else(|| panic!("acknowledged session {id} is missing"));
        let s = rec.session;
        assert!(
            s.version >= version,
            "{id}: version {} < acknowledged {version}",
            s.version
        );
        assert!(
            s.turn_count >= turns,
            "{id}: {} turns < acknowledged {turns}",
            s.turn_count
        );
        let versions = store
            .versions(tenant, id, 0..u64::MAX)
            .await
            .expect("read versions");
        let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
        assert_eq!(
            numbers,
            (0..=s.version).collect::<Vec<_>>(),
            "{id}: version gap"
        );
        let query = TurnQuery {
            limit: usize::MAX >> 1,
            descending: false,
            after_turn_number: None,
        };
        let listed = store
            .list_turns(tenant, id, &query)
            .await
            .expect("read turns");
        let numbers: Vec<u64> = listed.iter().map(|t| t.turn_number).collect();
        assert_eq!(
            numbers,
            (1..=s.turn_count).collect::<Vec<_>>(),
            "{id}: turn gap"
        );
        for t in &listed {
            if let Some(v) = t.state_version {
                assert!(
                    v <= s.version,
                    "{id}: turn {} names missing version {v}",
                    t.turn_number
                );
            }
        }
    }
}

//! The disk fills while writes run: the writes that don't fit fail with an error (no
//! panic, no hang), none of them is half there afterwards, every acknowledged one is, and
//! once there is room again the same store writes on. The file size limit
//! (`RLIMIT_FSIZE`) stands in for a full disk: this test binary runs itself as the writing
//! child, under a shell that ignores `SIGXFSZ` so that an oversized write fails instead of
//! killing the process.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use serde_json::json;
use statebase_core::testing::crash::{self, Acks};
use statebase_core::{CreateSession, StateBase, StateWrite};
use statebase_sqlite::SqliteStore;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const PATH_ENV: &str = "STATEBASE_DISK_FULL_PATH";
const SESSIONS: usize = 4;
/// Room the child leaves its files to grow before they are full.
const ROOM: u64 = 1024 * 1024;

fn print(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read the database directory")
        .map(|e| {
            e.expect("directory entry")
                .metadata()
                .expect("metadata")
                .len()
        })
        .max()
        .unwrap_or(0)
}

/// The child side: does nothing unless the parent test started this binary for it.
#[test]
fn disk_full_child() {
    let Ok(path) = std::env::var(PATH_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(fill_the_disk(Path::new(&path)));
}

async fn fill_the_disk(path: &Path) {
    let sb = StateBase::new(SqliteStore::open(path).expect("open"));
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        let s = sb.create_session(CreateSession::new("full")).await.unwrap();
        print(format!("ack session {}", s.id));
        ids.push(s.id);
    }
    let unlimited = getrlimit(Resource::Fsize);
    let full = largest_file(path.parent().unwrap()) + ROOM;
    setrlimit(
        Resource::Fsize,
        Rlimit {
            current: Some(full),
            maximum: unlimited.maximum,
        },
    )
    .expect("lower the file size limit");
    // Two writers a session, each until it has seen 5 failures; each write adds a 4 KB value.
    let writers: Vec<_> = ids
        .iter()
        .chain(&ids)
        .enumerate()
        .map(|(w, id)| {
            let (sb, id) = (sb.clone(), id.clone());
            tokio::spawn(async move {
                let (mut failures, mut acked) = (0, 0);
                for i in 0u64.. {
                    let patch = json!({ format!("w{w}-{}", i % 8): "x".repeat(4096) });
                    match sb.merge_state(&id, StateWrite::new(patch)).await {
                        Ok(s) => {
                            print(format!("ack version {id} {}", s.version));
                            acked = acked.max(s.version);
                        }
                        Err(e) if e.code() == "version_conflict" => {}
                        Err(e) => {
                            print(format!("failed {} {e:?}", e.code()));
                            failures += 1;
                            if failures == 5 {
                                break;
                            }
                        }
                    }
                }
                (id, acked)
            })
        })
        .collect();
    let mut acked = std::collections::HashMap::new();
    for w in writers {
        let (id, version) = w.await.expect("a writer panicked");
        let most = acked.entry(id).or_insert(0);
        *most = version.max(*most);
    }
    // A write whose commit failed left nothing behind, in the file or in the caches.
    for (id, version) in &acked {
        let read = sb.get_session(id).await.unwrap().version;
        assert_eq!(
            read, *version,
            "{id} reads a version that was not acknowledged"
        );
    }
    setrlimit(Resource::Fsize, unlimited).expect("raise the file size limit");
    for id in &ids {
        let s = sb
            .merge_state(id, StateWrite::new(json!({"room": "again"})))
            .await
            .expect("a write once there is room again");
        print(format!("ack version {id} {}", s.version));
    }
    print("recovered".into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_writes_that_do_not_fit_and_loses_no_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.db");
    let mut child = Command::new("bash")
        .args(["-c", r#"trap "" XFSZ; exec "$0" "$@""#])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "disk_full_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PATH_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(120), lines)
        .await
        .expect("the child hung")
        .unwrap();
    assert!(child.wait().unwrap().success(), "the child failed");
    let mut acks = Acks::default();
    for line in &lines {
        acks.record(line);
    }
    let failed: Vec<&String> = lines.iter().filter(|l| l.starts_with("failed")).collect();
    assert_eq!(failed.len(), 2 * SESSIONS * 5, "{lines:#?}");
    for line in failed {
        assert!(line.starts_with("failed internal_error"), "{line}");
    }
    assert!(lines.iter().any(|l| l == "recovered"), "{lines:#?}");
    let acked: u64 = acks.sessions.values().map(|(version, _)| version).sum();
    assert!(acked > SESSIONS as u64, "too few writes fit: {acked}");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    crash::verify(&store, &acks).await;
}

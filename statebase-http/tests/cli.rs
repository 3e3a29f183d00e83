//! The `statebase` binary: key management on a database file, first-start key, serving, and
//! a clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn statebase() -> Command {
    Command::new(env!("CARGO_BIN_EXE_statebase"))
}

fn run(args: &[&str]) -> String {
    let out = statebase().args(args).output().expect("run statebase");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn keys_create_list_revoke_on_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("keys.db").display());
    let created = run(&[
        "keys", "--db", &db, "create", "--tenant", "acme", "--name", "ci",
    ]);
    let fields: Vec<&str> = created.split_whitespace().collect();
    let (id, tenant, secret) = (fields[0], fields[1], fields[2]);
    assert!(id.starts_with("key_") && tenant == "acme" && secret.starts_with("sb_"));
    let listed = run(&["keys", "--db", &db, "list"]);
    assert!(listed.contains(id) && listed.contains("active"), "{listed}");
    assert!(!listed.contains(secret), "a listing shows a secret");
    run(&["keys", "--db", &db, "revoke", id]);
    assert!(run(&["keys", "--db", &db, "list", "--tenant", "acme"]).contains("revoked"));
    assert!(run(&["keys", "--db", &db, "list", "--tenant", "other"])
        .trim()
        .is_empty());
    let bad = statebase()
        .args(["keys", "--db", "postgres:x", "list"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// `statebase serve` on `db` at `addr` with `args`, logging at `log` to a piped stderr,
/// and the first key it printed.
fn serve(db: &str, addr: &str, args: &[&str], log: &str) -> (std::process::Child, String) {
    let mut child = statebase()
        .args(["serve", "--db", db, "--addr", addr])
        .args(args)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let key_line = wait_for(&mut lines, "X-API-Key:");
    let secret = key_line.split_whitespace().last().unwrap().to_owned();
    // Keep reading, so that what the server prints later finds its pipe open.
    std::thread::spawn(move || lines.for_each(drop));
    (child, secret)
}

/// A loopback address no one listens on.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Reads the child's stdout until a line contains `needle`.
fn wait_for(lines: &mut impl Iterator<Item = String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in lines.by_ref() {
        if line.contains(needle) {
            return line;
        }
        assert!(Instant::now() < deadline, "no line with {needle}");
    }
    panic!("the server exited before printing {needle}");
}

#[tokio::test]
async fn serve_prints_a_first_key_serves_it_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("serve.db").display());
    let addr = free_addr();
    let (mut child, secret) = serve(&db, &addr, &[], "info");
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match http
            .get(format!("{url}/v1/sessions"))
            .header("X-API-Key", &secret)
            .send()
            .await
        {
            Ok(r) => break r.status(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("server never answered: {e}"),
        }
    };
    assert_eq!(status, reqwest::StatusCode::OK);
    let r = http
        .post(format!("{url}/v1/sessions"))
        .header("X-API-Key", &secret)
        .json(&serde_json::json!({"agent_id": "cli"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    // Logs go to stderr, as plain text when it is not a terminal.
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("serving the StateBase API"), "{logs}");
    assert!(!logs.contains('\x1b'), "colour codes in a log file: {logs}");
    // The first start made exactly one key, in the database file.
    let out = statebase()
        .args(["keys", "--db", &db, "list"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

/// CPU seconds (user and system) that process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses: utime and stime are the
    // 12th and 13th of them, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[tokio::test]
async fn out_of_file_descriptors_the_server_pauses_accepting_and_recovers() {
    use rustix::process::{prlimit, Pid, Resource, Rlimit};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("fd.db").display());
    let addr = free_addr();
    let args = ["--header-timeout", "2", "--log-format", "json"];
    let (mut child, secret) = serve(&db, &addr, &args, "warn");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let log = std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();
    let health = format!("{url}/v1/sessions");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(&health)
        .header("X-API-Key", &secret)
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "server never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Now it may hold 128 descriptors at most: 300 silent connections run it out.
    let pid = Pid::from_child(&child);
    let low = Rlimit {
        current: Some(128),
        maximum: Some(128),
    };
    prlimit(Some(pid), Resource::Nofile, low).unwrap();
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_seconds(child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = cpu_seconds(child.id()) - before;
    assert!(busy < 0.3, "the server spun at {busy} CPU seconds a second");
    // The silent connections stay open on this side: the server closes them at the head
    // bound (2 s), takes the next ones from its backlog, and serves a normal client again.
    let res = http
        .post(format!("{url}/v1/sessions"))
        .header("X-API-Key", &secret)
        .json(&serde_json::json!({"agent_id": "after"}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("served once the descriptors were free again");
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    drop(silent);
    child.kill().unwrap();
    child.wait().unwrap();
    let log = log.join().unwrap();
    // JSON lines, one a log event.
    let pauses = log
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line"))
        .filter(|l| l["fields"]["message"] == "accept failed; pausing")
        .inspect(|l| {
            assert!(l["fields"]["error"]
                .as_str()
                .unwrap()
                .contains("Too many open files"))
        })
        .count();
    assert!(
        pauses > 0,
        "the server never ran out of descriptors: {log:?}"
    );
}

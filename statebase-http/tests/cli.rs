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
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut child = statebase()
        .args(["serve", "--db", &db, "--addr", &addr])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let key_line = wait_for(&mut lines, "X-API-Key:");
    let secret = key_line.split_whitespace().last().unwrap().to_owned();
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
    // The first start made exactly one key, in the database file.
    let out = statebase()
        .args(["keys", "--db", &db, "list"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

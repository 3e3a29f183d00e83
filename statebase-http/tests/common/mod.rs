//! `statebase serve` as a child process, for the tests that run several or stop their
//! database under one, and the calls they make of it.

// Each test file that includes it uses a part of it.
#![allow(dead_code)]

use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Runs the `statebase` binary with `args` to success; its stdout.
pub fn statebase(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_statebase"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "statebase {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A request with `key` and a JSON body: its status and JSON answer (`null` if none).
pub async fn call(
    http: &reqwest::Client,
    key: &str,
    method: Method,
    url: String,
    body: Value,
) -> (StatusCode, Value) {
    let r = http
        .request(method, url)
        .header("X-API-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A POST that must succeed; its answer.
pub async fn post(http: &reqwest::Client, key: &str, url: String, body: Value) -> Value {
    let (status, body) = call(http, key, Method::POST, url, body).await;
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// A GET that must succeed; its answer.
pub async fn get(http: &reqwest::Client, key: &str, url: String) -> Value {
    let (status, body) = call(http, key, Method::GET, url, Value::Null).await;
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// Checks that the session at `base` has every version from 0 to its current one, and that
/// each of `acked` (a version and the state it was acknowledged with) holds that state.
pub async fn assert_versions_hold<'a>(
    http: &reqwest::Client,
    key: &str,
    base: &str,
    session: &str,
    acked: impl Iterator<Item = (u64, &'a Value)>,
) {
    let url = format!("{base}/v1/sessions/{session}/history?from_version=0&limit=1000");
    let history = get(http, key, url).await;
    let versions = history["data"].as_array().unwrap();
    let numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    let current = history["current_version"].as_u64().unwrap();
    assert_eq!(
        numbers,
        (0..=current).collect::<Vec<_>>(),
        "versions of {session}"
    );
    for (version, state) in acked {
        let stored = versions.get(version as usize).map(|v| &v["state"]);
        assert_eq!(
            stored,
            Some(state),
            "acknowledged version {version} of {session}"
        );
    }
}

/// A `statebase serve` process, killed when dropped; its log goes to a file, shown when it
/// fails to start.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: tempfile::NamedTempFile,
    out: tempfile::NamedTempFile,
}

impl Server {
    /// Serves `db` on a free loopback port with `args`, once it answers `/health`.
    pub async fn start(db: &str, args: &[&str]) -> Server {
        let mut server = Server::spawn(db, args);
        server.ready().await;
        server
    }

    /// Starts serving `db` on a free loopback port with `args`, without waiting.
    pub fn spawn(db: &str, args: &[&str]) -> Server {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let (log, out) = (
            tempfile::NamedTempFile::new().unwrap(),
            tempfile::NamedTempFile::new().unwrap(),
        );
        let child = Command::new(env!("CARGO_BIN_EXE_statebase"))
            .args(["serve", "--db", db, "--addr", &addr])
            .args(args)
            .stdout(out.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Server {
            child,
            url: format!("http://{addr}"),
            log,
            out,
        }
    }

    /// What it printed so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.out.path()).unwrap()
    }

    /// Waits until it answers `/health`; fails with its log if it stops or takes 30 s.
    pub async fn ready(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http
            .get(format!("{}/health", self.url))
            .send()
            .await
            .is_err()
        {
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!("the server stopped ({exit}): {log}");
            }
            assert!(
                Instant::now() < deadline,
                "the server never answered: {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

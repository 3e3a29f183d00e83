//! PostgreSQL crashes (`pg_ctl stop -m immediate`) under a server's writers and comes back:
//! meanwhile requests fail fast with 503 `service_unavailable` and `Retry-After`, and
//! `/health/ready` says not ready; afterwards the server reconnects by itself and every
//! acknowledged write is there, with no gap in the versions.

use reqwest::StatusCode;
use serde_json::{json, Value};
use statebase_postgres::testing::TestCluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{assert_versions_hold, post, Server};

const KEY: &str = "sb_outagekeyoutagekeyoutage1";

/// What the writer saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged versions with the state each wrote.
    acked: Vec<(u64, Value)>,
    /// Failed requests: status, error code, Retry-After, how long each took.
    failed: Vec<(StatusCode, String, Option<String>, Duration)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_is_503_meanwhile_and_loses_no_acknowledged_write() {
    let pg = TestCluster::required();
    let db = pg.database().await;
    let server = Server::start(&db, &["--api-key", &format!("default:{KEY}")]).await;
    let url = server.url.clone();
    let http = reqwest::Client::new();
    let created = post(
        &http,
        KEY,
        format!("{url}/v1/sessions"),
        json!({"agent_id": "bot"}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let ready = || {
        let r = http.get(format!("{url}/health/ready")).send();
        async move { r.await.unwrap().status() }
    };
    assert_eq!(ready().await, StatusCode::OK);

    let seen = Arc::new(parking_lot::Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, url, id, seen, stop) = (
            http.clone(),
            url.clone(),
            id.clone(),
            seen.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            for n in 0u64.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let state = json!({"n": n});
                let started = Instant::now();
                let sent = http
                    .patch(format!("{url}/v1/sessions/{id}/state"))
                    .header("X-API-Key", KEY)
                    .json(&json!({"state": state}))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("the server answers, even with its database down");
                let status = sent.status();
                let retry_after = sent
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body: Value = sent.json().await.unwrap();
                if status.is_success() {
                    seen.lock()
                        .acked
                        .push((body["version"].as_u64().unwrap(), state));
                    // A steady pace keeps the history within one page.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    let code = body["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock()
                        .failed
                        .push((status, code, retry_after, started.elapsed()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    let acked = || seen.lock().acked.len();
    while acked() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outage = pg.crash_and_restart(async {
        // Down for two seconds: the writer keeps trying, and readiness says not ready.
        tokio::time::sleep(Duration::from_secs(2)).await;
        ready().await
    });
    let Some(readiness) = outage.await else {
        eprintln!("skipped: STATEBASE_TEST_PG_URL names a server this test cannot stop");
        return;
    };
    assert_eq!(readiness, StatusCode::SERVICE_UNAVAILABLE);
    let before = acked();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked() < before + 20 {
        assert!(
            Instant::now() < deadline,
            "the server did not reconnect by itself"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert_eq!(ready().await, StatusCode::OK);

    let seen = std::mem::take(&mut *seen.lock());
    assert!(
        !seen.failed.is_empty(),
        "no request failed while the database was down"
    );
    for (status, code, retry_after, took) in &seen.failed {
        assert_eq!(
            (*status, code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        );
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert!(*took < Duration::from_secs(6), "a failure took {took:?}");
    }
    let acked = seen.acked.iter().map(|(version, state)| (*version, state));
    assert_versions_hold(&http, KEY, &url, &id, acked).await;
}

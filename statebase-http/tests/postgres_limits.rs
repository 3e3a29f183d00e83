//! A server's waits on PostgreSQL are bounded by its flags: a request that finds every
//! pooled connection busy, and a statement that runs too long, are 503s within them. (Apart
//! from `postgres_outage.rs`, whose crash of the cluster would cut these short.)

use reqwest::StatusCode;
use serde_json::{json, Value};
use statebase_postgres::testing::TestCluster;
use std::time::{Duration, Instant};

mod common;
use common::{post, Server};

const KEY: &str = "sb_limitskeylimitskeylimits1";

/// With one connection (`--pg-pool-size 1`) held by a request that waits on a row lock, the
/// next request waits `--pg-wait-timeout` for a connection and is answered 503, and the
/// waiting one is cancelled by `--pg-statement-timeout` (503, nothing written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_and_a_slow_statement_are_503_within_their_limits() {
    let db = TestCluster::required().database().await;
    let key = format!("default:{KEY}");
    let args = ["--api-key", &key, "--pg-pool-size", "1"];
    let limits = ["--pg-wait-timeout", "0.5", "--pg-statement-timeout", "1.5"];
    let server = Server::start(&db, &[&args[..], &limits[..]].concat()).await;
    let url = server.url.clone();
    let http = reqwest::Client::new();
    let body = json!({"agent_id": "bot"});
    let created = post(&http, KEY, format!("{url}/v1/sessions"), body).await;
    let id = created["id"].as_str().unwrap().to_owned();

    // Another client of the database holds the session's row lock.
    let (locker, connection) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM sessions WHERE id = '{id}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let timed = |method: reqwest::Method, path: String, body: Value| {
        let r = http
            .request(method, format!("{url}{path}"))
            .header("X-API-Key", KEY)
            .json(&body)
            .send();
        async move {
            let started = Instant::now();
            let r = r.await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body["error"]["code"].clone(), started.elapsed())
        }
    };
    let write = tokio::spawn(timed(
        reqwest::Method::PATCH,
        format!("/v1/sessions/{id}/state"),
        json!({"state": {"n": 1}}),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, code, took) = timed(reqwest::Method::GET, "/v1/sessions".into(), json!({})).await;
    assert_eq!(
        (status, code),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!("service_unavailable")
        )
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let (status, code, took) = write.await.unwrap();
    assert_eq!(
        (status, code),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!("service_unavailable")
        )
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(4500),
        "{took:?}"
    );

    locker.batch_execute("ROLLBACK").await.unwrap();
    let session = common::get(&http, KEY, format!("{url}/v1/sessions/{id}")).await;
    assert_eq!(
        session["version"],
        json!(0),
        "the cancelled write wrote nothing"
    );
}

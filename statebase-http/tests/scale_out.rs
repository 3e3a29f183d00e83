//! Three `statebase serve` processes on one PostgreSQL database, as behind a load balancer:
//! they make one development key, what one acknowledges the others read at once, their
//! sweepers expire each session once, a revoked key stops working on all within
//! a second, each webhook event is delivered once, a retry with an idempotency key to
//! another server replays the first answer, and a server killed under 32 writers loses no
//! acknowledged write and leaves no gap.

use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{json, Value};
use statebase_postgres::testing::TestCluster;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{assert_versions_hold, call, get, post, statebase, Server};

const KEY: &str = "sb_scaleoutkeyscaleoutkey01";

/// Limits high enough for the many writers below; the limits have tests of their own.
const UNLIMITED: &[&str] = &[
    "--rate-limit",
    "1000000",
    "--burst",
    "1000000",
    "--tenant-rate-limit",
    "1000000",
    "--tenant-burst",
    "1000000",
];

/// `n` servers with `limits` on a new database, and the database's URL.
async fn servers_limited(n: usize, limits: &[&str]) -> (Vec<Server>, String) {
    let db = TestCluster::required().database().await;
    let key = format!("default:{KEY}");
    let mut args = vec!["--api-key", &key, "--allow-private-webhooks"];
    args.extend(["--webhook-interval-ms", "50"]);
    args.extend(limits);
    // Started together, as after a deploy: they migrate and import the key at once.
    let mut started: Vec<Server> = (0..n).map(|_| Server::spawn(&db, &args)).collect();
    for server in &mut started {
        server.ready().await;
    }
    (started, db)
}

/// `n` servers on a new database, and the database's URL.
async fn servers(n: usize) -> (Vec<Server>, String) {
    servers_limited(n, UNLIMITED).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_server_acknowledges_every_other_reads_at_once() {
    let (s, _) = servers(3).await;
    let http = reqwest::Client::new();
    let session = post(
        &http,
        KEY,
        format!("{}/v1/sessions", s[0].url),
        json!({"agent_id": "bot"}),
    )
    .await;
    let id = session["id"].as_str().unwrap().to_owned();
    for n in 1..=6u64 {
        let writer = &s[n as usize % 3];
        let state = json!({"state": {"n": n}});
        let (status, _) = call(
            &http,
            KEY,
            reqwest::Method::PATCH,
            format!("{}/v1/sessions/{id}/state", writer.url),
            state,
        )
        .await;
        assert!(status.is_success());
        for reader in &s {
            let got = get(&http, KEY, format!("{}/v1/sessions/{id}", reader.url)).await;
            assert_eq!(
                (got["version"].as_u64(), got["state"]["n"].as_u64()),
                (Some(n), Some(n))
            );
        }
    }
    // A memory added through one is found by a search through each other at once.
    post(
        &http,
        KEY,
        format!("{}/v1/sessions/{id}/memories", s[1].url),
        json!({"content": "The user's cat is called Miso"}),
    )
    .await;
    for reader in [&s[0], &s[2]] {
        let found = post(
            &http,
            KEY,
            format!("{}/v1/memory/search", reader.url),
            json!({"query": "cat called Miso", "session_id": id}),
        )
        .await;
        let contents: Vec<&str> = found["data"]
            .as_array()
            .or(found.as_array())
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(contents, ["The user's cat is called Miso"], "{found}");
    }
    // A retry with the same idempotency key, sent to another server, is answered with the
    // first answer and creates nothing.
    let create = |server: &Server| {
        http.post(format!("{}/v1/sessions", server.url))
            .header("X-API-Key", KEY)
            .header("Idempotency-Key", "one-session-please")
            .json(&json!({"agent_id": "idem"}))
            .send()
    };
    let first: Value = create(&s[0]).await.unwrap().json().await.unwrap();
    let retry: Value = create(&s[2]).await.unwrap().json().await.unwrap();
    assert_eq!(first["id"], retry["id"]);
    let listed = get(
        &http,
        KEY,
        format!("{}/v1/sessions?agent_id=idem", s[1].url),
    )
    .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
}

/// Servers started together on a database without keys make one development key, which
/// one of them prints and every one accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_started_together_without_keys_make_one() {
    let db = TestCluster::required().database().await;
    let mut started: Vec<Server> = (0..3).map(|_| Server::spawn(&db, &[])).collect();
    for server in &mut started {
        server.ready().await;
    }
    let listed = statebase(&["keys", "--db", &db, "list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let printed: Vec<String> = started.iter().map(Server::stdout).collect();
    let secrets: Vec<&str> = printed
        .iter()
        .flat_map(|out| out.lines())
        .filter_map(|line| line.trim().strip_prefix("X-API-Key: "))
        .collect();
    assert_eq!(secrets.len(), 1, "{printed:?}");
    let http = reqwest::Client::new();
    for server in &started {
        get(&http, secrets[0], format!("{}/v1/sessions", server.url)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_anywhere_stops_working_everywhere_within_a_second() {
    let (s, db) = servers(3).await;
    let created = statebase(&["keys", "--db", &db, "create", "--tenant", "acme"]);
    let fields: Vec<&str> = created.split_whitespace().collect();
    let (key_id, secret) = (fields[0].to_owned(), fields[2].to_owned());
    let http = reqwest::Client::new();
    let status_on = |server: &Server| {
        let url = format!("{}/v1/sessions", server.url);
        let r = http.get(url).header("X-API-Key", &secret).send();
        async move { r.await.unwrap().status() }
    };
    for server in &s {
        assert_eq!(status_on(server).await, StatusCode::OK);
    }
    statebase(&["keys", "--db", &db, "revoke", &key_id]);
    let revoked = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for server in &s {
        assert_eq!(status_on(server).await, StatusCode::UNAUTHORIZED);
    }
    assert!(revoked.elapsed() < Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_webhook_event_is_delivered_once_by_three_servers() {
    let (s, _) = servers(3).await;
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let sink = sink.clone();
            async move {
                let id = headers["x-statebase-event-id"].to_str().unwrap().to_owned();
                sink.lock().push(id);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    post(
        &http,
        KEY,
        format!("{}/v1/webhooks", s[0].url),
        json!({"url": hook, "events": ["session.created"]}),
    )
    .await;
    for i in 0..12 {
        post(
            &http,
            KEY,
            format!("{}/v1/sessions", s[i % 3].url),
            json!({"agent_id": "bot"}),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().len() < 12 {
        assert!(
            Instant::now() < deadline,
            "only {} of 12 events arrived",
            got.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for any server to deliver one again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in got.lock().iter() {
        *counts.entry(id.clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), 12);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

/// Every server sweeps expired sessions, every second here: each is deleted once, with one
/// `session.expired` trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sweepers_expire_each_session_once() {
    let sweep = [UNLIMITED, &["--sweep-interval", "1"]].concat();
    let (s, _) = servers_limited(3, &sweep).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..12 {
        let body = json!({"agent_id": "bot", "ttl_seconds": 1});
        let created = post(&http, KEY, format!("{}/v1/sessions", s[i % 3].url), body).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &ids {
        let url = format!("{}/v1/sessions/{id}", s[0].url);
        while call(&http, KEY, reqwest::Method::GET, url.clone(), Value::Null)
            .await
            .0
            != StatusCode::NOT_FOUND
        {
            assert!(Instant::now() < deadline, "{id} was not swept");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Time for another sweeper to expire one again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let traces = get(
        &http,
        KEY,
        format!("{}/v1/traces?action=session.expired&limit=100", s[1].url),
    )
    .await;
    let mut expired: Vec<&str> = traces["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["resource_id"].as_str().unwrap())
        .collect();
    expired.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(expired, want);
}

/// Every server applies the tenant's retention policy at each sweep: a session written
/// through one is pruned to what the policy keeps, once (one `state.pruned` trace), and a
/// session with its own policy keeps by its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sweepers_apply_retention_once() {
    let sweep = [UNLIMITED, &["--sweep-interval", "1"]].concat();
    let (s, _) = servers_limited(3, &sweep).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..2 {
        let created = post(
            &http,
            KEY,
            format!("{}/v1/sessions", s[i].url),
            json!({"agent_id": "bot"}),
        )
        .await;
        let id = created["id"].as_str().unwrap().to_owned();
        for n in 1..=40 {
            let url = format!("{}/v1/sessions/{id}/state", s[n % 3].url);
            let (status, _) = call(
                &http,
                KEY,
                reqwest::Method::PATCH,
                url,
                json!({"state": {"n": n}}),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
        ids.push(id);
    }
    let own = format!("{}/v1/sessions/{}/retention", s[1].url, ids[1]);
    let (status, _) = call(
        &http,
        KEY,
        reqwest::Method::PUT,
        own,
        json!({"keep_versions": 20}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let policy = format!("{}/v1/retention", s[2].url);
    let (status, _) = call(
        &http,
        KEY,
        reqwest::Method::PUT,
        policy,
        json!({"keep_versions": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Keeping 5 of 41 keeps 36..=40 back to the snapshot at 32; keeping 20, from 16.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (id, first) in [(&ids[0], 32), (&ids[1], 16)] {
        let url = format!(
            "{}/v1/sessions/{id}/history?from_version=0&limit=100",
            s[0].url
        );
        loop {
            let history = get(&http, KEY, url.clone()).await;
            if history["data"][0]["version"] == first {
                break;
            }
            assert!(Instant::now() < deadline, "{id} was not pruned: {history}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Time for the other sweepers to prune again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let url = format!("{}/v1/traces?action=state.pruned&limit=100", s[1].url);
    let traces = get(&http, KEY, url).await;
    let mut pruned: Vec<&str> = traces["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["session_id"].as_str().unwrap())
        .collect();
    pruned.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(pruned, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_an_idempotent_request_sent_to_every_server_at_once_run_once() {
    let (s, _) = servers(3).await;
    let http = reqwest::Client::new();
    for round in 0..5 {
        let key = format!("race-{round}");
        let agent = format!("race-{round}");
        let sends: Vec<_> = (0..6)
            .map(|i| {
                let request = http
                    .post(format!("{}/v1/sessions", s[i % 3].url))
                    .header("X-API-Key", KEY)
                    .header("Idempotency-Key", &key)
                    .json(&json!({"agent_id": agent}))
                    .send();
                tokio::spawn(async move {
                    let r = request.await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    r.json::<Value>().await.unwrap()["id"].clone()
                })
            })
            .collect();
        let mut ids = Vec::new();
        for send in sends {
            ids.push(send.await.unwrap());
        }
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let url = format!("{}/v1/sessions?agent_id={agent}", s[0].url);
        let listed = get(&http, KEY, url).await;
        assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rate_limit_holds_across_servers() {
    // 10 at once, then one a second: 30 requests in a few hundred milliseconds, spread
    // over three servers, get about 10 through, not 10 from each.
    let limits = ["--rate-limit", "60", "--burst", "10"];
    let (s, _) = servers_limited(3, &limits).await;
    let http = reqwest::Client::new();
    let (mut admitted, mut refused) = (0, 0);
    let started = Instant::now();
    for i in 0..30 {
        let r = http
            .get(format!("{}/v1/sessions", s[i % 3].url))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    // One more token a second came in while they were sent.
    let refilled = started.elapsed().as_secs() as usize;
    assert!(
        (10..=11 + refilled).contains(&admitted),
        "{admitted} admitted, {refused} refused in {:?}",
        started.elapsed()
    );
}

/// An acknowledged turn: its session, number, state version and state.
#[derive(Clone)]
struct Acked {
    session: String,
    number: u64,
    version: u64,
    state: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_32_writers_loses_no_acknowledged_write() {
    let (mut s, _) = servers(3).await;
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for _ in 0..8 {
        let created = post(
            &http,
            KEY,
            format!("{}/v1/sessions", s[0].url),
            json!({"agent_id": "w"}),
        )
        .await;
        sessions.push(created["id"].as_str().unwrap().to_owned());
    }
    let urls: Vec<String> = s.iter().map(|x| x.url.clone()).collect();
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Instant::now() + Duration::from_secs(4);
    let mut writers = Vec::new();
    for w in 0..32usize {
        let (http, urls, acked) = (http.clone(), urls.clone(), acked.clone());
        let session = sessions[w % sessions.len()].clone();
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < stop {
                i += 1;
                let url = format!("{}/v1/sessions/{session}/turns", urls[i % urls.len()]);
                let state = json!({"w": w, "i": i});
                let body = json!({"input": "q", "output": "a", "state_after": state});
                let sent = http
                    .post(url)
                    .header("X-API-Key", KEY)
                    .json(&body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                // A killed server's requests fail; a conflict is a lost race: both are
                // fine, neither was acknowledged.
                let Ok(r) = sent else { continue };
                if r.status() != StatusCode::CREATED && r.status() != StatusCode::OK {
                    continue;
                }
                let turn: Value = r.json().await.unwrap();
                let number = turn["turn_number"].as_u64().unwrap();
                let version = turn["state_version"].as_u64().unwrap();
                acked.lock().push(Acked {
                    session: session.clone(),
                    number,
                    version,
                    state,
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = s.remove(1);
    drop(killed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert!(
        acked.len() > 100,
        "only {} writes were acknowledged",
        acked.len()
    );
    for session in &sessions {
        let reader = &s[0].url;
        let got = get(&http, KEY, format!("{reader}/v1/sessions/{session}")).await;
        let turn_count = got["turn_count"].as_u64().unwrap();
        let turns = get(
            &http,
            KEY,
            format!("{reader}/v1/sessions/{session}/turns?limit=100&order=asc"),
        )
        .await;
        let mut numbers: Vec<u64> = Vec::new();
        let mut page = turns;
        loop {
            let data = page["data"].as_array().unwrap();
            numbers.extend(data.iter().map(|t| t["turn_number"].as_u64().unwrap()));
            if !page["has_more"].as_bool().unwrap_or(false) {
                break;
            }
            let last = data.last().unwrap()["id"].as_str().unwrap();
            let next = format!(
                "{reader}/v1/sessions/{session}/turns?limit=100&order=asc&starting_after={last}"
            );
            page = get(&http, KEY, next).await;
        }
        let expected: Vec<u64> = (1..=turn_count).collect();
        assert_eq!(numbers, expected, "turn numbers of {session} have a gap");
        let mine = || acked.iter().filter(|a| a.session == *session);
        for Acked { number, .. } in mine() {
            assert!(
                *number <= turn_count,
                "acknowledged turn {number} of {session} is gone"
            );
        }
        // Every acknowledged version is there, with the state its turn wrote.
        let versions = mine().map(|a| (a.version, &a.state));
        assert_versions_hold(&http, KEY, reader, session, versions).await;
    }
}

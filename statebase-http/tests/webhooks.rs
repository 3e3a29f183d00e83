//! Webhooks against real receivers on loopback: signed events of each tenant's changes,
//! retried until received, kept across a killed server, and one `session.expired` per
//! expired session.

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;
use statebase_core::{KeyLimits, ServerStore};
use statebase_http::{router, webhooks, AppState, Rate, RateLimiter, Targets};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY_A: &str = "sb_tenantakeytenantakey0001";
const KEY_B: &str = "sb_tenantbkeytenantbkey0001";
/// Tenant `a/b`, whose name starts with tenant `a`'s.
const KEY_AB: &str = "sb_tenantabkeytenantabkey01";

/// What a receiver got: the signature header, the event id header and the raw body.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A webhook receiver on loopback that answers 500 to its first `fail_first` requests.
async fn receiver(fail_first: usize) -> (String, Received) {
    receiver_at("127.0.0.1:0", fail_first).await
}

/// [`receiver`] on a given address.
async fn receiver_at(addr: &str, fail_first: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (store, calls) = (store.clone(), calls.clone());
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) < fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let header = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                store.lock().push((
                    header("x-statebase-signature"),
                    header("x-statebase-event-id"),
                    body.to_vec(),
                ));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(statebase_http::serve(
        listener,
        app,
        statebase_http::Limits::default(),
        std::future::pending(),
    ));
    (url, got)
}

/// Checks `t=…,v1=…` the way a receiver would, with nothing from statebase.
fn verifies(secret: &str, header: &str, body: &[u8]) -> bool {
    let Some((t, v1)) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == v1
}

fn events(got: &Received) -> Vec<Value> {
    got.lock()
        .iter()
        .map(|(_, _, body)| serde_json::from_slice(body).unwrap())
        .collect()
}

async fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Server {
    url: String,
    http: reqwest::Client,
    sb: statebase_core::StateBase<Arc<dyn ServerStore>>,
    _dir: tempfile::TempDir,
}

/// A server over a SQLite file with its dispatcher every 50 ms and a sweep every second.
async fn start() -> Server {
    start_with(true, Targets::Any).await
}

/// [`start`], with no dispatcher running unless `dispatch` (the test runs its rounds),
/// taking endpoints at the addresses `targets` allows.
async fn start_with(dispatch: bool, targets: Targets) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ServerStore> =
        Arc::new(statebase_sqlite::SqliteStore::open(dir.path().join("hooks.db")).unwrap());
    let state = AppState::new(store, RateLimiter::new(Rate::new(10_000, 10_000)), targets);
    for (tenant, key) in [("a", KEY_A), ("b", KEY_B), ("a/b", KEY_AB)] {
        state
            .sb
            .import_api_key(tenant, "test", key, KeyLimits::default(), None)
            .await
            .unwrap();
    }
    if dispatch {
        webhooks::Dispatcher::new(state.sb.clone(), Targets::Any).spawn(Duration::from_millis(50));
    }
    statebase_http::spawn_maintenance(&state, Duration::from_secs(1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sb = state.sb.clone();
    let app = router(state);
    tokio::spawn(statebase_http::serve(
        listener,
        app,
        statebase_http::Limits::default(),
        std::future::pending(),
    ));
    Server {
        url,
        http: reqwest::Client::new(),
        sb,
        _dir: dir,
    }
}

impl Server {
    async fn call(&self, key: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-API-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    async fn post(&self, key: &str, path: &str, body: Value) -> Value {
        self.call(key, reqwest::Method::POST, path, body).await
    }

    /// One dispatch round, for a server started without its dispatcher.
    async fn dispatch(&self) {
        webhooks::Dispatcher::new(self.sb.clone(), Targets::Any)
            .step()
            .await
            .unwrap()
    }

    /// How many times the store's `operation` was called, from `/metrics`.
    async fn store_calls(&self, operation: &str) -> u64 {
        let metrics = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = format!(
            "statebase_store_operation_duration_seconds_count{{operation=\"{operation}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Tenant a's deliveries to `endpoint` once every one is delivered. A receiver has an
    /// event before the dispatcher records its delivery, so this waits for the records.
    async fn settled_deliveries(&self, endpoint: &str) -> Vec<Value> {
        let path = format!("/v1/webhooks/{endpoint}/deliveries");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = self
                .call(KEY_A, reqwest::Method::GET, &path, json!({}))
                .await;
            let data = list["data"].as_array().unwrap().clone();
            if data.iter().all(|d| d["status"] == "delivered") {
                return data;
            }
            assert!(Instant::now() < deadline, "deliveries never all delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn signed_events_of_each_tenant_in_order() {
    // Dispatch rounds run when the test says, so what each event's data shows is known.
    let srv = start_with(false, Targets::Any).await;
    let (url_a, got_a) = receiver(0).await;
    let (url_b, got_b) = receiver(0).await;
    let hook = srv.post(KEY_A, "/v1/webhooks", json!({"url": url_a})).await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_") && hook["id"].as_str().unwrap().starts_with("wh_"));
    srv.post(
        KEY_B,
        "/v1/webhooks",
        json!({"url": url_b, "events": ["session.created"], "secret": "whsec_tenant_b_secret"}),
    )
    .await;

    let s = srv
        .post(KEY_A, "/v1/sessions", json!({"agent_id": "bot"}))
        .await;
    let sid = s["id"].as_str().unwrap();
    let state = format!("/v1/sessions/{sid}/state");
    for n in [1, 2] {
        srv.call(
            KEY_A,
            reqwest::Method::PATCH,
            &state,
            json!({"state": {"n": n}}),
        )
        .await;
    }
    srv.post(
        KEY_A,
        &format!("/v1/sessions/{sid}/turns"),
        json!({"input": "hi", "output": "hello"}),
    )
    .await;
    let memory = srv
        .post(
            KEY_A,
            "/v1/memories",
            json!({"content": "likes tea", "session_id": sid}),
        )
        .await;
    let memory_path = format!("/v1/memories/{}", memory["id"].as_str().unwrap());
    let changed = json!({"content": "likes green tea"});
    srv.call(KEY_A, reqwest::Method::PATCH, &memory_path, changed)
        .await;
    srv.dispatch().await;
    assert_eq!(got_a.lock().len(), 5, "one round delivers what is due");
    srv.post(
        KEY_A,
        &format!("/v1/sessions/{sid}/rollback"),
        json!({"version": 0}),
    )
    .await;
    srv.call(
        KEY_A,
        reqwest::Method::DELETE,
        &format!("/v1/sessions/{sid}"),
        json!({}),
    )
    .await;
    let b = srv
        .post(KEY_B, "/v1/sessions", json!({"agent_id": "other"}))
        .await;
    srv.dispatch().await;
    let a = events(&got_a);
    let kinds: Vec<&str> = a.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "session.created",
            "session.updated",
            "session.updated",
            "turn.added",
            "memory.created",
            "state.rolled_back",
            "session.deleted"
        ]
    );
    for (signature, event_id, body) in got_a.lock().iter() {
        assert!(verifies(&secret, signature, body), "{signature}");
        assert!(!verifies("whsec_another_secret", signature, body));
        let e: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(e["id"], event_id.as_str());
        assert!(event_id.starts_with("evt_") && e["created_at"].is_string());
    }
    // Data is the resource as the API returns it when the event goes out, with the state
    // each change wrote and the memory as it was created...
    let (data, state_of) = (|i: usize| &a[i]["data"], |i: usize| &a[i]["data"]["state"]);
    assert_eq!(
        (data(0)["object"].as_str(), &data(0)["id"]),
        (Some("session"), &json!(sid))
    );
    assert_eq!((state_of(0), &data(0)["version"]), (&json!({}), &json!(0)));
    assert_eq!(
        (state_of(1), &data(1)["version"]),
        (&json!({"n": 1}), &json!(1))
    );
    assert_eq!(
        (state_of(2), &data(2)["version"]),
        (&json!({"n": 2}), &json!(2))
    );
    assert_eq!(data(3)["object"], "turn");
    assert_eq!(data(3)["input"]["content"], "hi");
    assert_eq!(data(4)["id"], memory["id"]);
    assert_eq!(
        (&data(4)["content"], &data(4)["version"]),
        (&json!("likes tea"), &json!(1))
    );
    // ...and a resource deleted by then is its id, marked deleted, with the change's details.
    for e in &a[5..] {
        assert_eq!(e["data"]["object"], "session");
        assert_eq!(e["data"]["id"], sid);
        assert_eq!(e["data"]["deleted"], true, "{e}");
    }
    // Tenant b got its own session only; tenant a's never reach it.
    let bs = events(&got_b);
    assert_eq!(bs.len(), 1);
    assert_eq!(bs[0]["data"]["id"], b["id"]);
    let (sig, _, body) = got_b.lock()[0].clone();
    assert!(verifies("whsec_tenant_b_secret", &sig, &body));

    // Endpoints are per tenant; bad URLs and events are refused.
    let list = srv
        .call(KEY_B, reqwest::Method::GET, "/v1/webhooks", json!({}))
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["url"], url_b);
    for bad in [
        json!({"url": "ftp://example.com/hook"}),
        json!({"url": "not a url"}),
        json!({"url": url_a, "events": ["session.exploded"]}),
    ] {
        let r = srv
            .http
            .post(format!("{}/v1/webhooks", srv.url))
            .header("X-API-Key", KEY_A)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let a_id = hook["id"].as_str().unwrap();
    let r = srv
        .http
        .delete(format!("{}/v1/webhooks/{a_id}", srv.url))
        .header("X-API-Key", KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "another tenant's endpoint"
    );
}

#[tokio::test]
async fn failing_receiver_gets_every_event_and_can_be_sent_one_again() {
    let srv = start().await;
    let (url, got) = receiver(2).await;
    let hook = srv.post(KEY_A, "/v1/webhooks", json!({"url": url})).await;
    let id = hook["id"].as_str().unwrap();
    let s = srv
        .post(KEY_A, "/v1/sessions", json!({"agent_id": "bot"}))
        .await;
    let sid = s["id"].as_str().unwrap();
    for n in 0..3 {
        srv.call(
            KEY_A,
            reqwest::Method::PATCH,
            &format!("/v1/sessions/{sid}/state"),
            json!({"state": {"n": n}}),
        )
        .await;
    }
    // Two failures: retried after about 1 s and then 2 s.
    wait_until("4 events past 2 failures", Duration::from_secs(30), || {
        got.lock().len() >= 4
    })
    .await;
    let kinds: Vec<String> = events(&got)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "session.created",
            "session.updated",
            "session.updated",
            "session.updated"
        ],
        "in order despite the failures"
    );
    let data = srv.settled_deliveries(id).await;
    assert_eq!(data.len(), 4);
    let first = data.last().unwrap();
    assert_eq!(first["type"], "session.created");
    assert_eq!(first["attempts"], 3);
    // Sent again on request, with the same event id.
    let event_id = first["event_id"].as_str().unwrap();
    srv.post(
        KEY_A,
        &format!("/v1/webhooks/{id}/deliveries/{event_id}/retry"),
        json!({}),
    )
    .await;
    wait_until("the redelivery", Duration::from_secs(10), || {
        got.lock().len() >= 5
    })
    .await;
    assert_eq!(got.lock()[4].1, event_id);

    // Done deliveries are kept for a while, then forgotten.
    assert_eq!(srv.settled_deliveries(id).await.len(), 4);
    let dispatcher = webhooks::Dispatcher::new(srv.sb.clone(), Targets::Any);
    assert_eq!(dispatcher.prune(webhooks::KEEP_DONE).await.unwrap(), 0);
    assert_eq!(dispatcher.prune(chrono::Duration::zero()).await.unwrap(), 4);
    assert!(srv.settled_deliveries(id).await.is_empty());
}

#[tokio::test]
async fn an_expired_session_gives_exactly_one_session_expired() {
    let srv = start().await;
    let (url, got) = receiver(0).await;
    srv.post(
        KEY_A,
        "/v1/webhooks",
        json!({"url": url, "events": ["session.expired"]}),
    )
    .await;
    let s = srv
        .post(
            KEY_A,
            "/v1/sessions",
            json!({"agent_id": "bot", "ttl_seconds": 1}),
        )
        .await;
    wait_until("session.expired", Duration::from_secs(20), || {
        !got.lock().is_empty()
    })
    .await;
    // More sweeps run; still one event.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let all = events(&got);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["type"], "session.expired");
    assert_eq!(all[0]["data"]["id"], s["id"]);
}

#[tokio::test]
async fn erasing_a_user_announces_user_erased_with_its_counts() {
    let srv = start().await;
    let (url, got) = receiver(0).await;
    srv.post(
        KEY_A,
        "/v1/webhooks",
        json!({"url": url, "events": ["user.erased"]}),
    )
    .await;
    srv.post(
        KEY_A,
        "/v1/sessions",
        json!({"agent_id": "bot", "user_id": "u1"}),
    )
    .await;
    let erased = srv
        .call(KEY_A, reqwest::Method::DELETE, "/v1/users/u1", json!(null))
        .await;
    wait_until("user.erased", Duration::from_secs(20), || {
        !got.lock().is_empty()
    })
    .await;
    let all = events(&got);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["type"], "user.erased");
    assert_eq!(all[0]["data"]["object"], "user");
    assert_eq!(all[0]["data"]["id"], "u1");
    assert_eq!(all[0]["data"]["details"], erased["erased"]);
    assert_eq!(all[0]["data"]["details"]["sessions"], 1);
}

/// A receiver that takes connections and never answers: each attempt times out, is retried
/// with a backoff, and the delivery is given up once it has failed for 24 hours (by the
/// dispatcher's clock, moved by hand).
#[tokio::test]
async fn an_unanswered_delivery_times_out_and_is_given_up_after_24_hours() {
    let srv = start_with(false, Targets::Any).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let hook = srv.post(KEY_A, "/v1/webhooks", json!({"url": url})).await;
    srv.post(KEY_A, "/v1/sessions", json!({"agent_id": "bot"}))
        .await;
    let clock = Arc::new(statebase_core::ManualClock::new(chrono::Utc::now()));
    let config = statebase_core::Config {
        clock: clock.clone(),
        ..Default::default()
    };
    let sb = statebase_core::StateBase::with_config(srv.sb.store().clone(), config);
    let dispatcher =
        webhooks::Dispatcher::with_timeout(sb, Targets::Any, Duration::from_millis(300));
    let path = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    // One dispatch round, then the delivery's status and attempts, and the delivery.
    let round = || async {
        dispatcher.step().await.unwrap();
        let list = srv
            .call(KEY_A, reqwest::Method::GET, &path, json!({}))
            .await;
        let d = list["data"][0].clone();
        let status = d["status"].as_str().unwrap_or_default().to_owned();
        (status, d["attempts"].as_u64().unwrap_or_default(), d)
    };
    let started = Instant::now();
    let (status, attempts, d) = round().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the attempt did not time out"
    );
    assert_eq!((status.as_str(), attempts), ("pending", 1));
    assert!(
        d["last_error"].as_str().unwrap().contains("timed out"),
        "{d}"
    );
    // Due again after its backoff, and still retried 23 hours in; not before it is due.
    clock.advance(chrono::Duration::hours(23));
    assert_eq!(round().await.1, 2);
    let (status, attempts, _) = round().await;
    assert_eq!((status.as_str(), attempts), ("pending", 2));
    // Given up once it has failed for 24 hours, and not tried again.
    clock.advance(chrono::Duration::hours(1));
    let (status, attempts, _) = round().await;
    assert_eq!((status.as_str(), attempts), ("failed", 3));
    clock.advance(chrono::Duration::hours(1));
    assert_eq!(round().await.1, 3);
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `statebase serve` on `db` with a dispatch round every `interval_ms`, answering on the
/// returned base URL.
async fn serve(db: &str, interval_ms: u32) -> (std::process::Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let interval = interval_ms.to_string();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_statebase"))
        .args([
            "serve",
            "--db",
            db,
            "--addr",
            &addr,
            "--allow-private-webhooks",
        ])
        .args(["--webhook-interval-ms", &interval])
        .args(["--api-key", &format!("default:{KEY_A}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{url}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the server never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, url)
}

#[tokio::test]
async fn events_written_before_a_kill_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("kill.db").display());
    // The receiver is down until after the kill, so nothing can be delivered before it.
    let receiver_addr = format!("127.0.0.1:{}", free_port());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_statebase"))
        .args([
            "webhooks",
            "--db",
            &db,
            "--allow-private",
            "create",
            "--url",
        ])
        .arg(format!("http://{receiver_addr}/hook"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let secret = line.split_whitespace().last().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{line}");

    // Its first dispatch round runs at start, the next in a minute: when it is killed, the
    // events exist only in the trace feed written with the changes.
    let (mut child, url) = serve(&db, 60_000).await;
    let http = reqwest::Client::new();
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let r = http
            .post(format!("{url}/v1/sessions"))
            .header("X-API-Key", KEY_A)
            .json(&json!({"agent_id": "bot"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let s: Value = r.json().await.unwrap();
        ids.insert(s["id"].as_str().unwrap().to_owned());
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let (_, got) = receiver_at(&receiver_addr, 0).await;
    let (mut child, _) = serve(&db, 50).await;
    wait_until(
        "5 events after the restart",
        Duration::from_secs(30),
        || got.lock().len() >= 5,
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let delivered: std::collections::BTreeSet<String> = events(&got)
        .iter()
        .filter(|e| e["type"] == "session.created")
        .map(|e| e["data"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, ids);
    for (signature, _, body) in got.lock().iter() {
        assert!(verifies(&secret, signature, body));
    }
}

#[tokio::test]
async fn redirects_are_not_followed_and_deliveries_are_per_tenant() {
    let srv = start().await;
    let (hook_url, got) = receiver(0).await;
    // A receiver that only redirects to the real one.
    let app = axum::Router::new().route(
        "/moved",
        axum::routing::post(move || {
            let to = hook_url.clone();
            async move { (StatusCode::FOUND, [(axum::http::header::LOCATION, to)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let moved = format!("http://{}/moved", listener.local_addr().unwrap());
    tokio::spawn(statebase_http::serve(
        listener,
        app,
        statebase_http::Limits::default(),
        std::future::pending(),
    ));

    let hook = srv.post(KEY_A, "/v1/webhooks", json!({"url": moved})).await;
    let id = hook["id"].as_str().unwrap().to_owned();
    srv.post(KEY_A, "/v1/sessions", json!({"agent_id": "bot"}))
        .await;
    let deliveries = format!("/v1/webhooks/{id}/deliveries");
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let list = srv
            .call(KEY_A, reqwest::Method::GET, &deliveries, json!({}))
            .await;
        if list["data"][0]["attempts"].as_u64().unwrap_or(0) >= 1 {
            break list["data"][0].clone();
        }
        assert!(Instant::now() < deadline, "no attempt was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first["status"], "pending", "a redirect is not a delivery");
    assert_eq!(first["last_status"], 302);
    assert!(first["next_attempt_at"].is_string());
    assert!(got.lock().is_empty(), "the redirect was followed");

    // Tenant a/b's endpoint is not tenant a's, whatever a names it.
    let nested = srv
        .post(KEY_AB, "/v1/webhooks", json!({"url": moved}))
        .await;
    let nested_id = nested["id"].as_str().unwrap();
    let mine = srv
        .call(KEY_A, reqwest::Method::GET, "/v1/webhooks", json!({}))
        .await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    assert_eq!(mine["data"][0]["id"], id.as_str());
    for path in [
        format!("/v1/webhooks/b%2F{nested_id}/deliveries"),
        format!("/v1/webhooks/{nested_id}/deliveries"),
    ] {
        let r = srv
            .http
            .get(format!("{}{path}", srv.url))
            .header("X-API-Key", KEY_A)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }

    // Another tenant can't see or resend this endpoint's deliveries.
    let event_id = first["event_id"].as_str().unwrap();
    for (method, path) in [
        (reqwest::Method::GET, deliveries.clone()),
        (
            reqwest::Method::POST,
            format!("{deliveries}/{event_id}/retry"),
        ),
    ] {
        let r = srv
            .http
            .request(method, format!("{}{path}", srv.url))
            .header("X-API-Key", KEY_B)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "webhook_not_found");
    }
}

/// While no endpoint exists the dispatcher skips the feed without reading it (only its
/// end), and an endpoint added later is sent only what happens after.
#[tokio::test]
async fn without_endpoints_the_feed_is_skipped_unread() {
    let srv = start_with(false, Targets::Any).await;
    let before = srv
        .post(KEY_A, "/v1/sessions", json!({"agent_id": "early"}))
        .await;
    srv.dispatch().await;
    srv.dispatch().await;
    assert_eq!(srv.store_calls("trace_feed").await, 0, "the feed was read");
    assert_eq!(srv.store_calls("trace_feed_end").await, 2);

    let (url, got) = receiver(0).await;
    srv.post(KEY_A, "/v1/webhooks", json!({"url": url})).await;
    let after = srv
        .post(KEY_A, "/v1/sessions", json!({"agent_id": "late"}))
        .await;
    srv.dispatch().await;
    let ids: Vec<Value> = events(&got)
        .iter()
        .map(|e| e["data"]["id"].clone())
        .collect();
    assert_eq!(ids, [after["id"].clone()], "not {}", before["id"]);
    assert!(srv.store_calls("trace_feed").await > 0);
}

#[tokio::test]
async fn internal_addresses_are_refused_at_creation_and_at_delivery() {
    let srv = start_with(false, Targets::Public).await;
    let (hook, got) = receiver(0).await;
    let port = hook.split(':').nth(2).unwrap().split('/').next().unwrap();
    for url in [
        hook.clone(),
        format!("http://localhost:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://127.0.0.1:22/".to_owned(),
        "http://[::1]:8080/".to_owned(),
        "http://[::ffff:127.0.0.1]/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://192.168.1.1/".to_owned(),
        "http://0.0.0.0/".to_owned(),
    ] {
        let r = srv
            .http
            .post(format!("{}/v1/webhooks", srv.url))
            .header("X-API-Key", KEY_A)
            .json(&json!({ "url": url }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url} was accepted");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], "url", "{v}");
    }
    // A public address is taken (nothing is sent to it here).
    let public = srv
        .post(
            KEY_A,
            "/v1/webhooks",
            json!({"url": "http://93.184.216.34/hook"}),
        )
        .await;
    assert!(public["secret"].as_str().unwrap().starts_with("whsec_"));

    // Endpoints an operator made while private addresses were allowed, one by name (it
    // resolves to loopback) and one by address: a dispatcher that allows only public
    // addresses does not reach them, and says so without telling what listens there.
    let sb = srv.sb.tenant("a");
    let mut ids = Vec::new();
    for url in [format!("http://localhost:{port}/hook"), hook.clone()] {
        let e = webhooks::create(&sb, "a", &url, vec![], None, Targets::Any)
            .await
            .unwrap();
        ids.push(e.id);
    }
    srv.post(KEY_A, "/v1/sessions", json!({"agent_id": "probe"}))
        .await;
    webhooks::Dispatcher::new(srv.sb.clone(), Targets::Public)
        .step()
        .await
        .unwrap();
    assert!(
        got.lock().is_empty(),
        "a refused delivery reached the receiver"
    );
    for id in &ids {
        let list = srv
            .call(
                KEY_A,
                reqwest::Method::GET,
                &format!("/v1/webhooks/{id}/deliveries"),
                json!({}),
            )
            .await;
        let d = &list["data"][0];
        assert_eq!(d["status"], "pending", "{d}");
        assert!(d["last_status"].is_null(), "{d}");
        assert_eq!(
            d["last_error"], "refused: the endpoint's address is not a public one",
            "{d}"
        );
    }
    // Once private addresses are allowed, the same deliveries reach the receiver (their
    // retry is due a second after the refusal).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    webhooks::Dispatcher::new(srv.sb.clone(), Targets::Any)
        .step()
        .await
        .unwrap();
    assert_eq!(got.lock().len(), 2, "the receiver was not reachable at all");
}

#[tokio::test]
async fn a_webhook_secret_is_shown_once() {
    let srv = start_with(false, Targets::Any).await;
    let (hook, _) = receiver(0).await;
    let made = srv
        .post(KEY_A, "/v1/webhooks", json!({ "url": hook }))
        .await;
    let secret = made["secret"].as_str().unwrap();
    let list = srv
        .call(KEY_A, reqwest::Method::GET, "/v1/webhooks", json!({}))
        .await;
    let listed = &list["data"][0];
    assert_eq!(listed["id"], made["id"]);
    assert!(listed.get("secret").is_none(), "{listed}");
    let prefix = listed["secret_prefix"].as_str().unwrap();
    assert!(
        prefix.starts_with("whsec_") && prefix.len() < secret.len(),
        "{prefix}"
    );
    assert!(!list.to_string().contains(secret));
}

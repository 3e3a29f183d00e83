//! Slow, silent and numerous clients on raw sockets against a real server on 127.0.0.1:
//! each is cut off by its bound, and a normal client is served meanwhile.

use statebase_core::{KeyLimits, ServerStore, StateBase};
use statebase_http::{router, serve, AppState, Limits, Rate, RateLimiter, Targets};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "sb_hostilekeyhostilekey0001";

struct Server {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    _sb: StateBase<Arc<dyn ServerStore>>,
}

/// Short bounds, so that the tests wait for seconds rather than minutes.
fn short() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        max_connections: 10_000,
    }
}

async fn start(limits: Limits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ServerStore> =
        Arc::new(statebase_sqlite::SqliteStore::open(dir.path().join("h.db")).unwrap());
    let state = AppState::new(
        store,
        RateLimiter::new(Rate::new(100_000, 100_000)),
        Targets::Public,
    );
    state
        .sb
        .import_api_key("t", "test", KEY, KeyLimits::default(), None)
        .await
        .unwrap();
    let sb = state.sb.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state);
    tokio::spawn(serve(listener, app, limits, std::future::pending()));
    Server { addr, dir, _sb: sb }
}

/// Waits until the server closes `conn` (end of file or reset), and says how long that took.
async fn closed_after(conn: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), conn.read(&mut buf)).await {
            Err(_) => panic!("the connection was still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// One whole response read from `conn`: its status and body.
async fn response(conn: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("no response within 5 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .expect("a content-length");
        if body.len() >= length {
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            return (status, body[..length].to_owned());
        }
    }
}

const GET_HEALTH: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn a_silent_connection_and_a_stalled_head_are_closed_at_the_head_bound() {
    let srv = start(short()).await;
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    let mut stalled = TcpStream::connect(srv.addr).await.unwrap();
    stalled
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A head sent a byte every 300 ms never completes its head within the bound either.
    let mut trickle = TcpStream::connect(srv.addr).await.unwrap();
    let trickling = tokio::spawn(async move {
        for b in b"GET /health/live HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
            if trickle.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    });
    for conn in [&mut silent, &mut stalled] {
        let after = closed_after(conn, Duration::from_secs(4)).await;
        assert!(
            after < Duration::from_millis(2500),
            "closed after {after:?}"
        );
    }
    assert!(
        trickling.await.unwrap(),
        "a trickled head was still accepted after 7 s"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_outlives_the_head_bound_and_closes_at_the_idle_bound() {
    let srv = start(short()).await;
    let mut conn = TcpStream::connect(srv.addr).await.unwrap();
    conn.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(response(&mut conn).await.0, 200);
    // Idle for longer than the head bound (1 s), shorter than the idle bound (3 s).
    tokio::time::sleep(Duration::from_millis(1800)).await;
    conn.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(response(&mut conn).await.0, 200, "closed while idle");
    let after = closed_after(&mut conn, Duration::from_secs(6)).await;
    assert!(
        after > Duration::from_millis(2500) && after < Duration::from_millis(4500),
        "an idle connection closed after {after:?}, not about 3 s"
    );
}

#[tokio::test]
async fn an_unfinished_body_is_answered_408_and_a_finished_one_is_served() {
    let srv = start(short()).await;
    let head = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    );
    let mut conn = TcpStream::connect(srv.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(b"{\"agent_id\":").await.unwrap();
    let started = Instant::now();
    let (status, body) = response(&mut conn).await;
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("\"request_timeout\""), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A body sent slowly but within the bound is served.
    let body = br#"{"agent_id":"slow-but-in-time"}"#;
    let head = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut conn = TcpStream::connect(srv.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    for part in body.chunks(8) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        conn.write_all(part).await.unwrap();
    }
    let (status, body) = response(&mut conn).await;
    assert!(status == 200 || status == 201, "{status} {body}");
}

#[tokio::test]
async fn a_request_the_store_holds_up_is_answered_503_within_the_request_bound() {
    let srv = start(short()).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}", srv.addr);
    let created: serde_json::Value = http
        .post(format!("{url}/v1/sessions"))
        .header("x-api-key", KEY)
        .json(&serde_json::json!({"agent_id": "held"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // Another connection holds the write lock for longer than the request bound (the
    // store would wait 5 s for it).
    let other = rusqlite::Connection::open(srv.dir.path().join("h.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let res = http
        .patch(format!("{url}/v1/sessions/{id}/state"))
        .header("x-api-key", KEY)
        .json(&serde_json::json!({"state": {"a": 1}}))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
    assert!(
        waited < Duration::from_millis(2500),
        "answered after {waited:?}"
    );
    other.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test]
async fn many_idle_and_slow_connections_do_not_keep_a_normal_client_out() {
    let srv = start(Limits {
        header_timeout: Duration::from_secs(10),
        ..short()
    })
    .await;
    let mut held = Vec::new();
    for i in 0..700 {
        let mut conn = TcpStream::connect(srv.addr).await.unwrap();
        match i % 7 {
            0..=2 => {}
            3..=5 => conn.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap(),
            _ => conn
                .write_all(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{")
                .await
                .unwrap(),
        }
        held.push(conn);
    }
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let started = Instant::now();
        let res = http
            .get(format!("http://{}/health/live", srv.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("a normal client is served while 700 others hang");
        assert_eq!(res.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    drop(held);
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_the_bounds_free_a_place() {
    let srv = start(Limits {
        max_connections: 20,
        ..short()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut late = TcpStream::connect(srv.addr).await.unwrap();
    late.write_all(GET_HEALTH).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), late.read(&mut buf))
            .await
            .is_err(),
        "a 21st connection was served while 20 were open"
    );
    // The silent 20 are closed at the head bound (1 s); then the late one is served.
    let (status, _) = response(&mut late).await;
    assert_eq!(status, 200);
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(700) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    drop(held);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_at_the_idle_bound() {
    let srv = start(short()).await;
    // Many pipelined requests for the OpenAPI document (tens of KiB each), never read:
    // the socket buffers fill and the server's writes stall.
    let mut conn = TcpStream::connect(srv.addr).await.unwrap();
    let request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n";
    let pipelined: Vec<u8> = request.repeat(400);
    conn.write_all(&pipelined).await.unwrap();
    // Past the idle bound (3 s) of the stalled write, the server gives up the connection:
    // what it had written drains, then the stream ends, short of 400 answers.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection was still open after the reader stalled"
    );
    let one = reqwest::get(format!("http://{}/openapi.json", srv.addr))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    assert!(
        got < 400 * one,
        "every answer arrived: the write never stalled"
    );
}

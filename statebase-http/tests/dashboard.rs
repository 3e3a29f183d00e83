//! The dashboard in a real browser: Debian's `chromium`, driven through `chromedriver` by
//! WebDriver, against a server on loopback. Screenshots of each page go to
//! `target/dashboard-screenshots/`.
//!
//! Without `chromedriver` (apt: `chromium chromium-driver`) the test says so and passes,
//! unless `STATEBASE_REQUIRE_BROWSER` is set (CI sets it), when it fails.

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{json, Value};
use statebase_core::{KeyLimits, ServerStore};
use statebase_http::{router, webhooks, AppState, Rate, RateLimiter, Targets};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "sb_dashboardkeydashboardkey1";
const WAIT: Duration = Duration::from_secs(10);

fn find_program(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    std::env::var_os(env)
        .map(PathBuf::from)
        .into_iter()
        .chain(candidates.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// What `probe` gives once it gives something, trying every 50 ms for [`WAIT`]; `what`
/// names it if it never does.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(started.elapsed() < WAIT, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The server under test, with a webhook dispatcher and a receiver that counts deliveries.
struct Server {
    url: String,
    http: reqwest::Client,
    delivered: Arc<AtomicUsize>,
    receiver: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server whose key may make `rate` requests a minute, bursts of `burst`.
    async fn start(rate: u32, burst: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ServerStore> =
            Arc::new(statebase_sqlite::SqliteStore::open(dir.path().join("dash.db")).unwrap());
        let state = AppState::new(
            store,
            RateLimiter::new(Rate::new(rate, burst)),
            Targets::Any,
        );
        state
            .sb
            .import_api_key("t", "dashboard", KEY, KeyLimits::default(), None)
            .await
            .unwrap();
        webhooks::Dispatcher::new(state.sb.clone(), Targets::Any).spawn(Duration::from_millis(100));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(statebase_http::serve(
            listener,
            router(state),
            statebase_http::Limits::default(),
            std::future::pending(),
        ));
        let delivered = Arc::new(AtomicUsize::new(0));
        let count = delivered.clone();
        let receiver = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                count.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        );
        let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver_url = format!("http://{}/hook", hook.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(hook, receiver).await.unwrap() });
        Self {
            url,
            http: reqwest::Client::new(),
            delivered,
            receiver: receiver_url,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-API-Key", key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(KEY, method, path, body).await;
        assert!(status < 300, "{path}: {status} {v}");
        v
    }
}

/// A headless browser session through a chromedriver of our own.
struct Browser {
    client: Client,
    shots: PathBuf,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(chromedriver: PathBuf, chromium: PathBuf) -> Self {
        let port = free_port();
        let driver = tokio::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let webdriver = format!("http://127.0.0.1:{port}");
        let status = format!("{webdriver}/status");
        eventually("chromedriver did not answer", || async {
            reqwest::get(&status).await.ok()
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        // The flags that keep Chromium from reaching for the network on its own.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&webdriver)
            .await
            .expect("a browser session");
        let shots =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Self {
            client,
            shots,
            _driver: driver,
            _profile: profile,
        }
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
    }

    /// Waits until the element's text contains `text`, and returns the text.
    async fn wait_for_text(&self, css: &str, text: &str) -> String {
        let what = format!("{css} never said {text:?}");
        eventually(&what, || async {
            let found = self.client.find(Locator::Css(css)).await.ok()?;
            found.text().await.ok().filter(|t| t.contains(text))
        })
        .await
    }

    async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.unwrap();
    }

    async fn accept(&self) {
        eventually("no confirmation was asked", || async {
            self.client.accept_alert().await.ok()
        })
        .await;
    }

    async fn script(&self, js: &str) -> Value {
        self.client.execute(js, vec![]).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let chromedriver = find_program("STATEBASE_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    let chromium = find_program("STATEBASE_CHROMIUM", &["/usr/bin/chromium"]);
    let (Some(chromedriver), Some(chromium)) = (chromedriver, chromium) else {
        let message = "the dashboard test needs chromium and chromedriver \
                       (apt-get install chromium chromium-driver)";
        assert!(
            std::env::var_os("STATEBASE_REQUIRE_BROWSER").is_none(),
            "{message}"
        );
        eprintln!("skipped: {message}");
        return;
    };
    let srv = Server::start(10_000, 10_000).await;
    // Through the API: a session whose state holds markup, two edits and a turn, a memory,
    // and a webhook endpoint that will be told of them.
    srv.api(
        Method::POST,
        "/v1/webhooks",
        Some(json!({"url": srv.receiver, "events": []})),
    )
    .await;
    let hostile = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">";
    let s = srv
        .api(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "support-bot", "user_id": "ada",
                "initial_state": {"step": 1, "note": hostile}})),
        )
        .await;
    let id = s["id"].as_str().unwrap().to_owned();
    let state_path = format!("/v1/sessions/{id}/state");
    for (i, body) in [
        json!({"state": {"step": 2, "plan": ["greet", "refund"]}, "reasoning": "made a plan"}),
        json!({"state": {"step": 3, "plan": null, "refund": {"amount": 20}}}),
    ]
    .into_iter()
    .enumerate()
    {
        let v = srv.api(Method::PATCH, &state_path, Some(body)).await;
        assert_eq!(v["version"], i + 1);
    }
    srv.api(
        Method::POST,
        &format!("/v1/sessions/{id}/turns"),
        Some(
            json!({"input": {"type": "text", "content": "I want a refund"},
            "output": {"type": "text", "content": "Refunded 20"}}),
        ),
    )
    .await;
    srv.api(
        Method::POST,
        "/v1/memories",
        Some(json!({"session_id": id, "content": "Ada prefers refunds to store credit"})),
    )
    .await;

    // Newer sessions of another agent fill the first page of the list.
    for _ in 0..20 {
        let filler = json!({"agent_id": "filler-bot"});
        srv.api(Method::POST, "/v1/sessions", Some(filler)).await;
    }

    let browser = Browser::start(chromedriver, chromium).await;
    let b = &browser;
    let dashboard = format!("{}/dashboard", srv.url);

    // A wrong key is refused with a clear message.
    b.client.goto(&dashboard).await.unwrap();
    b.wait_for("#api-key")
        .await
        .send_keys("sb_notakeynotakeynotakey00")
        .await
        .unwrap();
    b.click("form button[type=submit]").await;
    b.wait_for_text("#notice", "not accepted").await;
    b.shot("sign-in-refused").await;
    // The key field has the focus again, for the next try.
    let focused = b.script("return document.activeElement.id").await;
    assert_eq!(focused, json!("api-key"));

    // Sign in; the session is listed.
    let input = b.wait_for("#api-key").await;
    input.clear().await.unwrap();
    // Enter signs in.
    input
        .send_keys(&format!("{KEY}{}", char::from(fantoccini::key::Key::Enter)))
        .await
        .unwrap();
    // Newest first, 20 a page: it is on the second page, and first when filtered by agent.
    let ours = format!("tr[data-session='{id}']");
    b.wait_for("#sessions").await;
    assert!(
        b.client.find(Locator::Css(&ours)).await.is_err(),
        "on page 1"
    );
    b.click("#next-page").await;
    b.wait_for(&ours).await;
    b.shot("sessions-page-2").await;
    b.wait_for("input[name=agent_id]")
        .await
        .send_keys("support-bot")
        .await
        .unwrap();
    b.click("form button[type=submit]").await;
    let listed = b.wait_for_text("#sessions", "support-bot").await;
    assert!(!listed.contains("filler-bot"), "{listed}");
    b.wait_for(&ours).await;
    b.shot("sessions").await;

    // Its page: the state as a tree, markup shown as text and never run.
    b.click(&format!("tr[data-session='{id}'] a")).await;
    b.wait_for("#timeline li.version").await;
    let state = b.wait_for_text("#state", "refund").await;
    assert!(
        state.contains("<script>window.pwned = 1</script><img src=x"),
        "the markup is not shown as text: {state}"
    );
    b.click("li.version[data-version='1'] details summary")
        .await;
    b.wait_for_text("li.version[data-version='1'] .diff", "+ /plan")
        .await;
    let page = b
        .script("return [document.scripts.length, window.pwned === undefined, document.querySelectorAll('#main img, #main script').length]")
        .await;
    assert_eq!(
        page,
        json!([1, true, 0]),
        "markup in a state was interpreted"
    );
    let turn = b.wait_for_text("#timeline li.turn", "Turn 1").await;
    assert!(turn.contains("I want a refund"), "{turn}");
    b.shot("session").await;

    // Two versions picked: their diff by path.
    b.click("input[data-version='1']").await;
    b.click("input[data-version='2']").await;
    let diff = b.wait_for_text("#compare", "Version 1 → version 2").await;
    for change in ["~ /step: 2 → 3", "− /plan", "+ /refund"] {
        assert!(diff.contains(change), "{change} missing from {diff}");
    }
    b.shot("diff").await;

    // Roll back to version 1 through the UI: version 3 appears, a copy of version 1.
    b.click("li.version[data-version='1'] button.rollback")
        .await;
    b.accept().await;
    let v3 = b
        .wait_for_text("li.version[data-version='3']", "rolled back to 1")
        .await;
    assert!(v3.contains("Version 3"), "{v3}");
    let now = srv
        .api(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(
        (now["version"].clone(), now["state"]["step"].clone()),
        (json!(3), json!(2))
    );
    b.shot("rolled-back").await;

    // Fork from version 0: a new session whose state is version 0's.
    b.click("li.version[data-version='0'] button.fork").await;
    b.accept().await;
    let fork = eventually("no fork was opened", || async {
        let url = b.client.current_url().await.ok()?;
        let fork = url.fragment()?.strip_prefix("/sessions/")?.to_owned();
        (fork != id).then_some(fork)
    })
    .await;
    b.wait_for_text("h1", &fork).await;
    let forked = srv
        .api(Method::GET, &format!("/v1/sessions/{fork}"), None)
        .await;
    assert_eq!(forked["state"]["step"], 1, "{forked}");

    // A key created (shown once, and it works), then revoked (and it no longer does).
    b.client.goto(&format!("{dashboard}#/keys")).await.unwrap();
    b.wait_for("#key-name")
        .await
        .send_keys("ci key")
        .await
        .unwrap();
    b.click("form button[type=submit]").await;
    let full = b.wait_for_text("#full-key", "sb_").await;
    assert_eq!(
        srv.call(&full, Method::GET, "/v1/sessions", None).await.0,
        200
    );
    let keys = srv.api(Method::GET, "/v1/dashboard/keys", None).await;
    let new_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ci key")
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .unwrap();
    b.shot("key-created").await;
    b.click(&format!("tr[data-key='{new_id}'] button.revoke"))
        .await;
    b.accept().await;
    b.wait_for_text(&format!("tr[data-key='{new_id}']"), "revoked")
        .await;
    assert_eq!(
        srv.call(&full, Method::GET, "/v1/sessions", None).await.0,
        401
    );
    b.shot("keys").await;

    // The webhook's deliveries: the session's events reached the receiver.
    let delivered = || async { (srv.delivered.load(Ordering::SeqCst) > 0).then_some(()) };
    eventually("no webhook was delivered", delivered).await;
    b.client
        .goto(&format!("{dashboard}#/webhooks"))
        .await
        .unwrap();
    b.click("tr[data-webhook] button.deliveries").await;
    let deliveries = b.wait_for_text("#delivery-list", "delivered").await;
    assert!(deliveries.contains("session.created"), "{deliveries}");
    b.shot("webhooks").await;
    // A retry sends the event again.
    let before = srv.delivered.load(Ordering::SeqCst);
    b.click("#delivery-list tr.delivery button.retry").await;
    let again = || async { (srv.delivered.load(Ordering::SeqCst) > before).then_some(()) };
    eventually("the retry was not delivered", again).await;

    // Memories searched, with their scores.
    b.client
        .goto(&format!("{dashboard}#/memories?query=refunds"))
        .await
        .unwrap();
    let found = b.wait_for_text("#memories", "store credit").await;
    assert!(found.contains("Score"), "{found}");
    b.click("#memories button.revisions").await;
    b.wait_for_text("#revisions", "v1").await;
    b.shot("memories").await;

    // Stats.
    b.client.goto(&format!("{dashboard}#/stats")).await.unwrap();
    let totals = b.wait_for_text("#totals", "sessions").await;
    assert!(totals.contains("memories"), "{totals}");
    b.shot("stats").await;

    // At a phone's width the session page fits without scrolling sideways.
    b.client.set_window_size(390, 844).await.unwrap();
    b.client
        .goto(&format!("{dashboard}#/sessions/{id}"))
        .await
        .unwrap();
    b.wait_for("#timeline li.version").await;
    let fits = b
        .script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        .await;
    assert_eq!(fits, json!(true), "the page scrolls sideways at 390 px");
    b.shot("session-phone").await;

    // A long history opens at its latest 50 versions; earlier ones load on request.
    b.client.set_window_size(1280, 1000).await.unwrap();
    let long = srv
        .api(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "long"})),
        )
        .await;
    let long = long["id"].as_str().unwrap();
    for i in 1..=55 {
        let path = format!("/v1/sessions/{long}/state");
        srv.api(Method::PATCH, &path, Some(json!({"state": {"i": i}})))
            .await;
    }
    b.client
        .goto(&format!("{dashboard}#/sessions/{long}"))
        .await
        .unwrap();
    b.wait_for("li.version[data-version='55']").await;
    let shown = b.client.find_all(Locator::Css("li.version")).await.unwrap();
    assert_eq!(shown.len(), 50);
    b.click("#earlier-versions").await;
    b.wait_for("li.version[data-version='0']").await;
    let shown = b.client.find_all(Locator::Css("li.version")).await.unwrap();
    assert_eq!(shown.len(), 56);
    let more = b.wait_for("#earlier-versions").await;
    assert!(
        !more.is_displayed().await.unwrap(),
        "nothing earlier to load"
    );
    b.wait_for_text("li.version[data-version='6'] details", "version 5")
        .await;

    // A key past its rate limit: the page says when to try again.
    let slow = Server::start(60, 3).await;
    b.click("#sign-out").await;
    b.client
        .goto(&format!("{}/dashboard", slow.url))
        .await
        .unwrap();
    b.wait_for("#api-key").await.send_keys(KEY).await.unwrap();
    b.click("form button[type=submit]").await;
    b.wait_for("#sessions, main p.muted").await;
    for _ in 0..3 {
        b.client.refresh().await.unwrap();
    }
    let refused = b.wait_for_text("#notice", "Too many requests").await;
    assert!(refused.contains("try again in"), "{refused}");
    b.shot("rate-limited").await;
    browser.client.clone().close().await.unwrap();
}

/// Without a browser: the root names the dashboard, and its page and assets come with a
/// policy that runs no script but its own, in no frame.
#[tokio::test]
async fn the_dashboard_is_served_under_a_strict_policy() {
    let srv = Server::start(10_000, 10_000).await;
    let root: Value = reqwest::get(format!("{}/", srv.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root["dashboard"], "/dashboard");
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let r = reqwest::get(format!("{}{path}", srv.url)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let policy = header("content-security-policy");
        for rule in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(rule), "{path}: {policy}");
        }
        assert_eq!(header("x-content-type-options"), "nosniff");
    }
    let missing = reqwest::get(format!("{}/dashboard/nope.js", srv.url))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

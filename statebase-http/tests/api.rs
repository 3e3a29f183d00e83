//! The API on a real server on 127.0.0.1 (random port), over a SQLite file.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use statebase_core::{Config, KeyLimits, ServerStore, StateBase};
use statebase_http::{router, AppState, Rate, RateLimiter, Targets};
use std::sync::Arc;

const KEY_A: &str = "sb_tenantakeytenantakey0001";
const KEY_A2: &str = "sb_tenantakeytenantakey0002";
const KEY_B: &str = "sb_tenantbkeytenantbkey0001";

struct Server {
    url: String,
    http: reqwest::Client,
    sb: StateBase<Arc<dyn ServerStore>>,
    dir: Arc<tempfile::TempDir>,
    /// The server's `/openapi.json`: every call is checked against it.
    doc: OpenApi,
}

async fn start(limit: u32, burst: u32) -> Server {
    start_with(RateLimiter::new(Rate::new(limit, burst))).await
}

async fn start_with(limiter: RateLimiter) -> Server {
    start_with_config(limiter, Config::default()).await
}

/// [`start_with`], its statebase made with `config`.
async fn start_with_config(limiter: RateLimiter, config: Config) -> Server {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let srv = serve_with_config(dir, limiter, config).await;
    for (tenant, key) in [("a", KEY_A), ("a", KEY_A2), ("b", KEY_B)] {
        srv.sb
            .import_api_key(tenant, "test", key, KeyLimits::default(), None)
            .await
            .unwrap();
    }
    srv
}

/// A server (with nothing of its own in memory) over the SQLite file in `dir`.
async fn serve(dir: Arc<tempfile::TempDir>, limiter: RateLimiter) -> Server {
    serve_with_config(dir, limiter, Config::default()).await
}

/// [`serve`], its statebase made with `config`.
async fn serve_with_config(
    dir: Arc<tempfile::TempDir>,
    limiter: RateLimiter,
    config: Config,
) -> Server {
    let store: Arc<dyn ServerStore> =
        Arc::new(statebase_sqlite::SqliteStore::open(dir.path().join("api.db")).unwrap());
    let state = AppState::with_config(store, limiter, Targets::Public, config);
    let sb = state.sb.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state);
    tokio::spawn(statebase_http::serve(
        listener,
        app,
        statebase_http::Limits::default(),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let doc = http
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .unwrap();
    let doc = OpenApi::new(doc.json().await.unwrap());
    Server {
        url,
        http,
        sb,
        dir,
        doc,
    }
}

/// An OpenAPI document, and what it says of a request and its answer.
struct OpenApi {
    doc: Value,
    validators: std::sync::Mutex<std::collections::HashMap<String, Arc<jsonschema::Validator>>>,
}

impl OpenApi {
    fn new(doc: Value) -> Self {
        assert_eq!(doc["openapi"], "3.1.0");
        Self {
            doc,
            validators: Default::default(),
        }
    }

    /// The operation serving `method` on `path` (ids filled in, query stripped): the
    /// documented path whose segments match, literal segments preferred (as the router
    /// prefers them).
    fn operation(&self, method: &Method, path: &str) -> Option<(&str, &Value)> {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        let mut found: Vec<(&str, &Value)> = self.doc["paths"]
            .as_object()?
            .iter()
            .filter(|(template, _)| {
                let t: Vec<&str> = template.split('/').collect();
                t.len() == segments.len()
                    && t.iter()
                        .zip(&segments)
                        .all(|(t, p)| t.starts_with('{') || t == p)
            })
            .map(|(template, item)| (template.as_str(), item))
            .collect();
        found.sort_by_key(|(template, _)| template.matches('{').count());
        let (template, item) = found.first()?;
        Some((template, item.get(method.as_str().to_lowercase())?))
    }

    /// Errors of `instance` against `schema` (its `$ref`s point into the document).
    fn violations(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let key = schema.to_string();
        let validator = self
            .validators
            .lock()
            .unwrap()
            .entry(key)
            .or_insert_with(|| {
                let mut root = schema.clone();
                root["components"] = self.doc["components"].clone();
                Arc::new(
                    jsonschema::draft202012::options()
                        .should_validate_formats(true)
                        .build(&root)
                        .expect("the document's schemas compile"),
                )
            })
            .clone();
        validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// Panics unless the document describes this exchange: the route and method exist
    /// (unless the server said the route does not), a body the server accepted matches the
    /// request schema, and the answer matches the schema of its status (or `default`).
    fn check(
        &self,
        method: &Method,
        path: &str,
        sent: Option<&Value>,
        status: StatusCode,
        got: &Value,
    ) {
        let Some((template, op)) = self.operation(method, path) else {
            assert!(
                matches!(status.as_u16(), 404 | 405) && code(got) != "<no error code>",
                "{method} {path} answered {status} but is not in /openapi.json"
            );
            return;
        };
        let what = format!("{method} {template} ({status})");
        if let (Some(sent), true) = (sent, status.is_success()) {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(
                !schema.is_null(),
                "{what}: accepted a body it does not document"
            );
            let errors = self.violations(schema, sent);
            assert!(
                errors.is_empty(),
                "{what}: accepted {sent} against its schema: {errors:?}"
            );
        }
        let answers = &op["responses"];
        let answer = answers
            .get(status.as_str())
            .unwrap_or_else(|| &answers["default"]);
        assert!(!answer.is_null(), "{what}: status not documented");
        match answer["content"].get("application/json") {
            Some(json) => {
                let errors = self.violations(&json["schema"], got);
                assert!(
                    errors.is_empty(),
                    "{what}: answered {got} against its schema: {errors:?}"
                );
            }
            None if answer.get("content").is_none() => {
                assert!(
                    got.is_null(),
                    "{what}: documented without a body, answered {got}"
                )
            }
            None => {}
        }
    }
}

impl Server {
    async fn call(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        self.doc.check(&method, path, body.as_ref(), status, &value);
        (status, value, headers)
    }

    async fn a(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Some(KEY_A), method, path, body).await;
        (s, v)
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn keys_are_required_and_checked() {
    let srv = start(1000, 1000).await;
    let (s, v, _) = srv.call(None, Method::GET, "/v1/sessions", None).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNAUTHORIZED, "authentication_failed")
    );
    assert_eq!(v["error"]["type"], "authentication_error");
    let (s, _, _) = srv
        .call(
            Some("sb_nottherightkeyatall000"),
            Method::GET,
            "/v1/sessions",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let bearer = srv
        .http
        .get(format!("{}/v1/sessions", srv.url))
        .header("Authorization", format!("Bearer {KEY_A}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    // A key revoked by another process (here: straight in the store, as `statebase keys
    // revoke` does) stops working once the server's cached copy is older than its TTL.
    let a2 = || srv.call(Some(KEY_A2), Method::GET, "/v1/sessions", None);
    assert_eq!(a2().await.0, StatusCode::OK);
    let key = srv.sb.authenticate(KEY_A2).await.unwrap().unwrap();
    srv.sb.revoke_api_key(&key.id, None).await.unwrap();
    tokio::time::sleep(statebase_http::KeyCache::TTL).await;
    assert_eq!(a2().await.0, StatusCode::UNAUTHORIZED);
    // Health and the root need no key.
    let (s, v, _) = srv.call(None, Method::GET, "/health", None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("healthy")));
    for path in ["/", "/health/live", "/health/ready"] {
        assert_eq!(
            srv.call(None, Method::GET, path, None).await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn sessions_state_rollback_fork_and_history() {
    let srv = start(1000, 1000).await;
    let (s, created) = srv
        .a(Method::POST, "/v1/sessions", Some(json!({"agent_id": "bot", "user_id": "u1", "initial_state": {"status": "new"}, "metadata": {"channel": "web"}, "ttl_seconds": 3600})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_owned();
    for field in [
        "object",
        "id",
        "agent_id",
        "user_id",
        "created_at",
        "updated_at",
        "metadata",
        "state",
        "memory_count",
        "turn_count",
        "ttl_expires_at",
    ] {
        assert!(created.get(field).is_some(), "missing {field}");
    }
    assert_eq!(created["object"], "session");
    let (s, got) = srv
        .a(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(
        (s, &got["state"]),
        (StatusCode::OK, &json!({"status": "new"}))
    );
    let (_, list) = srv
        .a(Method::GET, "/v1/sessions?limit=10&agent_id=bot", None)
        .await;
    assert_eq!(
        (list["object"].as_str(), list["data"][0]["id"].as_str()),
        (Some("list"), Some(id.as_str()))
    );
    assert_eq!(list["has_more"], false);
    let (s, patched) = srv
        .a(
            Method::PATCH,
            &format!("/v1/sessions/{id}"),
            Some(json!({"metadata": {"tier": "pro"}, "ttl_seconds": 60})),
        )
        .await;
    assert_eq!(
        (s, &patched["metadata"]),
        (StatusCode::OK, &json!({"channel": "web", "tier": "pro"}))
    );

    // PATCH merges, PUT replaces, POST replaces and answers with the session.
    let (s, v) = srv
        .a(
            Method::PATCH,
            &format!("/v1/sessions/{id}/state"),
            Some(json!({"state": {"step": 1}, "reasoning": "r"})),
        )
        .await;
    assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(1)));
    assert_eq!(v["state"], json!({"status": "new", "step": 1}));
    assert_eq!(v["data"], v["state"]);
    let (_, v) = srv
        .a(
            Method::PATCH,
            &format!("/v1/sessions/{id}/state"),
            Some(json!({"updates": {"status": "open"}})),
        )
        .await;
    assert_eq!(v["state"], json!({"status": "open", "step": 1}));
    let (_, v) = srv
        .a(
            Method::PUT,
            &format!("/v1/sessions/{id}/state"),
            Some(json!({"state": {"only": true}})),
        )
        .await;
    assert_eq!(
        (v["version"].as_u64(), &v["state"]),
        (Some(3), &json!({"only": true}))
    );
    let (_, v) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/state"),
            Some(json!({"state": {"posted": 1}})),
        )
        .await;
    assert_eq!(
        (v["object"].as_str(), v["version"].as_u64()),
        (Some("session"), Some(4))
    );
    let (s, v) = srv
        .a(
            Method::PATCH,
            &format!("/v1/sessions/{id}/state"),
            Some(json!({"state": {"x": 1}, "expected_version": 2})),
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "version_conflict"));
    let (_, v) = srv
        .a(Method::GET, &format!("/v1/sessions/{id}/state"), None)
        .await;
    assert_eq!(
        (v["version"].as_u64(), &v["session_id"]),
        (Some(4), &json!(id))
    );

    // Both rollback routes; relative versions.
    let (s, v) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/rollback"),
            Some(json!({"version": 0})),
        )
        .await;
    assert_eq!(
        (s, &v["state"], v["new_version"].as_u64()),
        (StatusCode::OK, &json!({"status": "new"}), Some(5))
    );
    assert_eq!(
        (v["success"].as_bool(), v["restored_from_version"].as_u64()),
        (Some(true), Some(0))
    );
    assert!(v["trace_id"].as_str().unwrap().starts_with("trace_"));
    let (_, v) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/state/rollback"),
            Some(json!({"version": -1, "reason": "undo"})),
        )
        .await;
    assert_eq!(
        (v["version"].as_u64(), &v["state"]),
        (Some(6), &json!({"posted": 1}))
    );
    let (s, v) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/rollback"),
            Some(json!({"version": 99})),
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "version_not_found"));

    let (_, h) = srv
        .a(
            Method::GET,
            &format!("/v1/sessions/{id}/state/history?limit=3"),
            None,
        )
        .await;
    assert_eq!(h["current_version"], 6);
    let versions: Vec<u64> = h["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![4, 5, 6]);
    let (_, h2) = srv
        .a(Method::GET, &format!("/v1/sessions/{id}/history"), None)
        .await;
    assert_eq!(h2["data"].as_array().unwrap().len(), 7);
    // The start of the history, however long it is.
    let (_, start) = srv
        .a(
            Method::GET,
            &format!("/v1/sessions/{id}/history?from_version=0&limit=2"),
            None,
        )
        .await;
    let first: Vec<u64> = start["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(first, vec![0, 1]);

    let (s, f) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/fork"),
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(
        (s, &f["state"]),
        (StatusCode::CREATED, &json!({"status": "new", "step": 1}))
    );
    assert_eq!(
        (
            &f["metadata"]["forked_from"],
            &f["metadata"]["forked_version"]
        ),
        (&json!(id), &json!(1))
    );
    let (_, f2) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/fork"),
            Some(json!({"version": null})),
        )
        .await;
    assert_eq!(f2["state"], json!({"posted": 1}));

    let (s, _) = srv
        .a(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = srv
        .a(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "session_not_found"));
}

#[tokio::test]
async fn turns_memories_context_and_traces() {
    let srv = start(1000, 1000).await;
    let (_, s) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot", "user_id": "u1"})),
        )
        .await;
    let id = s["id"].as_str().unwrap().to_owned();
    let (st, t) = srv.a(Method::POST, &format!("/v1/sessions/{id}/turns"), Some(json!({"input": "hi", "output": {"type": "text", "content": "hello"}, "state_after": {"greeted": true}}))).await;
    assert_eq!(
        (st, t["turn_number"].as_u64(), &t["input"]),
        (
            StatusCode::CREATED,
            Some(1),
            &json!({"type": "text", "content": "hi"})
        )
    );
    let (_, list) = srv
        .a(
            Method::GET,
            &format!("/v1/sessions/{id}/turns?order=asc"),
            None,
        )
        .await;
    assert_eq!(
        (
            list["data"][0]["input_preview"].as_str(),
            list["has_more"].as_bool()
        ),
        (Some("hi"), Some(false))
    );
    let turn_id = t["id"].as_str().unwrap();
    let (st, one) = srv
        .a(
            Method::GET,
            &format!("/v1/sessions/{id}/turns/{turn_id}"),
            None,
        )
        .await;
    assert_eq!(
        (st, &one["state_after"]),
        (StatusCode::OK, &json!({"greeted": true}))
    );

    // Both memory families.
    let (st, m) = srv.a(Method::POST, "/v1/memories", Some(json!({"content": "Prefers dark mode", "session_id": id, "memory_type": "preference", "tags": ["ui"]}))).await;
    assert_eq!(
        (st, m["type"].as_str()),
        (StatusCode::CREATED, Some("preference"))
    );
    let mid = m["id"].as_str().unwrap().to_owned();
    let (st, _) = srv
        .a(
            Method::POST,
            "/v1/memory",
            Some(json!({"content": "Lives in Oslo", "session_id": id})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/memories"),
            Some(json!({"content": "Has a cat", "memory_type": "fact"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, found) = srv
        .a(
            Method::GET,
            &format!("/v1/memories?query=dark%20mode&session_id={id}&top_k=5"),
            None,
        )
        .await;
    assert_eq!(
        (found["data"][0]["id"].as_str(), found["query"].as_str()),
        (Some(mid.as_str()), Some("dark mode"))
    );
    let (_, found) = srv
        .a(
            Method::POST,
            "/v1/memory/search",
            Some(json!({"query": "oslo", "tags": ["nope"], "threshold": 0.1})),
        )
        .await;
    assert!(found["data"].as_array().unwrap().is_empty());
    let (_, listed) = srv
        .a(
            Method::GET,
            &format!("/v1/memory?session_id={id}&limit=2"),
            None,
        )
        .await;
    assert_eq!(
        (
            listed["data"].as_array().unwrap().len(),
            listed["has_more"].as_bool()
        ),
        (2, Some(true))
    );
    let (st, upd) = srv
        .a(
            Method::PUT,
            &format!("/v1/memories/{mid}"),
            Some(json!({"tags": ["ui", "theme"], "metadata": {"k": 1}})),
        )
        .await;
    assert_eq!((st, upd["version"].as_u64()), (StatusCode::OK, Some(2)));
    let (_, upd) = srv
        .a(
            Method::PATCH,
            &format!("/v1/memory/{mid}"),
            Some(json!({"content": "Prefers light mode"})),
        )
        .await;
    assert_eq!(upd["version"].as_u64(), Some(3));
    let (st, v) = srv
        .a(
            Method::POST,
            "/v1/memories",
            Some(json!({"content": "x".repeat(10_001), "session_id": id})),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "content_too_large")
    );

    let (st, ctx) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/context"),
            Some(json!({"query": "light mode", "memory_limit": 2, "turn_limit": 5})),
        )
        .await;
    assert_eq!(
        (st, &ctx["state"]),
        (StatusCode::OK, &json!({"greeted": true}))
    );
    assert_eq!(ctx["memories"][0]["id"].as_str(), Some(mid.as_str()));
    assert_eq!(ctx["recent_turns"].as_array().unwrap().len(), 1);
    assert!(ctx["average_relevance"].is_number() && ctx["drift_warning"].is_boolean());
    // A turn read as a chat message: the agent's output.
    let turn = &ctx["recent_turns"][0];
    assert_eq!(
        (&turn["role"], &turn["content"]),
        (&json!("assistant"), &json!("hello"))
    );
    assert_eq!(turn["input"]["content"], "hi");

    // The GET form answers as the POST one.
    let (st, got) = srv
        .a(
            Method::GET,
            &format!("/v1/sessions/{id}/context?query=light%20mode&memory_limit=2&max_turns=5&include_memories=true&include_turns=true"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    for field in [
        "state",
        "version",
        "memories",
        "recent_turns",
        "turns",
        "average_relevance",
    ] {
        assert_eq!(got[field], ctx[field], "{field}");
    }
    let (_, bare) = srv
        .a(
            Method::GET,
            &format!("/v1/sessions/{id}/context?query=light%20mode&include_memories=false&include_turns=false"),
            None,
        )
        .await;
    assert_eq!(
        (&bare["state"], &bare["memories"], &bare["turns"]),
        (&ctx["state"], &json!([]), &json!([]))
    );
    let (st, v) = srv
        .a(
            Method::GET,
            &format!("/v1/sessions/{id}/context?max_turns=500"),
            None,
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{v}"
    );
    // An input without an output is the user's message.
    let (_, asked) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/turns"),
            Some(json!({"input": "still there?", "output": ""})),
        )
        .await;
    assert_eq!(
        (&asked["role"], &asked["content"]),
        (&json!("user"), &json!("still there?")),
        "{asked}"
    );

    let (st, _) = srv
        .a(Method::DELETE, &format!("/v1/memories/{mid}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = srv.a(Method::GET, &format!("/v1/memory/{mid}"), None).await;
    assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, "memory_not_found"));

    let (_, traces) = srv
        .a(
            Method::GET,
            &format!("/v1/traces?session_id={id}&action=memory.deleted"),
            None,
        )
        .await;
    let trace_id = traces["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(traces["data"].as_array().unwrap().len(), 1);
    let (_, t) = srv
        .a(Method::GET, &format!("/v1/traces/{trace_id}"), None)
        .await;
    assert_eq!(t["resource_id"].as_str(), Some(mid.as_str()));
    let (_, per) = srv
        .a(
            Method::GET,
            &format!("/v1/traces/sessions/{id}/traces?limit=100"),
            None,
        )
        .await;
    assert!(per["data"].as_array().unwrap().len() >= 7);
}

#[tokio::test]
async fn another_tenant_gets_404_on_every_route() {
    let srv = start(1000, 1000).await;
    let (_, s) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot"})),
        )
        .await;
    let id = s["id"].as_str().unwrap().to_owned();
    let (_, t) = srv
        .a(
            Method::POST,
            &format!("/v1/sessions/{id}/turns"),
            Some(json!({"input": "a", "output": "b"})),
        )
        .await;
    let (_, m) = srv
        .a(
            Method::POST,
            "/v1/memories",
            Some(json!({"content": "secret", "session_id": id})),
        )
        .await;
    let (turn, mem) = (t["id"].as_str().unwrap(), m["id"].as_str().unwrap());
    let session_routes = |id: &str| {
        vec![
            (Method::GET, format!("/v1/sessions/{id}"), None),
            (
                Method::PATCH,
                format!("/v1/sessions/{id}"),
                Some(json!({"metadata": {}})),
            ),
            (
                Method::POST,
                format!("/v1/sessions/{id}/context"),
                Some(json!({})),
            ),
            (
                Method::POST,
                format!("/v1/sessions/{id}/fork"),
                Some(json!({})),
            ),
            (Method::GET, format!("/v1/sessions/{id}/history"), None),
            (Method::GET, format!("/v1/sessions/{id}/state"), None),
            (
                Method::PATCH,
                format!("/v1/sessions/{id}/state"),
                Some(json!({"state": {}})),
            ),
            (
                Method::PUT,
                format!("/v1/sessions/{id}/state"),
                Some(json!({"state": {}})),
            ),
            (
                Method::POST,
                format!("/v1/sessions/{id}/state"),
                Some(json!({"state": {}})),
            ),
            (
                Method::POST,
                format!("/v1/sessions/{id}/rollback"),
                Some(json!({"version": 0})),
            ),
            (
                Method::POST,
                format!("/v1/sessions/{id}/state/rollback"),
                Some(json!({"version": 0})),
            ),
            (
                Method::POST,
                format!("/v1/sessions/{id}/turns"),
                Some(json!({"input": "a", "output": "b"})),
            ),
            (Method::GET, format!("/v1/sessions/{id}/turns"), None),
            (
                Method::POST,
                format!("/v1/sessions/{id}/memories"),
                Some(json!({"content": "x"})),
            ),
            (
                Method::GET,
                format!("/v1/sessions/{id}/state/history"),
                None,
            ),
            (Method::GET, format!("/v1/sessions/{id}/traces"), None),
            (
                Method::GET,
                format!("/v1/traces/sessions/{id}/traces"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/sessions/{id}/memories/search"),
                Some(json!({"query": "secret"})),
            ),
            (
                Method::GET,
                format!("/v1/sessions/{id}/context?query=secret"),
                None,
            ),
        ]
    };
    let mut routes = session_routes(&id);
    routes.extend([
        (Method::GET, format!("/v1/sessions/{id}/turns/{turn}"), None),
        (Method::GET, format!("/v1/memories/{mem}"), None),
        (
            Method::PUT,
            format!("/v1/memories/{mem}"),
            Some(json!({"tags": []})),
        ),
        (Method::GET, format!("/v1/memory/{mem}"), None),
        (Method::DELETE, format!("/v1/memory/{mem}"), None),
        (Method::DELETE, format!("/v1/sessions/{id}"), None),
    ]);
    for (method, path, body) in routes {
        let (s, v, _) = srv.call(Some(KEY_B), method.clone(), &path, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
    }
    // A session that does not exist at all is the same 404, to its own tenant too.
    for (method, path, body) in session_routes("sess_doesnotexist") {
        let (s, v, _) = srv.call(Some(KEY_A), method.clone(), &path, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert_eq!(code(&v), "session_not_found", "{method} {path}: {v}");
    }
    let (_, list, _) = srv
        .call(Some(KEY_B), Method::GET, "/v1/sessions", None)
        .await;
    assert!(list["data"].as_array().unwrap().is_empty());
    let (_, found, _) = srv
        .call(
            Some(KEY_B),
            Method::GET,
            "/v1/memories?query=secret&threshold=0",
            None,
        )
        .await;
    assert!(found["data"].as_array().unwrap().is_empty());
    let (_, traces, _) = srv.call(Some(KEY_B), Method::GET, "/v1/traces", None).await;
    assert!(traces["data"].as_array().unwrap().is_empty());
    // Tenant A still has all of it.
    assert_eq!(
        srv.a(Method::GET, &format!("/v1/memories/{mem}"), None)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers_per_key() {
    let srv = start(60, 3).await;
    for i in 0..3 {
        let (s, _, h) = srv
            .call(Some(KEY_A), Method::GET, "/v1/sessions", None)
            .await;
        assert_eq!(s, StatusCode::OK, "request {i}");
        assert_eq!(h["x-ratelimit-limit"], "60");
        assert_eq!(
            h["x-ratelimit-remaining"].to_str().unwrap(),
            (2 - i).to_string()
        );
        assert!(
            h["x-ratelimit-reset"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 1_700_000_000
        );
    }
    let (s, v, h) = srv
        .call(Some(KEY_A), Method::GET, "/v1/sessions", None)
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded")
    );
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let retry = v["error"]["retry_after"].as_u64().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(h["retry-after"].to_str().unwrap(), retry.to_string());
    assert_eq!(h["x-ratelimit-remaining"], "0");
    // Unknown routes and methods under /v1 count against the key and say so too.
    for (method, path, status) in [
        (Method::GET, "/v1/no-such-route", StatusCode::NOT_FOUND),
        (Method::PUT, "/v1/sessions", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let (s, v, h) = srv.call(Some(KEY_B), method.clone(), path, None).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        assert_eq!(
            h.get("x-ratelimit-limit").map(|v| v.to_str().unwrap()),
            Some("60"),
            "{method} {path}: {v}"
        );
        assert!(h.contains_key("x-ratelimit-remaining") && h.contains_key("x-ratelimit-reset"));
    }
    // Another key of the same tenant has its own bucket.
    assert_eq!(
        srv.call(Some(KEY_A2), Method::GET, "/v1/sessions", None)
            .await
            .0,
        StatusCode::OK
    );
    // A key with its own limit keeps it, even one equal to the usual 100.
    let own = "sb_ownlimitownlimitownlim001";
    srv.sb
        .import_api_key("a", "own", own, KeyLimits::per_minute(100), None)
        .await
        .unwrap();
    let (_, _, h) = srv.call(Some(own), Method::GET, "/v1/sessions", None).await;
    assert_eq!(h["x-ratelimit-limit"], "100");
    // One token a second comes back.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        srv.call(Some(KEY_A), Method::GET, "/v1/sessions", None)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_requests_get_json_errors_never_500() {
    let srv = start(1000, 1000).await;
    let (s, v) = srv
        .a(Method::POST, "/v1/sessions", Some(json!({"agent_id": 5})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["detail"][0]["loc"], json!(["body", "agent_id"]));
    assert_eq!(v["error"]["param"], "agent_id");
    let (s, v) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"initial_state": {}})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("agent_id"))
    );
    let (s, v) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "", "ttl_seconds": 5})),
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
    let send = |body: &'static str, content_type: &'static str| {
        srv.http
            .post(format!("{}/v1/sessions", srv.url))
            .header("X-API-Key", KEY_A)
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let r = send("{not json", "application/json").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_request"
    );
    // A whole number written with a fraction or an exponent is an integer (as JSON Schema
    // has it); a state keeps its numbers as sent.
    let (s, v) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "x", "ttl_seconds": 3600.0, "initial_state": {"n": 1.0}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["state"]["n"], json!(1.0), "{v}");
    let r = send(
        r#"{"agent_id": "x", "ttl_seconds": 36e2}"#,
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, v) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "x", "ttl_seconds": 3600.5})),
        )
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request")
    );
    assert_eq!(v["error"]["param"], "ttl_seconds");
    // Data after the body's one value is refused, not dropped; white space is fine.
    for trailing in [
        r#"{"agent_id":"x"}{"agent_id":"y"}"#,
        r#"{"agent_id":"x"} junk"#,
    ] {
        let r = send(trailing, "application/json").await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{trailing}");
        let v = r.json::<Value>().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    }
    let r = send("{\"agent_id\":\"x\"}\n  ", "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = send("agent_id=x", "application/x-www-form-urlencoded")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let big = format!(
        "{{\"agent_id\": \"a\", \"initial_state\": {{\"x\": \"{}\"}}}}",
        "y".repeat(3 << 20)
    );
    let r = srv
        .http
        .post(format!("{}/v1/sessions", srv.url))
        .header("X-API-Key", KEY_A)
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );
    let (s, v, _) = srv
        .call(Some(KEY_A), Method::GET, "/v1/nothing/here", None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "resource_not_found"));
    let (s, v, _) = srv
        .call(Some(KEY_A), Method::PUT, "/v1/sessions", None)
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let (s, v) = srv.a(Method::GET, "/v1/sessions?limit=abc", None).await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("limit"))
    );
    let (s, _) = srv.a(Method::GET, "/v1/sessions?limit=500", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The metadata filter is a JSON object in the query string.
    let (s, v) = srv
        .a(Method::GET, "/v1/sessions?metadata=not-json", None)
        .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metadata"))
    );
    let (s, v) = srv
        .a(Method::GET, "/v1/sessions?created_after=yesterday", None)
        .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("created_after"))
    );
    srv.a(
        Method::POST,
        "/v1/sessions",
        Some(json!({"agent_id": "m", "metadata": {"env": "prod"}})),
    )
    .await;
    srv.a(
        Method::POST,
        "/v1/sessions",
        Some(json!({"agent_id": "m", "metadata": {"env": "dev"}})),
    )
    .await;
    let (_, v) = srv
        .a(
            Method::GET,
            "/v1/sessions?metadata=%7B%22env%22%3A%22prod%22%7D",
            None,
        )
        .await;
    let envs: Vec<&Value> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["metadata"]["env"])
        .collect();
    assert_eq!(envs, vec![&json!("prod")]);
}

/// The official Python SDK (statebase 0.4.1), sync and async clients, against this server.
/// `.ci/run` installs it and sets STATEBASE_REQUIRE_SDK=1, so there a missing SDK fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_unchanged() {
    let has_sdk = std::process::Command::new("python3")
        .args(["-c", "import statebase"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        assert!(
            std::env::var_os("STATEBASE_REQUIRE_SDK").is_none(),
            "the statebase Python SDK is not installed (pip install statebase==0.4.1)"
        );
        eprintln!("skipped: the statebase Python SDK is not installed");
        return;
    }
    // The embedder `statebase serve` uses by default, so that paraphrases are found.
    let config = Config {
        embedder: statebase_embed::StaticEmbedder::builtin(),
        ..Config::default()
    };
    let srv = start_with_config(RateLimiter::new(Rate::new(10_000, 10_000)), config).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/sdk_check.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("STATEBASE_URL", &srv.url)
        .env("STATEBASE_API_KEY", KEY_A)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "SDK checks failed");
    assert!(stdout.contains("sdk: 20 passed, 0 failed"), "{stdout}");
}

#[tokio::test]
async fn erasing_a_user_over_http() {
    let srv = start(1000, 1000).await;
    let post = |key: &'static str, idempotency: &'static str, path: String, body: Value| {
        srv.http
            .post(format!("{}{path}", srv.url))
            .header("X-API-Key", key)
            .header("Idempotency-Key", idempotency)
            .json(&body)
            .send()
    };
    let json = |r: reqwest::Response| async move { r.json::<Value>().await.unwrap() };
    let session = |user: &str| json!({"agent_id": "bot", "user_id": user});
    let s = json(
        post(KEY_A, "erase-1", "/v1/sessions".into(), session("u1"))
            .await
            .unwrap(),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_owned();
    let turn = json!({"input": "my card is 4242", "output": "noted"});
    post(KEY_A, "erase-2", format!("/v1/sessions/{id}/turns"), turn)
        .await
        .unwrap();
    let memory = json!({"content": "pays by card", "user_id": "u1"});
    post(KEY_A, "erase-3", "/v1/memories".into(), memory)
        .await
        .unwrap();
    let kept = json(
        post(KEY_A, "keep-1", "/v1/sessions".into(), session("u2"))
            .await
            .unwrap(),
    )
    .await;
    let (_, b, _) = srv
        .call(
            Some(KEY_B),
            Method::POST,
            "/v1/sessions",
            Some(session("u1")),
        )
        .await;

    let (status, _, _) = srv.call(None, Method::DELETE, "/v1/users/u1", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, erased) = srv.a(Method::DELETE, "/v1/users/u1", None).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(
        (&erased["object"], &erased["id"], &erased["deleted"]),
        (&json!("user"), &json!("u1"), &json!(true))
    );
    let counts = &erased["erased"];
    assert_eq!(
        (&counts["sessions"], &counts["turns"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(counts["memories"], 1);
    assert_eq!(counts["idempotent_responses"], 3, "{counts}");

    let (status, _) = srv
        .a(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, memories) = srv.a(Method::GET, "/v1/memories?user_id=u1", None).await;
    assert_eq!(memories["data"], json!([]));
    // A retry of the erased user's request runs again: its answer was erased.
    let retry = post(KEY_A, "erase-1", "/v1/sessions".into(), session("u1"))
        .await
        .unwrap();
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_ne!(json(retry).await["id"], s["id"]);
    let replayed = post(KEY_A, "keep-1", "/v1/sessions".into(), session("u2"))
        .await
        .unwrap();
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(json(replayed).await["id"], kept["id"]);
    // The same user id in another tenant is another user.
    let path = format!("/v1/sessions/{}", b["id"].as_str().unwrap());
    let (status, _, _) = srv.call(Some(KEY_B), Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, traces) = srv
        .a(Method::GET, "/v1/traces?action=user.erased", None)
        .await;
    assert_eq!(traces["data"].as_array().unwrap().len(), 1, "{traces}");
    assert_eq!(traces["data"][0]["details"], *counts);
    let (_, traces) = srv
        .a(Method::GET, &format!("/v1/traces?session_id={id}"), None)
        .await;
    assert_eq!(
        traces["data"],
        json!([]),
        "the erased session's traces are left"
    );

    let (status, again) = srv.a(Method::DELETE, "/v1/users/u1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["erased"]["sessions"], 1, "the retry's new session");
    let (status, again) = srv.a(Method::DELETE, "/v1/users/u1", None).await;
    assert_eq!(
        (status, &again["erased"]["sessions"]),
        (StatusCode::OK, &json!(0))
    );
    let (status, bad) = srv.a(Method::DELETE, "/v1/users/%20", None).await;
    assert!(status.is_client_error(), "{status}");
    assert_ne!(code(&bad), "<no error code>");
}

#[tokio::test]
async fn pruning_versions_over_http() {
    let srv = start(1000, 1000).await;
    let (_, s) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot"})),
        )
        .await;
    let id = s["id"].as_str().unwrap();
    for n in 1..=40 {
        let body = json!({"state": {"n": n, "notes": "x".repeat(600)}});
        let (status, _) = srv
            .a(
                Method::PATCH,
                &format!("/v1/sessions/{id}/state"),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let prune = format!("/v1/sessions/{id}/prune");
    let (status, pruned) = srv
        .a(Method::POST, &prune, Some(json!({"keep_versions": 5})))
        .await;
    assert_eq!(status, StatusCode::OK, "{pruned}");
    assert_eq!(
        pruned,
        json!({
            "session_id": id,
            "versions_pruned": 32,
            "turns_pruned": 0,
            "kept_from": 32,
            "current_version": 40
        })
    );
    let (_, history) = srv
        .a(
            Method::GET,
            &format!("/v1/sessions/{id}/history?from_version=0&limit=100"),
            None,
        )
        .await;
    let versions = history["data"].as_array().unwrap();
    assert_eq!(versions.len(), 9);
    assert_eq!(versions[0]["version"], 32);
    assert_eq!(versions[8]["state"]["n"], 40);
    let rollback = format!("/v1/sessions/{id}/rollback");
    let (status, gone) = srv
        .a(Method::POST, &rollback, Some(json!({"version": 3})))
        .await;
    assert_eq!(
        (status, code(&gone)),
        (StatusCode::NOT_FOUND, "version_not_found")
    );
    assert!(gone["error"]["message"]
        .as_str()
        .unwrap()
        .contains("pruned by retention"));
    let (status, back) = srv
        .a(Method::POST, &rollback, Some(json!({"version": 33})))
        .await;
    assert_eq!(status, StatusCode::OK, "{back}");
    for bad in [
        json!({}),
        json!({"keep_versions": 0}),
        json!({"keep_days": 40000}),
        json!({"keep_trace_days": 1}),
    ] {
        let (status, err) = srv.a(Method::POST, &prune, Some(bad.clone())).await;
        assert!(status.is_client_error(), "{bad}: {status}");
        assert_ne!(code(&err), "<no error code>");
    }
    let (status, _, _) = srv
        .call(
            Some(KEY_B),
            Method::POST,
            &prune,
            Some(json!({"keep_versions": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant pruned it");
}

/// The tenant's and a session's retention policies: read, set, applied on demand to the
/// caller's tenant alone, removed; traced; bad ones refused.
#[tokio::test]
async fn retention_policies_over_http() {
    let srv = start(1000, 1000).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, s) = srv
            .a(
                Method::POST,
                "/v1/sessions",
                Some(json!({"agent_id": "bot"})),
            )
            .await;
        let id = s["id"].as_str().unwrap().to_owned();
        for n in 1..=40 {
            let body = json!({"state": {"n": n}});
            let path = format!("/v1/sessions/{id}/state");
            assert_eq!(
                srv.a(Method::PATCH, &path, Some(body)).await.0,
                StatusCode::OK
            );
        }
        ids.push(id);
    }
    let none = (StatusCode::NOT_FOUND, "retention_policy_not_found");
    let (status, err) = srv.a(Method::GET, "/v1/retention", None).await;
    assert_eq!((status, code(&err)), none);
    let tenant = json!({"keep_versions": 5, "keep_trace_days": 30});
    let (status, set) = srv.a(Method::PUT, "/v1/retention", Some(tenant)).await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(
        (set["keep_versions"].clone(), set["keep_trace_days"].clone()),
        (json!(5), json!(30))
    );
    assert_eq!(srv.a(Method::GET, "/v1/retention", None).await.1, set);
    let own = format!("/v1/sessions/{}/retention", ids[1]);
    let (status, set_own) = srv
        .a(
            Method::PUT,
            &own,
            Some(json!({"keep_versions": 20, "keep_turn_days": 7})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set_own}");
    assert_eq!(set_own["session_id"], ids[1].as_str());
    assert_eq!(srv.a(Method::GET, &own, None).await.1, set_own);
    for bad in [
        json!({}),
        json!({"keep_trace_days": 1}),
        json!({"keep_turn_days": 0}),
        json!({"keep_versions": "many"}),
    ] {
        let (status, err) = srv.a(Method::PUT, &own, Some(bad.clone())).await;
        assert!(status.is_client_error(), "{bad}: {status}");
        assert_ne!(code(&err), "<no error code>");
    }
    let (status, err) = srv.a(Method::PUT, "/v1/retention", Some(json!({}))).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let missing = "/v1/sessions/sess_nothere00/retention";
    assert_eq!(
        srv.a(Method::GET, missing, None).await.0,
        StatusCode::NOT_FOUND
    );

    // Another tenant sees none of it, and applying its policies prunes nothing here.
    let (status, theirs, _) = srv
        .call(Some(KEY_B), Method::GET, "/v1/retention", None)
        .await;
    assert_eq!((status, code(&theirs)), none);
    let (status, _, _) = srv.call(Some(KEY_B), Method::GET, &own, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, applied, _) = srv
        .call(Some(KEY_B), Method::POST, "/v1/retention/apply", None)
        .await;
    assert_eq!(
        applied,
        json!({"sessions": 0, "versions": 0, "turns": 0, "traces": 0})
    );

    // Keeping 5 of 41 prunes 32; keeping 20, 16.
    let (status, applied) = srv.a(Method::POST, "/v1/retention/apply", None).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(
        applied,
        json!({"sessions": 2, "versions": 48, "turns": 0, "traces": 0})
    );
    for (id, first) in [(&ids[0], 32), (&ids[1], 16)] {
        let path = format!("/v1/sessions/{id}/history?from_version=0&limit=100");
        let (_, history) = srv.a(Method::GET, &path, None).await;
        assert_eq!(history["data"][0]["version"], first, "{id}");
    }
    let (_, traces) = srv
        .a(Method::GET, "/v1/traces?action=retention.updated", None)
        .await;
    assert_eq!(traces["data"].as_array().unwrap().len(), 2);

    // Removing answers what was removed; then there is none.
    assert_eq!(srv.a(Method::DELETE, &own, None).await.1, set_own);
    let (status, err) = srv.a(Method::GET, &own, None).await;
    assert_eq!((status, code(&err)), none);
    let (status, err) = srv.a(Method::DELETE, &own, None).await;
    assert_eq!((status, code(&err)), none);
    assert_eq!(srv.a(Method::DELETE, "/v1/retention", None).await.1, set);
    let (status, err) = srv.a(Method::GET, "/v1/retention", None).await;
    assert_eq!((status, code(&err)), none);
}

#[tokio::test]
async fn if_match_and_idempotency_keys() {
    let srv = start(1000, 1000).await;
    let (_, s) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot"})),
        )
        .await;
    let id = s["id"].as_str().unwrap().to_owned();
    let patch = |if_match: &'static str, n: u64| {
        srv.http
            .patch(format!("{}/v1/sessions/{id}/state", srv.url))
            .header("X-API-Key", KEY_A)
            .header("If-Match", if_match)
            .json(&json!({"state": {"n": n}}))
            .send()
    };
    assert_eq!(patch("0", 1).await.unwrap().status(), StatusCode::OK);
    let stale = patch("\"0\"", 2).await.unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    assert_eq!(
        stale.json::<Value>().await.unwrap()["error"]["code"],
        "version_conflict"
    );
    assert_eq!(patch("W/\"1\"", 3).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        patch("one", 4).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let create = |key: &'static str, agent: &'static str| {
        srv.http
            .post(format!("{}/v1/sessions", srv.url))
            .header("X-API-Key", KEY_A)
            .header("Idempotency-Key", key)
            .json(&json!({"agent_id": agent}))
            .send()
    };
    let first = create("retry-1", "idem").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = create("retry-1", "idem").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let (_, list) = srv.a(Method::GET, "/v1/sessions?agent_id=idem", None).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "a retry created a second session"
    );
    let other = create("retry-1", "different").await.unwrap();
    assert_eq!(other.status(), StatusCode::CONFLICT);
    assert_eq!(
        other.json::<Value>().await.unwrap()["error"]["code"],
        "idempotency_key_reused"
    );
    // Keys are per API key: tenant B's same key is its own.
    let b = srv
        .http
        .post(format!("{}/v1/sessions", srv.url))
        .header("X-API-Key", KEY_B)
        .header("Idempotency-Key", "retry-1")
        .json(&json!({"agent_id": "idem"}))
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), StatusCode::CREATED);
    assert_ne!(b.json::<Value>().await.unwrap()["id"], first["id"]);

    // Kept in the store: a server started afresh on the same file still replays it.
    let again = serve(srv.dir.clone(), RateLimiter::new(Rate::new(1000, 1000))).await;
    let replayed = again
        .http
        .post(format!("{}/v1/sessions", again.url))
        .header("X-API-Key", KEY_A)
        .header("Idempotency-Key", "retry-1")
        .json(&json!({"agent_id": "idem"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::CREATED);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed.json::<Value>().await.unwrap()["id"], first["id"]);
    let (_, list) = again
        .a(Method::GET, "/v1/sessions?agent_id=idem", None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // An oversized key, or one with a tab, is refused, and nothing is created.
    for bad in ["k".repeat(256), "a\tb".to_owned()] {
        let long = srv
            .http
            .post(format!("{}/v1/sessions", srv.url))
            .header("X-API-Key", KEY_A)
            .header("Idempotency-Key", bad.clone())
            .json(&json!({"agent_id": "long-key"}))
            .send()
            .await
            .unwrap();
        assert_eq!(long.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
    let (_, list) = srv
        .a(Method::GET, "/v1/sessions?agent_id=long-key", None)
        .await;
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn dashboard_keys_stats_metrics_and_request_ids() {
    let srv = start(1000, 1000).await;
    let (_, s) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot", "user_id": "u"})),
        )
        .await;
    let id = s["id"].as_str().unwrap().to_owned();
    srv.a(
        Method::POST,
        &format!("/v1/sessions/{id}/turns"),
        Some(json!({"input": "a", "output": "b"})),
    )
    .await;
    srv.a(
        Method::POST,
        "/v1/memories",
        Some(json!({"content": "user-level", "user_id": "u"})),
    )
    .await;
    let (st, made) = srv
        .a(
            Method::POST,
            "/v1/dashboard/keys",
            Some(json!({"name": "ci", "rate_limit": 50, "expires_days": 30})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let secret = made["full_key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sb_") && made["expires_at"].is_string());
    let (st, keys) = srv.a(Method::GET, "/v1/dashboard/keys", None).await;
    assert_eq!(st, StatusCode::OK);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 3, "tenant a's keys only");
    assert!(keys.iter().all(|k| k["full_key"].is_null()));
    let mine = keys.iter().find(|k| k["key_prefix"] == "sb_tena").unwrap();
    assert!(mine["total_requests"].as_u64().unwrap() >= 4);
    // The new key works, and is revoked by its id; tenant b can't revoke it.
    assert_eq!(
        srv.call(Some(&secret), Method::GET, "/v1/sessions", None)
            .await
            .0,
        StatusCode::OK
    );
    let kid = made["id"].as_str().unwrap();
    let (st, _, _) = srv
        .call(
            Some(KEY_B),
            Method::DELETE,
            &format!("/v1/dashboard/keys/{kid}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        srv.a(Method::DELETE, &format!("/v1/dashboard/keys/{kid}"), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        srv.call(Some(&secret), Method::GET, "/v1/sessions", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    let (_, stats) = srv.a(Method::GET, "/v1/dashboard/stats", None).await;
    assert_eq!(stats["stats"]["total_sessions"], 1);
    assert_eq!(stats["stats"]["total_turns"], 1);
    assert_eq!(stats["stats"]["total_memories"], 1);
    assert_eq!(stats["stats"]["active_sessions_24h"], 1);
    let activity: u64 = stats["recent_activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["count"].as_u64().unwrap())
        .sum();
    assert_eq!(activity, 3, "session.created, turn.added, memory.created");
    let (_, b_stats, _) = srv
        .call(Some(KEY_B), Method::GET, "/v1/dashboard/stats", None)
        .await;
    assert_eq!(b_stats["stats"]["total_sessions"], 0);

    let r = srv
        .http
        .get(format!("{}/health", srv.url))
        .header("x-request-id", "req_from_client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req_from_client");
    let r = srv
        .http
        .get(format!("{}/health", srv.url))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let metrics = srv
        .http
        .get(format!("{}/metrics", srv.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("statebase_http_requests_total{route=\"/v1/sessions\",method=\"POST\",status=\"201\"} 1"), "{metrics}");
    assert!(metrics.contains("statebase_http_request_duration_seconds_count{route=\"/v1/sessions/{id}/turns\",method=\"POST\"} 1"), "{metrics}");
    assert!(metrics.contains("statebase_rate_limited_total 0"));
    assert!(
        metrics.contains(
            "statebase_store_operation_duration_seconds_count{operation=\"create_session\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "statebase_store_operation_duration_seconds_bucket{operation=\"api_key_by_hash\",le=\"+Inf\"}"
    ));
    assert!(
        metrics.contains(
            "statebase_store_operation_duration_seconds_count{operation=\"create_session\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("statebase_store_operation_duration_seconds_bucket{operation=\"api_key_by_hash\",le=\"+Inf\"}"));
}

#[tokio::test]
async fn openapi_document_lists_every_route_and_its_schemas_bite() {
    let srv = start(10_000, 10_000).await;
    // Served without a key.
    let (s, doc, headers) = srv.call(None, Method::GET, "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["name"],
        "X-API-Key"
    );
    assert!(
        !doc.to_string().contains("](crate::"),
        "a rustdoc link in a description"
    );
    // Every documented route and method is served: ids that do not exist are a 404 of the
    // resource, never "no such route" or 405.
    let mut operations = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = template
            .split('/')
            .map(|s| if s.starts_with('{') { "nope" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let body = op.get("requestBody").map(|_| json!({}));
            let (s, v, _) = srv.call(Some(KEY_A), method.clone(), &path, body).await;
            assert!(
                s != StatusCode::METHOD_NOT_ALLOWED && v["error"]["message"] != "no such route",
                "{method} {template} is documented but not served: {s} {v}"
            );
            operations += 1;
        }
    }
    assert!(operations >= 55, "{operations} operations documented");
    // The checker every call goes through rejects what the document does not allow.
    let session = json!({"$ref": "#/components/schemas/SessionOut"});
    let (_, real) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot"})),
        )
        .await;
    assert!(srv.doc.violations(&session, &real).is_empty());
    let mut wrong = real;
    wrong["version"] = json!("1");
    assert!(!srv.doc.violations(&session, &wrong).is_empty());
    wrong.as_object_mut().unwrap().remove("version");
    assert!(!srv.doc.violations(&session, &wrong).is_empty());
    wrong["created_at"] = json!("yesterday");
    assert!(!srv.doc.violations(&session, &wrong).is_empty());
}

#[tokio::test]
async fn a_store_failure_is_a_500_that_keeps_its_details_in_the_log() {
    let srv = start(1000, 1000).await;
    let (_, s) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot"})),
        )
        .await;
    let id = s["id"].as_str().unwrap();
    // Another process damages the row: the store fails to decode it.
    let file = rusqlite::Connection::open(srv.dir.path().join("api.db")).unwrap();
    let changed = file
        .execute(
            "UPDATE sessions SET state = '{\"unterminated' WHERE id = ?1",
            [id],
        )
        .unwrap();
    assert_eq!(changed, 1);
    // A listing reads the file (the session itself is cached as this process wrote it).
    let (s, v) = srv.a(Method::GET, "/v1/sessions", None).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        (code(&v), v["error"]["type"].as_str()),
        ("internal_error", Some("api_error"))
    );
    assert_eq!(v["error"]["message"], "internal error");
    assert_eq!(v["detail"], "internal error");
    // Other sessions are unaffected.
    let (s, _) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn a_key_cannot_mint_a_key_above_its_own_limits() {
    let srv = start(1000, 1000).await;
    let small = "sb_smalllimitsmalllimit0001";
    let limits = KeyLimits {
        rate_limit: Some(60),
        burst: Some(10),
    };
    srv.sb
        .import_api_key("a", "small", small, limits, None)
        .await
        .unwrap();
    let mint = |body: Value| srv.call(Some(small), Method::POST, "/v1/dashboard/keys", Some(body));
    // Asked for more, a key gets the calling key's limits, and the answer says so.
    for body in [
        json!({"name": "big", "rate_limit": 1_000_000, "burst": 1_000_000}),
        json!({"name": "wide", "rate_limit": 61, "burst": 11}),
    ] {
        let (s, v, _) = mint(body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            (v["rate_limit"].as_u64(), v["burst"].as_u64()),
            (Some(60), Some(10)),
            "{v}"
        );
        let key = v["full_key"].as_str().unwrap().to_owned();
        let (_, _, h) = srv
            .call(Some(&key), Method::GET, "/v1/sessions", None)
            .await;
        assert_eq!(h["x-ratelimit-limit"], "60");
    }
    for field in ["rate_limit", "burst"] {
        let (s, v, _) = mint(json!({"name": "zero", field: 0})).await;
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field))
        );
    }
    // Unset, a new key takes the calling key's limits, not the server's larger ones.
    let (s, made, _) = mint(json!({"name": "child"})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (made["rate_limit"].as_u64(), made["burst"].as_u64()),
        (Some(60), Some(10))
    );
    let (s, lower, _) = mint(json!({"name": "lower", "rate_limit": 30, "burst": 2})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (lower["rate_limit"].as_u64(), lower["burst"].as_u64()),
        (Some(30), Some(2))
    );
    let child = made["full_key"].as_str().unwrap().to_owned();
    let (s, v, _) = srv
        .call(
            Some(&child),
            Method::POST,
            "/v1/dashboard/keys",
            Some(json!({"name": "grandchild", "rate_limit": 61})),
        )
        .await;
    assert_eq!(
        (s, v["rate_limit"].as_u64()),
        (StatusCode::OK, Some(60)),
        "{v}"
    );
}

#[tokio::test]
async fn all_of_a_tenants_keys_share_its_budget() {
    let srv =
        start_with(RateLimiter::new(Rate::new(1000, 1000)).with_tenant_budget(Rate::new(60, 5)))
            .await;
    let list = |key: &'static str| srv.call(Some(key), Method::GET, "/v1/sessions", None);
    for key in [KEY_A, KEY_A2, KEY_A, KEY_A2, KEY_A] {
        assert_eq!(list(key).await.0, StatusCode::OK);
    }
    let (s, v, h) = list(KEY_A2).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded")
    );
    assert!(h.contains_key("retry-after"));
    // Minting more keys does not add to the budget.
    let (s, made, _) = srv
        .call(
            Some(KEY_A),
            Method::POST,
            "/v1/dashboard/keys",
            Some(json!({"name": "more"})),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{made}");
    let fresh = "sb_freshkeyfreshkeyfresh001";
    srv.sb
        .import_api_key("a", "fresh", fresh, KeyLimits::default(), None)
        .await
        .unwrap();
    assert_eq!(list(fresh).await.0, StatusCode::TOO_MANY_REQUESTS);
    // Another tenant has its own.
    assert_eq!(list(KEY_B).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_calling_key_is_revoked_only_when_confirmed() {
    let srv = start(1000, 1000).await;
    let (_, keys) = srv.a(Method::GET, "/v1/dashboard/keys", None).await;
    let mine = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_prefix"] == KEY_A[..7] && k["name"] == "test")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/dashboard/keys/{mine}");
    for refused in [path.clone(), format!("{path}?confirm=false")] {
        let (s, v) = srv.a(Method::DELETE, &refused, None).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::CONFLICT, "confirmation_required")
        );
    }
    assert_eq!(
        srv.a(Method::GET, "/v1/sessions", None).await.0,
        StatusCode::OK
    );
    let (s, _) = srv
        .a(Method::DELETE, &format!("{path}?confirm=true"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        srv.a(Method::GET, "/v1/sessions", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn wrong_keys_from_one_address_are_throttled_without_slowing_known_keys() {
    let srv = start(100_000, 100_000).await;
    // Known to the server before the flood.
    assert_eq!(
        srv.a(Method::GET, "/v1/sessions", None).await.0,
        StatusCode::OK
    );
    let wrong = |i: u32| format!("sb_wrongkeywrongkey{i:08}");
    for i in 0..statebase_http::AUTH_FAILURES.burst {
        let (s, _, h) = srv
            .call(Some(&wrong(i)), Method::GET, "/v1/sessions", None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "wrong key {i}");
        assert!(h.contains_key("x-ratelimit-remaining"));
    }
    let (s, v, h) = srv
        .call(Some(&wrong(999)), Method::GET, "/v1/sessions", None)
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded")
    );
    assert!(h.contains_key("retry-after"));
    // The right key still works from the same address, at full speed, and still once the
    // server must read it from the store again.
    for _ in 0..20 {
        assert_eq!(
            srv.a(Method::GET, "/v1/sessions", None).await.0,
            StatusCode::OK
        );
    }
    tokio::time::sleep(statebase_http::KeyCache::TTL + std::time::Duration::from_millis(100)).await;
    let mut refused = false;
    for i in 0..10 {
        let (s, _, _) = srv
            .call(Some(&wrong(2000 + i)), Method::GET, "/v1/sessions", None)
            .await;
        refused |= s == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(refused, "throttled again");
    assert_eq!(
        srv.a(Method::GET, "/v1/sessions", None).await.0,
        StatusCode::OK,
        "a key seen to work, read from the store again, from a throttled address"
    );
    // Another address is not throttled.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let res = elsewhere
        .get(format!("{}/v1/sessions", srv.url))
        .header("X-API-Key", wrong(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn entities_are_versioned_and_kept_per_tenant() {
    let srv = start(10_000, 10_000).await;
    let (_, s) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot"})),
        )
        .await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let body = |entity_id: &str, attributes: Value| {
        json!({"session_id": sid, "entity_type": "customer", "entity_id": entity_id,
               "attributes": attributes})
    };
    let (st, e) = srv
        .a(
            Method::POST,
            "/v1/entities",
            Some(body("c-1", json!({"name": "Ada", "tier": "gold"}))),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{e}");
    assert_eq!(
        (
            &e["object"],
            &e["version"],
            &e["entity_id"],
            &e["session_id"]
        ),
        (&json!("entity"), &json!(1), &json!("c-1"), &json!(sid))
    );
    let id = e["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/entities/{id}");

    // PUT replaces the attributes whole; the old version stays readable.
    let (st, v2) = srv
        .a(
            Method::PUT,
            &path,
            Some(json!({"attributes": {"name": "Ada L."}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["attributes"], json!({"name": "Ada L."}));
    let (_, now) = srv.a(Method::GET, &path, None).await;
    assert_eq!(now["attributes"], json!({"name": "Ada L."}));
    let (_, then) = srv.a(Method::GET, &format!("{path}?version=1"), None).await;
    assert_eq!(
        (&then["version"], &then["attributes"]),
        (&json!(1), &json!({"name": "Ada", "tier": "gold"}))
    );
    for bad in [
        "?version=abc",
        "?version=-1",
        "/versions?limit=0",
        "/versions?starting_after=x",
    ] {
        let (st, v) = srv.a(Method::GET, &format!("{path}{bad}"), None).await;
        assert!(
            st.is_client_error() && st != StatusCode::NOT_FOUND,
            "{bad}: {st} {v}"
        );
        assert_eq!(code(&v), "invalid_request", "{bad}");
    }
    let (st, missing) = srv.a(Method::GET, &format!("{path}?version=9"), None).await;
    assert_eq!(
        (st, code(&missing)),
        (StatusCode::NOT_FOUND, "version_not_found")
    );
    let (_, versions) = srv
        .a(Method::GET, &format!("{path}/versions?limit=1"), None)
        .await;
    assert_eq!(versions["data"][0]["version"], 1);
    assert_eq!(versions["data"][0]["entity"], json!(id));
    assert_eq!(versions["has_more"], true);
    let (_, rest) = srv
        .a(
            Method::GET,
            &format!("{path}/versions?starting_after=1"),
            None,
        )
        .await;
    assert_eq!(rest["data"][0]["version"], 2);
    assert_eq!(rest["has_more"], false);

    // A stale expectation, by body or If-Match, writes nothing.
    let (st, stale) = srv
        .a(
            Method::PUT,
            &path,
            Some(json!({"attributes": {}, "expected_version": 1})),
        )
        .await;
    assert_eq!(
        (st, code(&stale)),
        (StatusCode::CONFLICT, "version_conflict")
    );
    let r = srv
        .http
        .put(format!("{}{path}", srv.url))
        .header("X-API-Key", KEY_A)
        .header("If-Match", "\"1\"")
        .json(&json!({"attributes": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(srv.a(Method::GET, &path, None).await.1["version"], 2);

    // Names are unique per session and type; bad bodies are refused with their codes.
    let (st, dup) = srv
        .a(Method::POST, "/v1/entities", Some(body("c-1", json!({}))))
        .await;
    assert_eq!((st, code(&dup)), (StatusCode::CONFLICT, "duplicate_entity"));
    assert!(dup["error"]["message"].as_str().unwrap().contains(&id));
    for (bad, status) in [
        (
            json!({"session_id": sid, "entity_type": "t", "entity_id": "x"}),
            422,
        ),
        (body("c-2", json!([1, 2])), 422),
        (
            json!({"session_id": "sess_none", "entity_type": "t", "entity_id": "x", "attributes": {}}),
            404,
        ),
        (
            json!({"session_id": sid, "entity_type": " ", "entity_id": "x", "attributes": {}}),
            400,
        ),
    ] {
        let (st, v) = srv.a(Method::POST, "/v1/entities", Some(bad.clone())).await;
        assert_eq!(st.as_u16(), status, "{bad}: {v}");
    }

    // Lists filter and page.
    srv.a(Method::POST, "/v1/entities", Some(body("c-2", json!({}))))
        .await;
    let (_, all) = srv.a(Method::GET, "/v1/entities?limit=1", None).await;
    assert_eq!(
        (all["data"].as_array().unwrap().len(), &all["has_more"]),
        (1, &json!(true))
    );
    let after = all["last_id"].as_str().unwrap();
    let (_, next) = srv
        .a(
            Method::GET,
            &format!("/v1/entities?limit=1&starting_after={after}"),
            None,
        )
        .await;
    assert_eq!(next["has_more"], false);
    let (_, one) = srv
        .a(
            Method::GET,
            &format!("/v1/entities?session_id={sid}&entity_type=customer&entity_id=c-1"),
            None,
        )
        .await;
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["data"][0]["id"], json!(id));

    // Another tenant sees none of it, even by id.
    for (method, p, b) in [
        (Method::GET, path.clone(), None),
        (Method::GET, format!("{path}?version=1"), None),
        (Method::GET, format!("{path}/versions"), None),
        (Method::PUT, path.clone(), Some(json!({"attributes": {}}))),
        (Method::DELETE, path.clone(), None),
        (
            Method::GET,
            format!("/v1/entities?starting_after={id}"),
            None,
        ),
    ] {
        let (st, v, _) = srv.call(Some(KEY_B), method.clone(), &p, b).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::NOT_FOUND, "entity_not_found"),
            "{method} {p}"
        );
    }
    let (st, v, _) = srv
        .call(
            Some(KEY_B),
            Method::POST,
            "/v1/entities",
            Some(body("c-9", json!({}))),
        )
        .await;
    assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, "session_not_found"));
    let (_, b_list, _) = srv
        .call(Some(KEY_B), Method::GET, "/v1/entities", None)
        .await;
    assert!(b_list["data"].as_array().unwrap().is_empty());
    let (_, b_stats, _) = srv
        .call(Some(KEY_B), Method::GET, "/v1/dashboard/stats", None)
        .await;
    assert_eq!(b_stats["stats"]["total_entities"], 0);

    // Counted, traced, and deleted.
    let (_, stats) = srv.a(Method::GET, "/v1/dashboard/stats", None).await;
    assert_eq!(stats["stats"]["total_entities"], 2);
    let (_, traces) = srv
        .a(Method::GET, &format!("/v1/traces?resource_id={id}"), None)
        .await;
    let actions: Vec<&str> = traces["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["entity.updated", "entity.created"]);
    assert_eq!(
        srv.a(Method::DELETE, &path, None).await.0,
        StatusCode::NO_CONTENT
    );
    let (st, gone) = srv.a(Method::GET, &path, None).await;
    assert_eq!(
        (st, code(&gone)),
        (StatusCode::NOT_FOUND, "entity_not_found")
    );
    let (_, stats) = srv.a(Method::GET, "/v1/dashboard/stats", None).await;
    assert_eq!(stats["stats"]["total_entities"], 1);
}

#[tokio::test]
async fn large_answers_are_gzipped_for_clients_that_ask() {
    let srv = start(10_000, 10_000).await;
    let big = json!({"notes": "the quick brown fox ".repeat(1_000)});
    let (_, s) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot", "initial_state": big})),
        )
        .await;
    let (_, small) = srv
        .a(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent_id": "bot"})),
        )
        .await;
    let get = |id: &str, gzip: bool| {
        let mut req = srv
            .http
            .get(format!("{}/v1/sessions/{id}", srv.url))
            .header("X-API-Key", KEY_A);
        if gzip {
            req = req.header("Accept-Encoding", "gzip");
        }
        req.send()
    };
    let plain = get(s["id"].as_str().unwrap(), false).await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    let zipped = get(s["id"].as_str().unwrap(), true).await.unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let zipped = zipped.bytes().await.unwrap();
    assert!(
        zipped.len() * 10 < plain.len(),
        "{} of {}",
        zipped.len(),
        plain.len()
    );
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&zipped[..]),
        &mut unzipped,
    )
    .unwrap();
    assert_eq!(unzipped, plain);
    let answer: Value = serde_json::from_slice(&unzipped).unwrap();
    assert_eq!(answer["state"], big);
    // A small answer is sent as it is.
    let short = get(small["id"].as_str().unwrap(), true).await.unwrap();
    assert!(short.headers().get("content-encoding").is_none());
}

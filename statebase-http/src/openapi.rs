//! `/openapi.json`: the OpenAPI 3.1 document of the routes [`crate::router`] serves, built
//! from the handlers' `#[utoipa::path]` attributes and the types they take and answer, plus
//! what every route shares (authentication, the error envelope, `Idempotency-Key`).

use crate::error::ErrorBody;
use serde_json::{json, Value};
use std::collections::HashSet;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

/// The parts no handler states.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "statebase",
        description = "The StateBase `/v1` API: versioned session state, turns, memories and \
            context for AI agents. Errors of every route are the `ErrorBody` envelope.",
    ),
    components(schemas(ErrorBody, statebase_core::Order)),
    modifiers(&Keys),
    security(("api_key" = []), ("bearer" = [])),
)]
pub struct Base;

/// The two ways to send a key.
struct Keys;

impl utoipa::Modify for Keys {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The finished document: each operation gets a tag (its first path segment after `/v1`),
/// the error envelope as its `default` answer, the `Idempotency-Key` header when it is a
/// `/v1` POST or PATCH, and an `operationId` no other has (a handler served at several
/// paths is numbered). A body whose fields are all optional is optional: an empty body
/// is `{}`. Descriptions lose their rustdoc links.
pub fn finish(doc: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(doc).expect("an OpenAPI document is JSON");
    plain_descriptions(&mut doc);
    constrain(&mut doc);
    let schemas = doc["components"]["schemas"].clone();
    let all_optional = |body: &Value| {
        let schema = &body["content"]["application/json"]["schema"];
        let name = schema["$ref"].as_str().and_then(|r| r.rsplit('/').next());
        // A body with one of several fields required (`anyOf`) is required too.
        name.is_some_and(|n| {
            schemas[n]["required"].as_array().is_none_or(Vec::is_empty)
                && schemas[n].get("anyOf").is_none()
        })
    };
    let error = json!({
        "description": "An error: `{\"error\": {code, message, type, param}, \"detail\"}`",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    });
    let idempotency_key = json!({
        "name": "Idempotency-Key",
        "in": "header",
        "required": false,
        "description": "A retry with the same key and body returns the first answer and \
            changes nothing; the same key with another body is refused (409).",
        // Visible ASCII, spaces only inside.
        "schema": {"type": "string", "minLength": 1, "maxLength": 255,
            "pattern": "^[!-~]([ -~]*[!-~])?$"},
    });
    let mut ids = HashSet::new();
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let v1 = path.strip_prefix("/v1/");
        for method in METHODS {
            let Some(op) = item.get_mut(method) else {
                continue;
            };
            let tag = v1.and_then(|p| p.split('/').next()).unwrap_or("service");
            op["tags"] = json!([tag]);
            op["responses"]["default"] = error.clone();
            for (status, answer) in op["responses"].as_object_mut().into_iter().flatten() {
                if answer["description"] == "" {
                    let reason = status
                        .parse()
                        .ok()
                        .and_then(|s| axum::http::StatusCode::from_u16(s).ok()?.canonical_reason());
                    answer["description"] = json!(reason.unwrap_or_default());
                }
            }
            if op.get("requestBody").is_some_and(all_optional) {
                op["requestBody"]["required"] = json!(false);
            }
            if v1.is_some() && matches!(method, "post" | "patch") {
                let params = op["parameters"].as_array_mut();
                match params {
                    Some(params) => params.push(idempotency_key.clone()),
                    None => op["parameters"] = json!([idempotency_key]),
                }
            }
            let base = op["operationId"].as_str().unwrap_or(method).to_owned();
            let mut id = base.clone();
            for n in 2.. {
                if ids.insert(id.clone()) {
                    break;
                }
                id = format!("{base}_{n}");
            }
            op["operationId"] = json!(id);
        }
    }
    doc
}

/// The rules of request bodies that the types' attributes cannot state: what a field's
/// items must be, and fields one of which is required.
fn constrain(doc: &mut Value) {
    let identifier = json!({"type": "string", "minLength": 1, "maxLength": 256, "pattern": "\\S"});
    let object = |name: &str| json!({"required": [name], "properties": {name: {"type": "object"}}});
    let schemas = &mut doc["components"]["schemas"];
    for body in ["MemoryBody", "MemoryUpdateBody"] {
        schemas[body]["properties"]["tags"]["items"] = identifier.clone();
    }
    // A turn's input and output: text, or an object with `content` and a `type`.
    let io = json!({"oneOf": [
        {"type": "string"},
        {"type": "object", "required": ["content"],
         "properties": {"type": {"type": ["string", "null"], "minLength": 1}}},
    ]});
    for side in ["input", "output"] {
        let field = &mut schemas["AddTurn"]["properties"][side];
        let description = field["description"].clone();
        *field = io.clone();
        field["description"] = description;
    }
    schemas["StateBody"]["anyOf"] = json!([object("state"), object("updates")]);
    let number =
        |name: &str| json!({"required": [name], "properties": {name: {"type": "integer"}}});
    let keeps = ["keep_versions", "keep_days", "keep_turn_days"];
    schemas["SessionRetention"]["anyOf"] = keeps.iter().map(|k| number(k)).collect();
    schemas["Retention"]["anyOf"] = keeps
        .iter()
        .chain(&["keep_trace_days"])
        .map(|k| number(k))
        .collect();
    let webhook = &mut schemas["WebhookBody"]["properties"];
    webhook["url"]["format"] = json!("uri");
    webhook["url"]["pattern"] = json!(concat!(
        r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*[A-Za-z0-9])",
        r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?",
        r"([/?#][!-~]*)?$"
    ));
    webhook["events"]["items"]["enum"] = json!(["*"]
        .into_iter()
        .chain(crate::webhooks::EVENTS)
        .collect::<Vec<_>>());
    webhook["secret"]["minLength"] = json!(16);
    // A memory of no session belongs to a user: one of the two is required, except where
    // the path names the session.
    let scoped = json!({"allOf": [
        {"$ref": "#/components/schemas/MemoryBody"},
        {"anyOf": [
            {"required": ["session_id"], "properties": {"session_id": {"type": "string"}}},
            {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
        ]},
    ]});
    for path in ["/v1/memories", "/v1/memory"] {
        doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"] =
            scoped.clone();
    }
    let params = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .flat_map(|op| op.get_mut("parameters").and_then(Value::as_array_mut))
        .flatten();
    for param in params {
        match param["name"].as_str() {
            // A version, quoted or weak as an entity tag may be; a header is never null.
            Some("If-Match") => {
                param["schema"] = json!({"type": "string", "pattern": r#"^(W/)?"?[0-9]{1,19}"?$"#})
            }
            // The sessions filter is a JSON object sent as the parameter's text.
            Some("metadata") => {
                if let Some(p) = param.as_object_mut() {
                    p.remove("schema");
                    p.insert(
                        "content".into(),
                        json!({"application/json": {"schema": {"type": "object"}}}),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Every `description` in `v` with its rustdoc links as their text.
fn plain_descriptions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(text) if key == "description" => *text = without_links(text),
                    other => plain_descriptions(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(plain_descriptions),
        _ => {}
    }
}

/// `[text](crate::path)` as `text`: the path means nothing to a client.
fn without_links(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(mid) = rest.find("](crate::") {
        let (Some(open), Some(close)) = (rest[..mid].rfind('['), rest[mid..].find(')')) else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..mid]);
        rest = &rest[mid + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn rustdoc_links_become_their_text() {
        let text = "Input of [`StateBase::add_turn`](crate::StateBase::add_turn), [x] (y).";
        assert_eq!(
            super::without_links(text),
            "Input of `StateBase::add_turn`, [x] (y)."
        );
    }
}

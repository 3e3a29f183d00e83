//! Request bodies and queries, parsed so that every failure is the API's JSON error.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A JSON body. An empty body is `{}`; a body with a content type other than JSON is
/// refused; a field of the wrong type or a missing required one is a 422 naming it.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.starts_with("application/json") || v.contains("+json"));
        let bytes =
            Bytes::from_request(req, state)
                .await
                .map_err(|e| match e.status().as_u16() {
                    413 => ApiError::too_large(crate::MAX_BODY_BYTES),
                    _ => ApiError::bad_request(e.body_text()),
                })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else if json_type == Some(false) {
            return Err(ApiError::bad_request(
                "the body must be JSON (Content-Type: application/json)",
            ));
        } else {
            &bytes
        };
        parse(bytes, "body").map(Body)
    }
}

/// Parses JSON, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], location: &str) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut de) {
        // One value, and nothing after it but white space.
        Ok(v) => match de.end() {
            Ok(()) => Ok(v),
            Err(e) => Err(ApiError::bad_request(format!(
                "malformed JSON: data after the {location}'s value ({e})"
            ))),
        },
        Err(e)
            if e.inner()
                .to_string()
                .starts_with("invalid type: floating point") =>
        {
            with_whole_numbers(bytes, location)
        }
        Err(e) => Err(invalid(e, location)),
    }
}

/// [`parse`] where a number with no fraction (`3.0`, `1e3`) stands for an integer, as JSON
/// Schema counts it: each one where an integer is expected is written as one, and the
/// value parsed again.
fn with_whole_numbers<T: DeserializeOwned>(bytes: &[u8], location: &str) -> Result<T, ApiError> {
    let mut value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    loop {
        let e = match serde_path_to_error::deserialize(&value) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let whole = at(&mut value, e.path()).and_then(|slot| {
            let f = slot
                .as_f64()
                .filter(|f| f.fract() == 0.0 && slot.is_f64())?;
            let n = if f < 0.0 {
                serde_json::Number::from(i64::try_from(f as i128).ok()?)
            } else {
                serde_json::Number::from(u64::try_from(f as i128).ok()?)
            };
            *slot = Value::Number(n);
            Some(())
        });
        if whole.is_none() {
            return Err(invalid(e, location));
        }
    }
}

/// The value at `path` in `v`.
fn at<'v>(v: &'v mut Value, path: &serde_path_to_error::Path) -> Option<&'v mut Value> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(v, |v, segment| match segment {
        Segment::Seq { index } => v.get_mut(*index),
        Segment::Map { key } => v.get_mut(key.as_str()),
        Segment::Enum { .. } | Segment::Unknown => Some(v),
    })
}

/// The 400 or 422 for a value that did not parse.
fn invalid(e: serde_path_to_error::Error<serde_json::Error>, location: &str) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::bad_request(format!("malformed JSON: {inner}"));
    }
    let path = if path == "." { String::new() } else { path };
    // A missing field is reported by serde at the parent: name it.
    let message = inner.to_string();
    let field = match message.strip_prefix("missing field `") {
        Some(rest) => rest.split('`').next().unwrap_or_default().to_owned(),
        None => path,
    };
    ApiError::validation(&field, location, message)
}

/// A query string, with the same errors as a body.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let field = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = match message.strip_prefix("missing field `") {
                    Some(rest) => rest.split('`').next().unwrap_or_default().to_owned(),
                    None if field == "." => String::new(),
                    None => field,
                };
                ApiError::validation(&field, "query", message)
            })
    }
}

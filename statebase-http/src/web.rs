//! The dashboard: a web app at `/dashboard` whose assets are built into the binary. It is a
//! client of the public `/v1` API with the key the person enters (kept in the tab's
//! `sessionStorage`, sent as `X-API-Key`, never in a cookie, so no request is forged with
//! it), so the server keeps nothing for it. The app puts every value it shows in the page as
//! text; the content security policy below allows no script or style but its own files.

use crate::AppState;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");

/// Only the page's own script, styles and API; no frames, plugins, base or form targets.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `/dashboard` and its assets (no key needed: the page asks for one).
pub fn router() -> Router<AppState> {
    let page = || async { asset("text/html; charset=utf-8", INDEX) };
    let script = || async { asset("text/javascript; charset=utf-8", APP_JS) };
    let styles = || async { asset("text/css; charset=utf-8", APP_CSS) };
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(styles))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("content-security-policy", HeaderValue::from_static(POLICY));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // Assets change with the binary: revalidate rather than run an old app.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

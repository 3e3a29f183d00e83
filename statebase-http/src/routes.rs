//! The `/v1` handlers, one module per resource, each with its request bodies, the answers
//! only it gives and its `router()`: parse, call core, shape the answer (record shapes that
//! webhook events share live in `wire`). No domain logic lives here.
//!
//! Each handler's `#[utoipa::path]` names its route, what it takes and what it answers;
//! [`crate::router`] serves the modules' routers and `/openapi.json` documents them.

pub(crate) mod context;
pub(crate) mod dashboard;
pub(crate) mod entities;
pub(crate) mod export;
pub(crate) mod memories;
pub(crate) mod retention;
pub(crate) mod service;
pub(crate) mod sessions;
pub(crate) mod state;
pub(crate) mod traces;
pub(crate) mod turns;
pub(crate) mod users;
pub(crate) mod webhooks;

use crate::auth::{Caller, Tenant};
use crate::error::ApiError;
use crate::extract::{Body, Query};
use crate::webhooks::{DeliveryOut, EndpointOut};
use crate::{wire, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use statebase_core::*;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;
use wire::*;

type Sb = StateBase<std::sync::Arc<dyn ServerStore>>;
type Reply = Result<Response, ApiError>;

fn ok(v: impl Serialize) -> Reply {
    Ok(Json(v).into_response())
}

fn created(v: impl Serialize) -> Reply {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn no_content() -> Reply {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Comma-separated lists in queries (`types=a,b`).
fn csv(v: Option<String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

fn timestamp(param: &'static str, v: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.to_utc())
            .map_err(|e| ApiError::validation(param, "query", format!("not an ISO 8601 time: {e}")))
    })
    .transpose()
}

/// The `If-Match` header of state writes: write only if the session is still at this
/// version (quotes and a `W/` prefix allowed).
#[derive(IntoParams)]
#[into_params(names("If-Match"), parameter_in = Header)]
pub struct IfMatch(#[allow(dead_code)] Option<String>);

/// `If-Match: <version>` as an expected version.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("if-match") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::validation(
            "If-Match",
            "header",
            format!("not a version number: {text}"),
        )
    })
}

/// `routes` at their documented path and at each of `aliases`, documented there too.
pub(crate) fn also_at(
    router: OpenApiRouter<AppState>,
    routes: UtoipaMethodRouter<AppState>,
    aliases: &[&str],
) -> OpenApiRouter<AppState> {
    let (_, paths, method_router) = &routes;
    let item = paths.paths.values().next().cloned().unwrap_or_default();
    let method_router = method_router.clone();
    let mut router = router.routes(routes);
    for alias in aliases {
        router = router.route(alias, method_router.clone());
        let documented = &mut router.get_openapi_mut().paths.paths;
        match documented.get_mut(*alias) {
            Some(existing) => existing.merge_operations(item.clone()),
            None => {
                documented.insert((*alias).to_owned(), item.clone());
            }
        }
    }
    router
}

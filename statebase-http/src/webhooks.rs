//! Webhooks: endpoints per tenant, events read from the store's trace feed (written in the
//! same transaction as each change, so none is lost to a crash), and a dispatcher that
//! signs and delivers them at least once, in order per session, retrying with backoff.
//!
//! It keeps its endpoints, deliveries and cursor (the last feed position turned into
//! deliveries, written with them) in the store's [`ServerRecords`].

use crate::outbound::{CheckedResolver, NotPublic, Targets};
use crate::wire;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use statebase_core::keys::hex;
use statebase_core::store::{DeliveryRecord, FeedEntry};
use statebase_core::{
    action, Error, Memory, ResourceKind, Result, ServerRecords, ServerStore, Session, StateBase,
    Trace, TraceLog, WebhookEndpoint,
};
use statebase_core::{IdSource, RandomIds};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// Events an endpoint can ask for.
pub const EVENTS: [&str; 8] = [
    "session.created",
    "session.updated",
    "session.deleted",
    "session.expired",
    "turn.added",
    "memory.created",
    "state.rolled_back",
    "user.erased",
];
/// How long a receiver has to answer an attempt.
pub const DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the dispatcher's lease lasts unless renewed: longer than a round takes (its
/// attempts run at once, each within [`DELIVERY_TIMEOUT`]).
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a failing delivery is retried before it is given up.
const RETRY_WINDOW: Duration = Duration::hours(24);
/// The longest wait between two attempts.
const MAX_BACKOFF_SECONDS: i64 = 3600;
/// How long delivered and given-up deliveries stay listable.
pub const KEEP_DONE: Duration = Duration::days(7);

type Sb = StateBase<Arc<dyn ServerStore>>;
/// An owed delivery: where it is kept (endpoint id, position) and what it is.
type Owed = (String, u64, Delivery);

/// An endpoint as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct EndpointOut<'a> {
    /// `webhook_endpoint`.
    #[schema(example = "webhook_endpoint")]
    object: &'static str,
    id: &'a str,
    url: &'a str,
    /// The event types it receives; empty means all.
    events: &'a [String],
    /// The HMAC key of its signatures: in the answer that creates it, and never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
    /// The secret's first characters, to recognise it.
    secret_prefix: String,
    created_at: DateTime<Utc>,
}

impl<'a> EndpointOut<'a> {
    /// As listed: the secret masked.
    pub fn listed(e: &'a WebhookEndpoint) -> Self {
        Self {
            object: "webhook_endpoint",
            id: &e.id,
            url: &e.url,
            events: &e.events,
            secret: None,
            secret_prefix: format!("{}…", e.secret.chars().take(10).collect::<String>()),
            created_at: e.created_at,
        }
    }

    /// As just created: with the whole secret, this once.
    pub fn created(e: &'a WebhookEndpoint) -> Self {
        Self {
            secret: Some(&e.secret),
            ..Self::listed(e)
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Owed: its next attempt is due at `next_attempt_at`.
    Pending,
    /// A 2xx came back.
    Delivered,
    /// Given up after a day of failed attempts.
    Failed,
}

/// One event owed to (or delivered to) one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// The event body, exactly as it is sent.
    pub event: Value,
    /// The session the event concerns: events of a session go out in order.
    pub session_id: Option<String>,
    /// Where it stands.
    pub status: Status,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt was made.
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: DateTime<Utc>,
    /// The HTTP status of the last attempt, if it got one.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct DeliveryOut<'a> {
    /// `webhook_delivery`.
    #[schema(example = "webhook_delivery")]
    object: &'static str,
    /// The event's `id` (also sent as `X-StateBase-Event-Id`).
    #[schema(value_type = String)]
    event_id: &'a Value,
    /// The event's type, e.g. `session.updated`.
    #[schema(value_type = String)]
    r#type: &'a Value,
    status: Status,
    attempts: u32,
    /// While pending.
    next_attempt_at: Option<DateTime<Utc>>,
    last_status: Option<u16>,
    last_error: Option<&'a str>,
    delivered_at: Option<DateTime<Utc>>,
    /// The event body, exactly as it is sent.
    #[schema(value_type = Object)]
    event: &'a Value,
}

impl<'a> From<&'a Delivery> for DeliveryOut<'a> {
    fn from(d: &'a Delivery) -> Self {
        Self {
            object: "webhook_delivery",
            event_id: &d.event["id"],
            r#type: &d.event["type"],
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: (d.status == Status::Pending).then_some(d.next_attempt_at),
            last_status: d.last_status,
            last_error: d.last_error.as_deref(),
            delivered_at: d.delivered_at,
            event: &d.event,
        }
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed with the whole secret.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("t={timestamp},v1={}", hex(&mac.finalize().into_bytes()))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(Error::backend)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(Error::backend)
}

impl Delivery {
    /// The record that keeps it: owed until it is delivered or given up.
    fn record(&self, endpoint_id: &str, position: u64) -> Result<DeliveryRecord> {
        // A given-up delivery's last attempt was the one due at `next_attempt_at`.
        let done_at = match self.status {
            Status::Pending => None,
            Status::Delivered => self.delivered_at,
            Status::Failed => Some(self.next_attempt_at),
        };
        Ok(DeliveryRecord {
            endpoint_id: endpoint_id.to_owned(),
            position,
            done_at,
            body: encode(self)?,
        })
    }
}

/// Makes an endpoint of `tenant`, refusing a URL whose address `targets` does not allow.
pub async fn create(
    sb: &Sb,
    tenant: &str,
    url: &str,
    events: Vec<String>,
    secret: Option<String>,
    targets: Targets,
) -> Result<WebhookEndpoint> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Error::invalid("url", e.to_string()))?;
    // A host of letters, digits, dots and dashes, or an address: nothing a URL parser
    // would take that a person would not read as a host.
    let plain_host = |h: &str| {
        h.starts_with('[')
            || h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if !matches!(parsed.scheme(), "http" | "https")
        || !parsed.host_str().is_some_and(plain_host)
        || !parsed.username().is_empty()
    {
        return Err(Error::invalid(
            "url",
            "must be an http or https URL with a plain host",
        ));
    }
    if targets.check_url(&parsed).await.is_err() {
        return Err(Error::invalid(
            "url",
            "must reach a public address: loopback, private, link-local and other \
             internal addresses are refused",
        ));
    }
    if let Some(bad) = events
        .iter()
        .find(|e| *e != "*" && !EVENTS.contains(&e.as_str()))
    {
        return Err(Error::invalid(
            "events",
            format!("unknown event {bad:?}; known: {}", EVENTS.join(", ")),
        ));
    }
    let secret = match secret {
        Some(s) if s.chars().count() < 16 => {
            return Err(Error::invalid("secret", "must be at least 16 characters"))
        }
        Some(s) => s,
        None => {
            let ids = &sb.config().ids;
            format!("whsec_{}{}", ids.new_id(""), ids.new_id(""))
        }
    };
    let endpoint = WebhookEndpoint {
        id: sb.config().ids.new_id("wh_"),
        tenant: tenant.to_owned(),
        url: url.to_owned(),
        events,
        secret,
        created_at: sb.now(),
    };
    sb.store().put_webhook(endpoint.clone()).await?;
    Ok(endpoint)
}

/// The endpoints of `tenant`, or of every tenant, oldest first.
pub async fn list(sb: &Sb, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>> {
    sb.store().list_webhooks(tenant).await
}

async fn get(sb: &Sb, tenant: &str, id: &str) -> Result<WebhookEndpoint> {
    sb.store()
        .webhook(tenant, id)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Webhook, id))
}

/// Deletes an endpoint of `tenant` and its deliveries.
pub async fn delete(sb: &Sb, tenant: &str, id: &str) -> Result<()> {
    sb.store().delete_webhook(tenant, id).await
}

/// An endpoint's deliveries, newest event first.
pub async fn deliveries(sb: &Sb, tenant: &str, id: &str) -> Result<Vec<Delivery>> {
    get(sb, tenant, id).await?;
    let records = sb.store().deliveries(Some(id), false).await?;
    records.iter().rev().map(|r| decode(&r.body)).collect()
}

/// Owes the event `event_id` to the endpoint again, now, whatever became of it.
pub async fn redeliver(sb: &Sb, tenant: &str, id: &str, event_id: &str) -> Result<Delivery> {
    get(sb, tenant, id).await?;
    let store = sb.store();
    for record in store.deliveries(Some(id), false).await? {
        let mut d: Delivery = decode(&record.body)?;
        if d.event["id"] != event_id || d.status == Status::Pending {
            continue;
        }
        d.status = Status::Pending;
        d.attempts = 0;
        d.first_attempt_at = None;
        d.next_attempt_at = sb.now();
        d.delivered_at = None;
        store
            .put_deliveries(vec![d.record(id, record.position)?], None)
            .await?;
        return Ok(d);
    }
    Err(Error::not_found(ResourceKind::Event, event_id))
}

/// The webhook event type of a trace's action, if it has one.
fn event_type(trace_action: &str) -> Option<&'static str> {
    Some(match trace_action {
        action::SESSION_CREATED | action::SESSION_FORKED => "session.created",
        action::SESSION_UPDATED | action::STATE_UPDATED => "session.updated",
        action::SESSION_DELETED => "session.deleted",
        action::SESSION_EXPIRED => "session.expired",
        action::STATE_ROLLED_BACK => "state.rolled_back",
        action::TURN_ADDED => "turn.added",
        action::MEMORY_CREATED => "memory.created",
        action::USER_ERASED => "user.erased",
        _ => return None,
    })
}

/// The resource as the API returns it, with what history keeps as of the event: a
/// session's state at the version the change wrote, a memory's first revision for its
/// creation. A gone resource is its id and the trace's details.
async fn resource(sb: &Sb, entry: &FeedEntry) -> Value {
    let t = &entry.trace;
    let sb = sb.tenant(&entry.tenant);
    let found = match t.resource_type.as_str() {
        "session" => session_as_of(&sb, t)
            .await
            .map(|s| json!(wire::SessionOut::from(&s))),
        "turn" => match &t.session_id {
            Some(s) => sb
                .get_turn(s, &t.resource_id)
                .await
                .map(|x| json!(wire::TurnOut::from(&x))),
            None => Err(Error::not_found(ResourceKind::Turn, &t.resource_id)),
        },
        "memory" => memory_as_of(&sb, t)
            .await
            .map(|m| json!(wire::MemoryOut::from(&m))),
        _ => Err(Error::not_found(ResourceKind::Trace, &t.id)),
    };
    found.unwrap_or_else(|_| {
        json!({
            "object": t.resource_type,
            "id": t.resource_id,
            "session_id": t.session_id,
            "deleted": true,
            "details": t.details,
        })
    })
}

/// The session, with the state of the version `t` wrote (versions never change).
async fn session_as_of(sb: &Sb, t: &Trace) -> Result<Session> {
    let mut session = sb.get_session(&t.resource_id).await?;
    let written = ["version", "new_version"]
        .iter()
        .find_map(|k| t.details[*k].as_u64());
    if let Some(v) = written.filter(|v| *v != session.version) {
        let at = sb.state_at(&session.id, v as i64).await?;
        session.state = at.state;
        session.version = at.version;
        session.updated_at = at.created_at;
    }
    Ok(session)
}

/// The memory; for its creation, as its first revision had it.
async fn memory_as_of(sb: &Sb, t: &Trace) -> Result<Memory> {
    let mut memory = sb.get_memory(&t.resource_id).await?;
    if t.action == action::MEMORY_CREATED && memory.version > 1 {
        if let Some(first) = sb.memory_history(&memory.id).await?.into_iter().next() {
            memory.version = first.version;
            memory.content = first.content;
            memory.memory_type = first.memory_type;
            memory.tags = first.tags;
            memory.metadata = first.metadata;
            memory.updated_at = first.updated_at;
        }
    }
    Ok(memory)
}

/// The error and what caused it ("error sending request …: operation timed out"): the
/// first alone rarely says what went wrong.
/// Why an attempt got no answer.
enum Refused {
    /// The endpoint's address is not one the dispatcher may reach.
    NotPublic,
    /// Sending failed.
    Failed(reqwest::Error),
}

fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// Delivers events: turns the feed into deliveries and sends what is due.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    sb: Sb,
    http: reqwest::Client,
    targets: Targets,
}

impl Dispatcher {
    /// A dispatcher over the server's statebase (whose clock times the retries) that
    /// delivers only to addresses `targets` allows, giving each attempt
    /// [`DELIVERY_TIMEOUT`].
    pub fn new(sb: Sb, targets: Targets) -> Self {
        Self::with_timeout(sb, targets, DELIVERY_TIMEOUT)
    }

    /// [`Dispatcher::new`], giving each attempt `timeout` to be answered.
    pub fn with_timeout(sb: Sb, targets: Targets, timeout: std::time::Duration) -> Self {
        // No proxy from the environment and no redirects: the address checked is the one
        // reached.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(CheckedResolver(targets)))
            .build()
            .expect("a default HTTP client builds");
        Self { sb, http, targets }
    }

    /// Runs [`Dispatcher::step`] every `interval`, forever, while this process holds the
    /// dispatcher's lease: of the servers sharing a store, one delivers at a time, and
    /// another takes over within [`LEASE`] of its stopping.
    pub fn spawn(self, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let holder = RandomIds.new_id("dispatcher_");
        tokio::spawn(async move {
            let mut pruned: Option<std::time::Instant> = None;
            let mut leading = false;
            loop {
                match self.sb.store().take_lease("webhooks", &holder, LEASE).await {
                    Ok(lead) if lead != leading => {
                        leading = lead;
                        tracing::info!(leading, "webhook dispatcher lease");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        leading = false;
                        tracing::warn!(error = %e, "taking the webhook dispatcher's lease failed");
                    }
                }
                if !leading {
                    tokio::time::sleep(interval).await;
                    continue;
                }
                if let Err(e) = self.step().await {
                    tracing::warn!(error = %e, "webhook dispatch failed; retrying");
                }
                if pruned.is_none_or(|at| at.elapsed().as_secs() >= 3600) {
                    match self.prune(KEEP_DONE).await {
                        Ok(_) => pruned = Some(std::time::Instant::now()),
                        Err(e) => tracing::warn!(error = %e, "pruning deliveries failed"),
                    }
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// Forgets delivered and given-up deliveries older than `keep`; returns how many.
    pub async fn prune(&self, keep: Duration) -> Result<u64> {
        let cutoff = self.sb.now() - keep;
        self.sb.store().prune_deliveries(cutoff).await
    }

    /// One round: plan deliveries for new events, then make every due attempt.
    pub async fn step(&self) -> Result<()> {
        while self.plan().await? {}
        self.deliver_due().await
    }

    /// Turns the next feed entries into deliveries; true if there may be more.
    async fn plan(&self) -> Result<bool> {
        let store = self.sb.store();
        let cursor = store.delivery_cursor().await?;
        let endpoints = list(&self.sb, None).await?;
        if endpoints.is_empty() {
            // Nobody to tell: skip what happened without reading it.
            let end = store.trace_feed_end().await?;
            if end > cursor {
                store.put_deliveries(Vec::new(), Some(end)).await?;
            }
            return Ok(false);
        }
        let feed = store.trace_feed(cursor, 200).await?;
        let Some(last) = feed.last().map(|e| e.position) else {
            return Ok(false);
        };
        let mut owed = Vec::new();
        for entry in &feed {
            let Some(kind) = event_type(&entry.trace.action) else {
                continue;
            };
            let targets: Vec<&WebhookEndpoint> = endpoints
                .iter()
                .filter(|e| e.tenant == entry.tenant && e.wants(kind))
                .collect();
            if targets.is_empty() {
                continue;
            }
            let t = &entry.trace;
            let event = json!({
                "id": format!("evt_{}", t.id.trim_start_matches("trace_")),
                "object": "event",
                "type": kind,
                "created_at": t.timestamp,
                "data": resource(&self.sb, entry).await,
            });
            for e in targets {
                let d = Delivery {
                    event: event.clone(),
                    session_id: t.session_id.clone(),
                    status: Status::Pending,
                    attempts: 0,
                    first_attempt_at: None,
                    next_attempt_at: self.sb.now(),
                    last_status: None,
                    last_error: None,
                    delivered_at: None,
                };
                owed.push(d.record(&e.id, entry.position)?);
            }
        }
        store.put_deliveries(owed, Some(last)).await?;
        Ok(feed.len() == 200)
    }

    /// Works through what each endpoint is owed for each session, the sessions at once: the
    /// events of one session go out in order, each after the one before it is done with.
    async fn deliver_due(&self) -> Result<()> {
        let endpoints = list(&self.sb, None).await?;
        // Deliveries come by endpoint, then feed position: each chain is in event order.
        // (endpoint id, session id) -> the owed deliveries.
        let mut chains: BTreeMap<(String, Option<String>), Vec<Owed>> = BTreeMap::new();
        for r in self.sb.store().deliveries(None, true).await? {
            let d: Delivery = decode(&r.body)?;
            chains
                .entry((r.endpoint_id.clone(), d.session_id.clone()))
                .or_default()
                .push((r.endpoint_id, r.position, d));
        }
        let mut sending = tokio::task::JoinSet::new();
        for ((endpoint_id, _), chain) in chains {
            // Deleted since it was listed: its deliveries went with it.
            let Some(endpoint) = endpoints.iter().find(|e| e.id == endpoint_id).cloned() else {
                continue;
            };
            let this = self.clone();
            sending.spawn(async move {
                for (_, position, d) in chain {
                    if d.next_attempt_at > this.sb.now()
                        || !this.attempt(&endpoint, position, d).await?
                    {
                        break;
                    }
                }
                Ok::<_, Error>(())
            });
        }
        while let Some(done) = sending.join_next().await {
            done.map_err(Error::backend)??;
        }
        Ok(())
    }

    /// POSTs the delivery's event, unless the endpoint's address is not allowed.
    async fn send(
        &self,
        endpoint: &WebhookEndpoint,
        d: &Delivery,
        now: DateTime<Utc>,
        body: Vec<u8>,
    ) -> std::result::Result<reqwest::Response, Refused> {
        let url = reqwest::Url::parse(&endpoint.url).map_err(|_| Refused::NotPublic)?;
        self.targets
            .check_literal(&url)
            .map_err(|_| Refused::NotPublic)?;
        self.http
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "statebase-webhooks")
            .header(
                "x-statebase-signature",
                signature(&endpoint.secret, now.timestamp(), &body),
            )
            .header("x-statebase-event-id", d.event["id"].as_str().unwrap_or(""))
            .header(
                "x-statebase-event-type",
                d.event["type"].as_str().unwrap_or(""),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if crate::caused_by::<NotPublic>(&e) {
                    Refused::NotPublic
                } else {
                    Refused::Failed(e)
                }
            })
    }

    /// One attempt, and its outcome recorded; true once the delivery is done with (delivered
    /// or given up), so that the session's next event may go.
    async fn attempt(
        &self,
        endpoint: &WebhookEndpoint,
        position: u64,
        mut d: Delivery,
    ) -> Result<bool> {
        let body = encode(&d.event)?;
        let now = self.sb.now();
        let result = self.send(endpoint, &d, now, body).await;
        d.attempts += 1;
        let first = *d.first_attempt_at.get_or_insert(now);
        let (ok, status, error) = match result {
            Ok(r) if r.status().is_success() => (true, Some(r.status().as_u16()), None),
            Ok(r) => (
                false,
                Some(r.status().as_u16()),
                Some(format!("HTTP {}", r.status())),
            ),
            // Nothing of what (if anything) listens there is reported.
            Err(Refused::NotPublic) => (false, None, Some(NotPublic.to_string())),
            Err(Refused::Failed(e)) => (false, None, Some(with_causes(&e))),
        };
        d.last_status = status;
        d.last_error = error;
        d.status = if ok {
            d.delivered_at = Some(now);
            Status::Delivered
        } else if now - first >= RETRY_WINDOW {
            Status::Failed
        } else {
            let wait = 1i64
                .checked_shl(d.attempts.saturating_sub(1).min(30))
                .unwrap_or(i64::MAX)
                .min(MAX_BACKOFF_SECONDS);
            d.next_attempt_at = now + Duration::seconds(wait);
            Status::Pending
        };
        let record = d.record(&endpoint.id, position)?;
        self.sb.store().put_deliveries(vec![record], None).await?;
        Ok(d.status != Status::Pending)
    }
}

//! Webhook endpoints and their deliveries (an extension: the hosted service configures them in its dashboard).

use super::*;

/// A new webhook endpoint.
#[derive(Deserialize, ToSchema)]
pub struct WebhookBody {
    /// Where events are POSTed: `http` or `https`.
    url: String,
    /// The event types it receives (empty: all).
    #[serde(default)]
    events: Vec<String>,
    /// The HMAC key of the signatures (default a new `whsec_…`).
    secret: Option<String>,
}

/// Send the tenant's events to a URL, signed.
#[utoipa::path(post, path = "/webhooks", request_body = WebhookBody,
    responses((status = 201, body = EndpointOut)))]
pub async fn create_webhook(
    State(app): State<AppState>,
    Tenant(sb): Tenant,
    Body(b): Body<WebhookBody>,
) -> Reply {
    let targets = app.webhook_targets;
    let e =
        crate::webhooks::create(&sb, sb.tenant_id(), &b.url, b.events, b.secret, targets).await?;
    created(EndpointOut::created(&e))
}

/// The tenant's webhook endpoints.
#[utoipa::path(get, path = "/webhooks", responses((status = 200, body = ListOut<EndpointOut>)))]
pub async fn list_webhooks(Tenant(sb): Tenant) -> Reply {
    let all = crate::webhooks::list(&sb, Some(sb.tenant_id())).await?;
    ok(ListOut::all(all.iter().map(EndpointOut::listed).collect()))
}

/// Stop sending events to an endpoint.
#[utoipa::path(delete, path = "/webhooks/{id}", responses((status = 204)))]
pub async fn delete_webhook(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    crate::webhooks::delete(&sb, sb.tenant_id(), &id).await?;
    no_content()
}

/// An endpoint's deliveries: pending, delivered and failed.
#[utoipa::path(get, path = "/webhooks/{id}/deliveries",
    responses((status = 200, body = ListOut<DeliveryOut>)))]
pub async fn webhook_deliveries(Tenant(sb): Tenant, Path(id): Path<String>) -> Reply {
    let all = crate::webhooks::deliveries(&sb, sb.tenant_id(), &id).await?;
    ok(ListOut::all(all.iter().map(DeliveryOut::from).collect()))
}

/// Send a delivery again now.
#[utoipa::path(post, path = "/webhooks/{id}/deliveries/{event_id}/retry",
    responses((status = 200, body = DeliveryOut)))]
pub async fn retry_delivery(
    Tenant(sb): Tenant,
    Path((id, event_id)): Path<(String, String)>,
) -> Reply {
    let d = crate::webhooks::redeliver(&sb, sb.tenant_id(), &id, &event_id).await?;
    ok(DeliveryOut::from(&d))
}

/// These routes, under `/v1`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(delete_webhook))
        .routes(routes!(webhook_deliveries))
        .routes(routes!(retry_delivery))
}

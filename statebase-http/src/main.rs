//! `statebase`: serve the StateBase `/v1` API, and manage its API keys.

use clap::{Parser, Subcommand};
use statebase_core::{StateBase, Store};
use statebase_http::{router, spawn_maintenance, webhooks, AppState};
use std::sync::Arc;

// Many small allocations from many threads: mimalloc serves them with less contention than
// the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "statebase",
    version,
    about = "Durable, versioned state and memory for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API.
    Serve {
        /// `sqlite:PATH`, `sled:DIR` or `memory`.
        #[arg(long, default_value = "sqlite:./statebase.db")]
        db: String,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Keys to provision at start, `[TENANT:]KEY` (tenant `default` when omitted).
        #[arg(long = "api-key", env = "STATEBASE_API_KEYS", value_delimiter = ',')]
        api_keys: Vec<String>,
        /// Requests per minute per key.
        #[arg(long, default_value_t = 100)]
        rate_limit: u32,
        /// The most requests a key may make at once before the per-minute rate applies.
        #[arg(long, default_value_t = 200)]
        burst: u32,
        /// Seconds between two sweeps of expired sessions (and old idempotent responses).
        #[arg(long, default_value_t = 60)]
        sweep_interval: u64,
        /// Milliseconds between two rounds of webhook deliveries.
        #[arg(long, default_value_t = 500)]
        webhook_interval_ms: u64,
    },
    /// Manage webhook endpoints in the database.
    Webhooks {
        /// `sqlite:PATH` or `sled:DIR`.
        #[arg(long, default_value = "sqlite:./statebase.db")]
        db: String,
        #[command(subcommand)]
        action: WebhookAction,
    },
    /// Manage API keys in the database.
    Keys {
        /// `sqlite:PATH` or `sled:DIR`.
        #[arg(long, default_value = "sqlite:./statebase.db")]
        db: String,
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Make a key and print its secret (shown only now).
    Create {
        /// The tenant it reaches.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// A label.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Requests per minute.
        #[arg(long)]
        rate_limit: Option<u32>,
    },
    /// List keys (never their secrets).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key id (`key_…`).
        id: String,
    },
}

#[derive(Subcommand)]
enum WebhookAction {
    /// Add an endpoint and print it with its signing secret.
    Create {
        /// The tenant whose events it receives.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Where events are POSTed.
        #[arg(long)]
        url: String,
        /// Event types, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// The signing secret (default: a new `whsec_…`).
        #[arg(long)]
        secret: Option<String>,
    },
    /// List endpoints.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete an endpoint.
    Delete {
        /// Its tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The endpoint id (`wh_…`).
        id: String,
    },
}

fn open(db: &str) -> Result<Arc<dyn Store>, Box<dyn std::error::Error>> {
    Ok(match db.split_once(':') {
        Some(("sqlite", path)) => Arc::new(statebase_sqlite::SqliteStore::open(path)?),
        Some(("sled", path)) => Arc::new(statebase_sled::SledStore::open(path)?),
        None if db == "memory" => Arc::new(statebase_core::MemoryStore::new()),
        _ => return Err(format!("--db must be sqlite:PATH, sled:DIR or memory, not {db}").into()),
    })
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve {
            db,
            addr,
            api_keys,
            rate_limit,
            burst,
            sweep_interval,
            webhook_interval_ms,
        } => {
            let state = AppState::new(open(&db)?, rate_limit, burst);
            let sb = &state.sb;
            for spec in api_keys {
                let (tenant, secret) = spec.split_once(':').unwrap_or(("default", &spec));
                sb.import_api_key(tenant, "provisioned", secret, None, None)
                    .await?;
            }
            if sb.list_api_keys(None).await?.is_empty() {
                let (key, secret) = sb.create_api_key("default", "dev", None, None).await?;
                println!("No API key in {db}: created one for tenant {}.", key.tenant);
                println!("  X-API-Key: {secret}");
                println!("It is shown only now; `statebase keys create` makes more.");
            }
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            tracing::info!(addr = %listener.local_addr()?, db = %db, "serving the StateBase API");
            let every = std::time::Duration::from_millis(webhook_interval_ms.max(10));
            let dispatcher = webhooks::Dispatcher::new(state.sb.clone()).spawn(every);
            let every = std::time::Duration::from_secs(sweep_interval.max(1));
            let maintenance = spawn_maintenance(&state, every);
            let app = router(state.clone());
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown())
                .await?;
            // What they have not finished stays owed in the store for the next start.
            dispatcher.abort();
            maintenance.abort();
        }
        Command::Webhooks { db, action } => {
            let sb = StateBase::new(open(&db)?);
            match action {
                WebhookAction::Create {
                    tenant,
                    url,
                    events,
                    secret,
                } => {
                    let e = webhooks::create(&sb, &tenant, &url, events, secret).await?;
                    println!("{} {} {} {}", e.id, e.tenant, e.url, e.secret);
                }
                WebhookAction::List { tenant } => {
                    for e in webhooks::list(&sb, tenant.as_deref()).await? {
                        let events = if e.events.is_empty() {
                            "*".to_owned()
                        } else {
                            e.events.join(",")
                        };
                        println!("{} {} {} {events}", e.id, e.tenant, e.url);
                    }
                }
                WebhookAction::Delete { tenant, id } => {
                    webhooks::delete(&sb, &tenant, &id).await?;
                    println!("deleted {id}");
                }
            }
        }
        Command::Keys { db, action } => {
            let sb = StateBase::new(open(&db)?);
            match action {
                KeyAction::Create {
                    tenant,
                    name,
                    rate_limit,
                } => {
                    let (key, secret) = sb.create_api_key(&tenant, &name, rate_limit, None).await?;
                    println!("{} {} {}", key.id, key.tenant, secret);
                }
                KeyAction::List { tenant } => {
                    for k in sb.list_api_keys(tenant.as_deref()).await? {
                        let state = if k.is_active { "active" } else { "revoked" };
                        println!(
                            "{} {} {} {}… {}",
                            k.id, k.tenant, k.name, k.key_prefix, state
                        );
                    }
                }
                KeyAction::Revoke { id } => {
                    let key = sb.revoke_api_key(&id, None).await?;
                    println!("revoked {}", key.id);
                }
            }
        }
    }
    Ok(())
}

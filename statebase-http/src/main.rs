//! `statebase`: serve the StateBase `/v1` API, manage its API keys and webhooks, and move
//! its data between stores.

mod transfer;

use clap::{Parser, Subcommand};
use statebase_core::{
    Calibration, Config, Embedder, HashEmbedder, IdSource, KeyLimits, ServerStore, StateBase,
};
use statebase_http::{
    router, serve, spawn_embedding, spawn_maintenance, webhooks, AppState, Limits, Rate,
    RateLimiter, Targets,
};
use statebase_postgres::PostgresOptions;
use std::sync::Arc;
use std::time::Duration;

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
    /// Log lines as `text` (coloured only on a terminal) or as `json` objects, on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The embedding model of memory search, and how to reach it.
#[derive(clap::Args)]
struct EmbedderArgs {
    /// `builtin`: the static model distilled from all-MiniLM-L6-v2, in process (by
    /// meaning); `hash`: shared words only, no model; `openai:MODEL`: MODEL behind an
    /// OpenAI-compatible `POST /embeddings` at `--embedder-url` (OpenAI, Azure, Ollama,
    /// vLLM, TEI, LM Studio), with the key in `STATEBASE_EMBEDDER_KEY` if it needs one.
    #[arg(long, env = "STATEBASE_EMBEDDER", default_value = "builtin")]
    embedder: String,
    /// The embedding service's base URL, for `openai:` (requests go to `URL/embeddings`).
    #[arg(
        long,
        env = "STATEBASE_EMBEDDER_URL",
        default_value = "https://api.openai.com/v1"
    )]
    embedder_url: String,
    /// Milliseconds one request to the embedding service may take (it is tried twice more
    /// if it times out or fails to connect).
    #[arg(long, default_value_t = 10_000)]
    embedder_timeout_ms: u64,
    /// The most texts in one request to the embedding service.
    #[arg(long, default_value_t = 64)]
    embedder_batch: usize,
    /// The service's vector length (asked of the service at start when not given).
    #[arg(long)]
    embedder_dimensions: Option<usize>,
    /// `T,R`: the service model's cosine that scores 0.7 (the SDKs' default threshold;
    /// about the cosine that 90% of unrelated pairs stay below) and the cosine that scores
    /// 0.9 (a typical relevant pair's). Without it scores are raw cosines.
    #[arg(long, value_parser = parse_calibration)]
    embedder_calibration: Option<Calibration>,
}

fn parse_calibration(s: &str) -> Result<Calibration, String> {
    let pair = s
        .split_once(',')
        .and_then(|(t, r)| Some((t.trim().parse::<f32>().ok()?, r.trim().parse::<f32>().ok()?)));
    match pair {
        Some((t, r)) if (-1.0..1.0).contains(&t) && t < r && r <= 1.0 => Ok(Calibration::new(t, r)),
        _ => Err("expected two cosines T,R with -1 <= T < R <= 1".into()),
    }
}

impl EmbedderArgs {
    async fn embedder(self) -> Result<Arc<dyn Embedder>, Box<dyn std::error::Error>> {
        Ok(match self.embedder.as_str() {
            "builtin" => statebase_embed::StaticEmbedder::builtin(),
            "hash" => Arc::new(HashEmbedder::new()),
            spec => {
                let Some(model) = spec.strip_prefix("openai:").filter(|m| !m.is_empty()) else {
                    return Err(format!(
                        "--embedder {spec}: expected builtin, hash or openai:MODEL"
                    )
                    .into());
                };
                let options = statebase_embed::OpenAiOptions {
                    key: std::env::var("STATEBASE_EMBEDDER_KEY").ok(),
                    batch: self.embedder_batch.max(1),
                    timeout: Duration::from_millis(self.embedder_timeout_ms.max(1)),
                    dimensions: self.embedder_dimensions,
                    calibration: self.embedder_calibration.unwrap_or(Calibration::RAW),
                    ..Default::default()
                };
                let url = &self.embedder_url;
                let embedder = statebase_embed::OpenAiEmbedder::connect(url, model, options)
                    .await
                    .map_err(|e| {
                        format!(
                            "--embedder {spec}: {e} (give --embedder-dimensions to start \
                             while the service is unreachable)"
                        )
                    })?;
                tracing::info!(
                    model,
                    url,
                    dimensions = embedder.dimensions(),
                    "embedding service"
                );
                Arc::new(embedder)
            }
        })
    }
}

/// Logs to stderr (stdout carries what commands print), filtered by `RUST_LOG`.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API.
    Serve {
        /// `sqlite:PATH`, `sled:DIR`, `postgres://USER@HOST:PORT/DB` (any number of servers
        /// may share one) or `memory`.
        #[arg(long, default_value = "sqlite:./statebase.db")]
        db: String,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Keys to provision at start, `[TENANT:]KEY` (tenant `default` when omitted).
        #[arg(long = "api-key", env = "STATEBASE_API_KEYS", value_delimiter = ',')]
        api_keys: Vec<String>,
        #[command(flatten)]
        embedder: EmbedderArgs,
        /// Requests per minute per key.
        #[arg(long, default_value_t = 100)]
        rate_limit: u32,
        /// The most requests a key may make at once before the per-minute rate applies.
        #[arg(long, default_value_t = 200)]
        burst: u32,
        /// Requests per minute of all of a tenant's keys together.
        #[arg(long, default_value_t = 1000)]
        tenant_rate_limit: u32,
        /// The most requests all of a tenant's keys may make at once.
        #[arg(long, default_value_t = 2000)]
        tenant_burst: u32,
        /// Wrong keys a client address may send a minute (and at once) before the keys it
        /// sends are no longer looked up (429), but for keys seen to work.
        #[arg(long, default_value_t = statebase_http::AUTH_FAILURES.per_minute)]
        auth_failures_per_minute: u32,
        /// Seconds between two sweeps: of expired sessions, by retention policies, and of old
        /// idempotent responses.
        #[arg(long, default_value_t = 60)]
        sweep_interval: u64,
        /// Milliseconds between two rounds of webhook deliveries.
        #[arg(long, default_value_t = 500)]
        webhook_interval_ms: u64,
        /// Let webhooks reach loopback, private and other internal addresses (for
        /// development and tests; never on a server others can reach).
        #[arg(long)]
        allow_private_webhooks: bool,
        /// Keep webhook endpoints and the deliveries owed to them, but send nothing (for
        /// test runs that must not reach out).
        #[arg(long)]
        no_webhook_delivery: bool,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        postgres: PostgresArgs,
    },
    /// Manage webhook endpoints in the database.
    Webhooks {
        /// `sqlite:PATH`, `sled:DIR` or `postgres://USER@HOST:PORT/DB`.
        #[arg(long, default_value = "sqlite:./statebase.db")]
        db: String,
        /// Accept endpoints at loopback, private and other internal addresses (a server
        /// delivers to them only with `serve --allow-private-webhooks`).
        #[arg(long)]
        allow_private: bool,
        #[command(subcommand)]
        action: WebhookAction,
    },
    /// Manage API keys in the database.
    Keys {
        /// `sqlite:PATH`, `sled:DIR` or `postgres://USER@HOST:PORT/DB`.
        #[arg(long, default_value = "sqlite:./statebase.db")]
        db: String,
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Write every record of the database, or of one tenant, as an archive (JSON lines of
    /// format 1, with a checksum).
    Export {
        /// `sqlite:PATH`, `sled:DIR` or `postgres://USER@HOST:PORT/DB`.
        #[arg(long, default_value = "sqlite:./statebase.db")]
        db: String,
        #[command(flatten)]
        what: ExportArgs,
        /// The archive to write (default: stdout).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// Restore an archive: each session whole, what the database has already left as it
    /// is (importing twice changes nothing). The file is verified whole first.
    Import {
        /// `sqlite:PATH`, `sled:DIR` or `postgres://USER@HOST:PORT/DB`.
        #[arg(long, default_value = "sqlite:./statebase.db")]
        db: String,
        /// The archive.
        file: std::path::PathBuf,
    },
    /// Copy every record (or one tenant's) from one database to another: an export piped
    /// into an import.
    Migrate {
        /// The database to read.
        #[arg(long)]
        from: String,
        /// The database to write.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        what: ExportArgs,
    },
}

/// What an export holds.
#[derive(clap::Args)]
struct ExportArgs {
    /// Only this tenant's records (default: every tenant's).
    #[arg(long)]
    tenant: Option<String>,
    /// Memories' vectors too (without them, a server re-embeds the memories it imported).
    #[arg(long)]
    with_vectors: bool,
}

impl ExportArgs {
    fn options(self) -> statebase_core::archive::ExportOptions {
        statebase_core::archive::ExportOptions {
            tenant: self.tenant,
            with_vectors: self.with_vectors,
        }
    }
}

/// How long clients may take, and how many may be connected at once.
#[derive(clap::Args)]
struct LimitArgs {
    /// Seconds a connection has to send a whole request head before it is closed.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a request has to send its whole body before it is answered 408.
    #[arg(long, default_value_t = 30.0)]
    body_timeout: f64,
    /// Seconds the server may take over a request before it answers 503.
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Seconds a keep-alive connection may wait between requests before it is closed.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout: f64,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
}

/// `s` seconds, if that is a positive duration; else what is wrong with `--{flag}`.
fn seconds(flag: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--{flag} must be a positive number of seconds, not {s}"))
}

/// How a server uses a PostgreSQL database (`--db postgres://…`).
#[derive(clap::Args)]
struct PostgresArgs {
    /// Connections to PostgreSQL this server keeps open at most.
    #[arg(long, default_value_t = PostgresOptions::default().pool_size)]
    pg_pool_size: usize,
    /// Seconds a request waits for a connection (or for PostgreSQL to answer a new one)
    /// before it is answered 503.
    #[arg(long, default_value_t = PostgresOptions::default().wait_timeout.as_secs_f64())]
    pg_wait_timeout: f64,
    /// Seconds any statement may run before PostgreSQL cancels it.
    #[arg(long, default_value_t = PostgresOptions::default().statement_timeout.as_secs_f64())]
    pg_statement_timeout: f64,
}

impl PostgresArgs {
    fn options(&self) -> Result<PostgresOptions, String> {
        Ok(PostgresOptions {
            pool_size: self.pg_pool_size.max(1),
            wait_timeout: seconds("pg-wait-timeout", self.pg_wait_timeout)?,
            statement_timeout: seconds("pg-statement-timeout", self.pg_statement_timeout)?,
        })
    }
}

impl LimitArgs {
    fn limits(&self) -> Result<Limits, String> {
        Ok(Limits {
            header_timeout: seconds("header-timeout", self.header_timeout)?,
            body_timeout: seconds("body-timeout", self.body_timeout)?,
            request_timeout: seconds("request-timeout", self.request_timeout)?,
            idle_timeout: seconds("idle-timeout", self.idle_timeout)?,
            max_connections: self.max_connections.max(1),
        })
    }
}

/// Lets the server hold as many sockets as the hard limit allows: the soft limit is often
/// 1,024, fewer than `--max-connections`.
fn raise_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open file limit");
        }
    }
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
        /// Requests per minute (default: the server's `--rate-limit`).
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Requests at once before the per-minute rate applies (default: the server's
        /// `--burst`).
        #[arg(long)]
        burst: Option<u32>,
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

async fn open(
    db: &str,
    options: PostgresOptions,
) -> Result<Arc<dyn ServerStore>, Box<dyn std::error::Error>> {
    Ok(match db.split_once(':') {
        Some(("sqlite", path)) => Arc::new(statebase_sqlite::SqliteStore::open(path)?),
        Some(("sled", path)) => Arc::new(statebase_sled::SledStore::open(path)?),
        Some(("postgres" | "postgresql", _)) => {
            Arc::new(statebase_postgres::PostgresStore::connect(db, options).await?)
        }
        None if db == "memory" => Arc::new(statebase_core::MemoryStore::new()),
        _ => {
            let expected = "sqlite:PATH, sled:DIR, postgres://USER@HOST:PORT/DB or memory";
            return Err(format!("--db must be {expected}, not {db}").into());
        }
    })
}

/// Creates a key for the tenant `default` and prints it if `sb` has no key. Servers that
/// start together on one database take turns (a lease), so that they make one.
async fn create_dev_key(
    sb: &StateBase<Arc<dyn ServerStore>>,
    db: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let holder = statebase_core::RandomIds.new_id("server_");
    let store = sb.store();
    while !store
        .take_lease("dev-key", &holder, Duration::from_secs(30))
        .await?
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if sb.list_api_keys(None).await?.is_empty() {
        let (key, secret) = sb
            .create_api_key("default", "dev", KeyLimits::default(), None)
            .await?;
        println!("No API key in {db}: created one for tenant {}.", key.tenant);
        println!("  X-API-Key: {secret}");
        println!("It is shown only now; `statebase keys create` makes more.");
    }
    Ok(store.release_lease("dev-key", &holder).await?)
}

fn webhook_targets(allow_private: bool) -> Targets {
    if allow_private {
        Targets::Any
    } else {
        Targets::Public
    }
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
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Serve {
            db,
            addr,
            api_keys,
            rate_limit,
            burst,
            tenant_rate_limit,
            tenant_burst,
            auth_failures_per_minute,
            sweep_interval,
            webhook_interval_ms,
            allow_private_webhooks,
            no_webhook_delivery,
            limits,
            postgres,
            embedder,
        } => {
            let limits = limits.limits()?;
            let targets = webhook_targets(allow_private_webhooks);
            raise_file_limit();
            let limiter = RateLimiter::new(Rate::new(rate_limit, burst))
                .with_tenant_budget(Rate::new(tenant_rate_limit, tenant_burst))
                .with_auth_failures(Rate::new(
                    auth_failures_per_minute,
                    auth_failures_per_minute,
                ));
            let config = Config {
                embedder: embedder.embedder().await?,
                ..Config::default()
            };
            let store = open(&db, postgres.options()?).await?;
            let state = AppState::with_config(store, limiter, targets, config);
            let sb = &state.sb;
            for spec in api_keys {
                let (tenant, secret) = spec.split_once(':').unwrap_or(("default", &spec));
                sb.import_api_key(tenant, "provisioned", secret, KeyLimits::default(), None)
                    .await?;
            }
            create_dev_key(sb, &db).await?;
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            tracing::info!(addr = %listener.local_addr()?, db = %db, "serving the StateBase API");
            let every = Duration::from_millis(webhook_interval_ms.max(10));
            let dispatcher = (!no_webhook_delivery)
                .then(|| webhooks::Dispatcher::new(state.sb.clone(), targets).spawn(every));
            let every = Duration::from_secs(sweep_interval.max(1));
            let maintenance = spawn_maintenance(&state, every);
            let embedding = spawn_embedding(&state);
            let app = router(state.clone());
            serve(listener, app, limits, shutdown()).await?;
            // What they have not finished stays owed in the store for the next start.
            if let Some(dispatcher) = dispatcher {
                dispatcher.abort();
            }
            maintenance.abort();
            embedding.abort();
        }
        Command::Webhooks {
            db,
            allow_private,
            action,
        } => {
            let sb = StateBase::new(open(&db, PostgresOptions::default()).await?);
            match action {
                WebhookAction::Create {
                    tenant,
                    url,
                    events,
                    secret,
                } => {
                    let targets = webhook_targets(allow_private);
                    let e = webhooks::create(&sb, &tenant, &url, events, secret, targets).await?;
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
            let sb = StateBase::new(open(&db, PostgresOptions::default()).await?);
            match action {
                KeyAction::Create {
                    tenant,
                    name,
                    rate_limit,
                    burst,
                } => {
                    let limits = KeyLimits { rate_limit, burst };
                    let (key, secret) = sb.create_api_key(&tenant, &name, limits, None).await?;
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
        Command::Export { db, what, output } => {
            let store = open(&db, PostgresOptions::default()).await?;
            transfer::export(&*store, &what.options(), output.as_deref()).await?;
        }
        Command::Import { db, file } => {
            let store = open(&db, PostgresOptions::default()).await?;
            transfer::print_report(&transfer::import(&*store, &file).await?);
        }
        Command::Migrate { from, to, what } => {
            let source = open(&from, PostgresOptions::default()).await?;
            let target = open(&to, PostgresOptions::default()).await?;
            let report = transfer::migrate(&*source, &*target, &what.options()).await?;
            transfer::print_report(&report);
        }
    }
    Ok(())
}

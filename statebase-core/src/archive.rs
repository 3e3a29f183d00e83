//! Export and import: every record of a store, or of one tenant, as a stream of JSON lines
//! that any backend restores exactly.
//!
//! # Format 2
//!
//! One JSON object a line, each with a `kind`:
//! - `header`, first: `format` (`statebase-export`), `format_version` (2), `created_at`,
//!   `tenant` (the one exported, or `null` for all) and `with_vectors`;
//! - `session` (the session as stored, with its `revision`), then that session's records:
//!   each `version` (the whole state, as `GET …/history` shows it), each `turn`, each
//!   `memory` (with its `revisions`, its `dedupe_key` and, with vectors, its `embedding`)
//!   and each `entity` (with its `versions`);
//! - `memory` lines of user-level memories (no session);
//! - `trace` lines: the audit trail, deleted sessions' included;
//! - `retention` lines, after each tenant's traces: its retention policies (`tenant`,
//!   `session_id` or `null` for the tenant's own, then its sessions' by id; `retention`);
//! - `api_key` (hashes only: a secret is never stored) and `webhook` lines;
//! - `trailer`, last: the `counts` of every kind and the `sha256` (hex) of every byte
//!   before the trailer line.
//!
//! A session pruned by retention starts at a snapshot version, and its turns at the oldest
//! kept one. Format 1 is format 2 without retention lines; this statebase reads both.
//!
//! Every record but keys and webhooks carries its `tenant`. Memory is bounded by the
//! biggest session (an import writes a session whole), never by the store.

use crate::clock::Timestamp;
use crate::codec::{self, VersionBody, SNAPSHOT_EVERY};
use crate::error::{Error, Result};
use crate::json::Object;
use crate::model::{
    ApiKey, Entity, EntityVersion, Memory, MemoryRevision, Retention, Session, StateVersion, Trace,
    Turn, WebhookEndpoint,
};
use crate::store::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// The `format` of the header line.
pub const FORMAT: &str = "statebase-export";
/// The format version this statebase writes; it reads this one and every earlier one.
pub const FORMAT_VERSION: u32 = 2;

/// Records read from a store or a stream at a time.
const PAGE: usize = 500;
/// Versions read at a time: whole snapshot chains, so that each page decodes alone.
const VERSION_PAGE: u64 = SNAPSHOT_EVERY * 64;

/// What an export holds.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// One tenant's records, or (`None`) every tenant's.
    pub tenant: Option<String>,
    /// Memories' vectors too (else an import leaves them to be embedded again).
    pub with_vectors: bool,
}

/// How many records of each kind an archive holds, or an import wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Sessions.
    pub sessions: u64,
    /// State versions.
    pub versions: u64,
    /// Turns.
    pub turns: u64,
    /// Memories (of sessions and user-level).
    pub memories: u64,
    /// Entities.
    pub entities: u64,
    /// Audit traces.
    pub traces: u64,
    /// API keys.
    pub api_keys: u64,
    /// Webhook endpoints.
    pub webhooks: u64,
    /// Retention policies (none in format 1).
    #[serde(default)]
    pub retention_policies: u64,
}

impl Counts {
    /// Every record counted.
    pub fn total(&self) -> u64 {
        self.sessions
            + self.versions
            + self.turns
            + self.memories
            + self.entities
            + self.traces
            + self.api_keys
            + self.webhooks
            + self.retention_policies
    }

    /// A session with what it owns.
    fn of_session(archive: &SessionArchive) -> Self {
        Self {
            sessions: 1,
            versions: archive.versions.len() as u64,
            turns: archive.turns.len() as u64,
            memories: archive.memories.len() as u64,
            entities: archive.entities.len() as u64,
            ..Self::default()
        }
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.sessions += other.sessions;
        self.versions += other.versions;
        self.turns += other.turns;
        self.memories += other.memories;
        self.entities += other.entities;
        self.traces += other.traces;
        self.api_keys += other.api_keys;
        self.webhooks += other.webhooks;
        self.retention_policies += other.retention_policies;
    }
}

/// "3 sessions, 41 versions, …": every kind, for logs and reports.
impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sessions, {} versions, {} turns, {} memories, {} entities, {} traces, \
             {} API keys, {} webhooks, {} retention policies",
            self.sessions,
            self.versions,
            self.turns,
            self.memories,
            self.entities,
            self.traces,
            self.api_keys,
            self.webhooks,
            self.retention_policies
        )
    }
}

/// The header line's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this statebase.
    pub format_version: u32,
    /// When the export began.
    pub created_at: Timestamp,
    /// The tenant exported, or `None` for all.
    pub tenant: Option<String>,
    /// Whether memories carry their vectors.
    pub with_vectors: bool,
}

/// One line of an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Header(Header),
    Session {
        tenant: String,
        session: Session,
        revision: u64,
    },
    Version {
        tenant: String,
        version: StateVersion,
    },
    Turn {
        tenant: String,
        turn: Turn,
    },
    Memory {
        tenant: String,
        memory: Memory,
        dedupe_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        embedding: Option<Vec<f32>>,
        revisions: Vec<MemoryRevision>,
    },
    Entity {
        tenant: String,
        entity: Entity,
        versions: Vec<EntityVersion>,
    },
    Trace {
        tenant: String,
        trace: Trace,
    },
    ApiKey {
        key: ApiKey,
    },
    Webhook {
        endpoint: WebhookEndpoint,
    },
    Retention {
        tenant: String,
        session_id: Option<String>,
        retention: Retention,
    },
    Trailer {
        counts: Counts,
        sha256: String,
    },
}

/// Writes lines, hashing every byte.
struct LineWriter<'a, W: ?Sized> {
    out: &'a mut W,
    hash: Sha256,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin + ?Sized> LineWriter<'_, W> {
    async fn write(&mut self, line: &Line) -> Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, line).map_err(Error::backend)?;
        self.buf.push(b'\n');
        self.hash.update(&self.buf);
        self.out.write_all(&self.buf).await.map_err(Error::backend)
    }
}

/// Writes every record `options` asks for to `out` in [format 2](self), calling `progress`
/// with what is written so far after each session and each page of other records; returns
/// the counts in the trailer. A write that commits meanwhile may or may not be in it.
pub async fn export<S, W>(
    store: &S,
    options: &ExportOptions,
    now: Timestamp,
    out: &mut W,
    progress: &mut (dyn FnMut(&Counts) + Send),
) -> Result<Counts>
where
    S: ServerStore + ?Sized,
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let mut w = LineWriter {
        out,
        hash: Sha256::new(),
        buf: Vec::new(),
    };
    w.write(&Line::Header(Header {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        created_at: now,
        tenant: options.tenant.clone(),
        with_vectors: options.with_vectors,
    }))
    .await?;
    let tenants = match &options.tenant {
        Some(t) => vec![t.clone()],
        None => store.tenants().await?,
    };
    let mut counts = Counts::default();
    for tenant in &tenants {
        export_tenant(store, tenant, options, &mut w, &mut counts, progress).await?;
    }
    for key in store.list_api_keys(options.tenant.as_deref()).await? {
        w.write(&Line::ApiKey { key }).await?;
        counts.api_keys += 1;
    }
    for endpoint in store.list_webhooks(options.tenant.as_deref()).await? {
        w.write(&Line::Webhook { endpoint }).await?;
        counts.webhooks += 1;
    }
    progress(&counts);
    let sha256 = hex(&std::mem::take(&mut w.hash).finalize());
    w.write(&Line::Trailer { counts, sha256 }).await?;
    w.out.flush().await.map_err(Error::backend)?;
    Ok(counts)
}

/// The tenant's policies: its own, then its sessions' by id (the order every store keeps
/// within a tenant).
async fn export_policies<S, W>(
    store: &S,
    tenant: &str,
    w: &mut LineWriter<'_, W>,
    counts: &mut Counts,
) -> Result<()>
where
    S: ServerStore + ?Sized,
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    if let Some(retention) = store.retention(tenant, None).await? {
        let tenant = tenant.to_owned();
        w.write(&Line::Retention {
            tenant,
            session_id: None,
            retention,
        })
        .await?;
        counts.retention_policies += 1;
    }
    let mut after = String::new();
    loop {
        let (mine, more) = crate::retention::session_policies(store, tenant, &after).await?;
        for p in mine {
            after = p.session_id.clone().unwrap_or_default();
            w.write(&Line::Retention {
                tenant: p.tenant,
                session_id: p.session_id,
                retention: p.retention,
            })
            .await?;
            counts.retention_policies += 1;
        }
        if !more {
            return Ok(());
        }
    }
}

async fn export_tenant<S, W>(
    store: &S,
    tenant: &str,
    options: &ExportOptions,
    w: &mut LineWriter<'_, W>,
    counts: &mut Counts,
    progress: &mut (dyn FnMut(&Counts) + Send),
) -> Result<()>
where
    S: ServerStore + ?Sized,
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let mut query = SessionQuery {
        limit: PAGE,
        ..Default::default()
    };
    loop {
        let page = store.list_sessions(tenant, &query).await?;
        for record in &page {
            export_session(store, tenant, record, options, w, counts).await?;
            progress(counts);
        }
        match page.last() {
            Some(last) if page.len() == PAGE => query.after = Some(Cursor::from(&last.session)),
            _ => break,
        }
    }
    let user_level = MemoryQuery {
        user_level_only: true,
        ..Default::default()
    };
    export_memories(store, tenant, user_level, options, w, counts).await?;
    progress(counts);
    let mut traces = TraceQuery {
        limit: PAGE,
        ..Default::default()
    };
    loop {
        let page = store.list_traces(tenant, &traces).await?;
        counts.traces += page.len() as u64;
        let next = match page.last() {
            Some(last) if page.len() == PAGE => Some(Cursor {
                at: last.timestamp,
                id: last.id.clone(),
            }),
            _ => None,
        };
        for trace in page {
            let tenant = tenant.to_owned();
            w.write(&Line::Trace { tenant, trace }).await?;
        }
        progress(counts);
        match next {
            Some(c) => traces.after = Some(c),
            None => break,
        }
    }
    export_policies(store, tenant, w, counts).await
}

async fn export_session<S, W>(
    store: &S,
    tenant: &str,
    record: &SessionRecord,
    options: &ExportOptions,
    w: &mut LineWriter<'_, W>,
    counts: &mut Counts,
) -> Result<()>
where
    S: ServerStore + ?Sized,
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let id = &record.session.id;
    w.write(&Line::Session {
        tenant: tenant.to_owned(),
        session: record.session.clone(),
        revision: record.revision,
    })
    .await?;
    counts.sessions += 1;
    // Pages start at snapshots, so each decodes alone. Versions and turns written after
    // the session was read are left out, so that what is exported of it stays whole.
    let end = record.session.version + 1;
    let mut start = 0;
    while start < end {
        let page_end = (start + VERSION_PAGE).min(end);
        let records = store.versions(tenant, id, start..page_end).await?;
        let bodies: Vec<&[u8]> = records.iter().map(|r| &r.body[..]).collect();
        let decoded = codec::decode_run(&bodies, 0)?;
        for (r, body) in records.iter().zip(decoded) {
            let version = body.into_version(id, r);
            let tenant = tenant.to_owned();
            w.write(&Line::Version { tenant, version }).await?;
            counts.versions += 1;
        }
        start = page_end;
    }
    let mut turns = TurnQuery {
        limit: PAGE,
        ..Default::default()
    };
    loop {
        let page = store.list_turns(tenant, id, &turns).await?;
        let next = page.last().map(|t| t.turn_number);
        let full = page.len() == PAGE;
        let wanted = |t: &Turn| t.turn_number <= record.session.turn_count;
        for turn in page.into_iter().take_while(wanted) {
            let tenant = tenant.to_owned();
            w.write(&Line::Turn { tenant, turn }).await?;
            counts.turns += 1;
        }
        match next {
            Some(n) if full => turns.after_turn_number = Some(n),
            _ => break,
        }
    }
    let of_session = MemoryQuery {
        session_id: Some(id.clone()),
        ..Default::default()
    };
    export_memories(store, tenant, of_session, options, w, counts).await?;
    let mut entities = EntityQuery {
        limit: PAGE,
        session_id: Some(id.clone()),
        ..Default::default()
    };
    loop {
        let page = store.list_entities(tenant, &entities).await?;
        let next = page.last().map(|e| Cursor {
            at: e.created_at,
            id: e.id.clone(),
        });
        let full = page.len() == PAGE;
        for entity in page {
            let versions = store
                .entity_versions(tenant, &entity.id, 0..u64::MAX)
                .await?;
            let tenant = tenant.to_owned();
            w.write(&Line::Entity {
                tenant,
                entity,
                versions,
            })
            .await?;
            counts.entities += 1;
        }
        match next {
            Some(c) if full => entities.after = Some(c),
            _ => break,
        }
    }
    Ok(())
}

/// Writes the memories `query` finds, a page at a time.
async fn export_memories<S, W>(
    store: &S,
    tenant: &str,
    mut query: MemoryQuery,
    options: &ExportOptions,
    w: &mut LineWriter<'_, W>,
    counts: &mut Counts,
) -> Result<()>
where
    S: ServerStore + ?Sized,
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    query.limit = PAGE;
    loop {
        let page = store.list_memories(tenant, &query).await?;
        for record in &page {
            export_memory(store, tenant, record, options, w).await?;
            counts.memories += 1;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => {
                query.after = Some(Cursor {
                    at: last.memory.created_at,
                    id: last.memory.id.clone(),
                })
            }
            _ => return Ok(()),
        }
    }
}

async fn export_memory<S, W>(
    store: &S,
    tenant: &str,
    record: &MemoryRecord,
    options: &ExportOptions,
    w: &mut LineWriter<'_, W>,
) -> Result<()>
where
    S: ServerStore + ?Sized,
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let revisions = store.memory_revisions(tenant, &record.memory.id).await?;
    w.write(&Line::Memory {
        tenant: tenant.to_owned(),
        memory: record.memory.clone(),
        dedupe_key: record.dedupe_key.clone(),
        embedding: record.embedding.clone().filter(|_| options.with_vectors),
        revisions,
    })
    .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What an import did: records written, and records already there (left as they were).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Records the archive holds, from its trailer.
    pub read: Counts,
    /// Records written.
    pub imported: Counts,
    /// Records the store had already (sessions and memories by id, with all they own;
    /// traces by id), not written again.
    pub skipped: Counts,
}

/// Reads an archive's lines, checking its header first and its checksum and counts last.
struct LineReader<R> {
    input: R,
    hash: Sha256,
    buf: String,
    number: u64,
    read: Counts,
    header: Option<Header>,
    trailer: Option<Counts>,
}

fn bad(line: u64, message: impl std::fmt::Display) -> Error {
    Error::invalid("archive", format!("line {line}: {message}"))
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// Reads the next line into `buf`; an error at the end of the input.
    async fn read_line(&mut self) -> Result<()> {
        self.buf.clear();
        self.number += 1;
        let n = self
            .input
            .read_line(&mut self.buf)
            .await
            .map_err(|e| bad(self.number, e))?;
        if n == 0 {
            return Err(bad(self.number, "the archive ends without its trailer"));
        }
        Ok(())
    }

    fn new(input: R) -> Self {
        Self {
            input,
            hash: Sha256::new(),
            buf: String::new(),
            number: 0,
            read: Counts::default(),
            header: None,
            trailer: None,
        }
    }

    /// The next record line, or `None` after a trailer that matches what was read.
    async fn next(&mut self) -> Result<Option<Line>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        self.read_line().await?;
        if self.header.is_none() {
            self.hash.update(self.buf.as_bytes());
            let number = self.number;
            self.header = Some(parse_header(&self.buf).map_err(|m| bad(number, m))?);
            self.read_line().await?;
        }
        let number = self.number;
        let line: Line = serde_json::from_str(&self.buf).map_err(|e| bad(number, e))?;
        match line {
            Line::Header(_) => Err(bad(number, "a second header")),
            Line::Trailer { counts, sha256 } => {
                let actual = hex(&std::mem::take(&mut self.hash).finalize());
                if actual != sha256 {
                    return Err(bad(
                        number,
                        format!("checksum mismatch: the trailer says {sha256}, the lines hash to {actual}: the archive is damaged"),
                    ));
                }
                if counts != self.read {
                    return Err(bad(
                        number,
                        format!(
                            "the trailer counts {counts:?}, the archive holds {:?}",
                            self.read
                        ),
                    ));
                }
                self.trailer = Some(counts);
                Ok(None)
            }
            line => {
                self.hash.update(self.buf.as_bytes());
                let r = &mut self.read;
                match &line {
                    Line::Session { .. } => r.sessions += 1,
                    Line::Version { .. } => r.versions += 1,
                    Line::Turn { .. } => r.turns += 1,
                    Line::Memory { .. } => r.memories += 1,
                    Line::Entity { .. } => r.entities += 1,
                    Line::Trace { .. } => r.traces += 1,
                    Line::ApiKey { .. } => r.api_keys += 1,
                    Line::Webhook { .. } => r.webhooks += 1,
                    Line::Retention { .. } => r.retention_policies += 1,
                    Line::Header(_) | Line::Trailer { .. } => {}
                }
                Ok(Some(line))
            }
        }
    }
}

/// The header, if `line` is one of a format this statebase reads.
fn parse_header(line: &str) -> std::result::Result<Header, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a statebase export: {e}"))?;
    if value["kind"] != "header" || value["format"] != FORMAT {
        return Err("not a statebase export: no header line".into());
    }
    let version = &value["format_version"];
    if !version
        .as_u64()
        .is_some_and(|v| (1..=u64::from(FORMAT_VERSION)).contains(&v))
    {
        return Err(format!(
            "format version {version}, but this statebase reads versions 1 to {FORMAT_VERSION}"
        ));
    }
    match serde_json::from_value(value) {
        Ok(Line::Header(h)) => Ok(h),
        Ok(_) => Err("not a header".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads a whole archive without writing anything: its header, then every line, then its
/// checksum and counts. Returns the header and the counts. An import of a file should
/// verify it first, as an import writes what it has read before it reaches the trailer.
pub async fn verify<R: AsyncBufRead + Unpin>(input: R) -> Result<(Header, Counts)> {
    let mut reader = LineReader::new(input);
    while reader.next().await?.is_some() {}
    let header = reader.header.take().unwrap_or_else(|| unreachable!());
    Ok((header, reader.read))
}

/// A session being read: its record and what followed it.
struct Pending {
    tenant: String,
    archive: SessionArchive,
    /// The state of the last version read, which the next version's delta is made from.
    previous: Option<Object>,
    line: u64,
}

/// Restores an archive into `store`: each session whole (or not at all) unless the store
/// has one of its id, each user-level memory unless it has one of its id, traces it lacks,
/// and every key and webhook endpoint (replaced by id). Importing twice writes nothing the
/// second time; each retention policy unless the store has one there. `InvalidInput`
/// (code `invalid_input`, param `archive`) for a line that is not of [format 2](self), a session's records out of place, or a checksum or count that
/// does not match; what was imported before such a line stays.
pub async fn import<S, R>(
    store: &S,
    input: R,
    progress: &mut (dyn FnMut(&ImportReport) + Send),
) -> Result<ImportReport>
where
    S: ServerStore + ?Sized,
    R: AsyncBufRead + Unpin + Send,
{
    let mut reader = LineReader::new(input);
    let mut report = ImportReport::default();
    let mut pending: Option<Pending> = None;
    let mut traces: Vec<(String, Trace)> = Vec::new();
    while let Some(line) = reader.next().await? {
        let number = reader.number;
        // A session's records follow its line; anything else ends it.
        let owned = matches!(
            &line,
            Line::Version { .. } | Line::Turn { .. } | Line::Entity { .. }
        ) || matches!(&line, Line::Memory { memory, .. } if memory.session_id.is_some());
        if !owned {
            if let Some(p) = pending.take() {
                write_session(store, p, &mut report).await?;
                progress(&report);
            }
        }
        match line {
            Line::Header(_) | Line::Trailer { .. } => unreachable!("the reader takes these"),
            Line::Session {
                tenant,
                session,
                revision,
            } => {
                pending = Some(Pending {
                    tenant,
                    archive: SessionArchive {
                        record: SessionRecord { session, revision },
                        versions: Vec::new(),
                        turns: Vec::new(),
                        memories: Vec::new(),
                        entities: Vec::new(),
                    },
                    previous: None,
                    line: number,
                })
            }
            Line::Version { tenant, version } => {
                let p = owner(
                    &mut pending,
                    &tenant,
                    &version.session_id,
                    number,
                    "version",
                )?;
                // A session pruned by retention starts at a snapshot; then they follow.
                let expected = match p.archive.versions.first() {
                    Some(first) => first.version + p.archive.versions.len() as u64,
                    None if codec::chain_start(version.version) == version.version => {
                        version.version
                    }
                    None => 0,
                };
                if version.version != expected {
                    return Err(bad(
                        number,
                        format!("version {} where {expected} was due", version.version),
                    ));
                }
                let body = VersionBody {
                    state: version.state,
                    reasoning: version.reasoning,
                    actor: version.updated_by,
                    change: version.change,
                };
                let encoded = codec::encode(version.version, p.previous.as_ref(), &body)?;
                p.archive.versions.push(VersionRecord {
                    version: version.version,
                    created_at: version.created_at,
                    body: encoded,
                });
                p.previous = Some(body.state);
            }
            Line::Turn { tenant, turn } => {
                let p = owner(&mut pending, &tenant, &turn.session_id, number, "turn")?;
                // A session's turns pruned by retention start later; then they follow.
                let expected = match p.archive.turns.first() {
                    Some(first) => first.turn_number + p.archive.turns.len() as u64,
                    None => turn.turn_number.max(1),
                };
                if turn.turn_number != expected {
                    return Err(bad(
                        number,
                        format!("turn {} where {expected} was due", turn.turn_number),
                    ));
                }
                p.archive.turns.push(turn);
            }
            Line::Memory {
                tenant,
                memory,
                dedupe_key,
                embedding,
                revisions,
            } => {
                let archive = MemoryArchive {
                    record: MemoryRecord {
                        memory,
                        embedding,
                        dedupe_key,
                    },
                    revisions,
                };
                match archive.record.memory.session_id.clone() {
                    Some(sid) => {
                        owner(&mut pending, &tenant, &sid, number, "memory")?
                            .archive
                            .memories
                            .push(archive);
                    }
                    None => {
                        let written = store.import_memory(&tenant, archive).await?;
                        let counts = if written {
                            &mut report.imported
                        } else {
                            &mut report.skipped
                        };
                        counts.memories += 1;
                    }
                }
            }
            Line::Entity {
                tenant,
                entity,
                versions,
            } => {
                let sid = entity.session_id.clone();
                owner(&mut pending, &tenant, &sid, number, "entity")?
                    .archive
                    .entities
                    .push(EntityArchive { entity, versions });
            }
            Line::Trace { tenant, trace } => {
                traces.push((tenant, trace));
                if traces.len() >= PAGE {
                    write_traces(store, &mut traces, &mut report).await?;
                    progress(&report);
                }
            }
            Line::ApiKey { key } => {
                store.put_api_key(key).await?;
                report.imported.api_keys += 1;
            }
            Line::Webhook { endpoint } => {
                store.put_webhook(endpoint).await?;
                report.imported.webhooks += 1;
            }
            Line::Retention {
                tenant,
                session_id,
                retention,
            } => {
                let written =
                    import_policy(store, &tenant, session_id.as_deref(), retention).await?;
                let counts = if written {
                    &mut report.imported
                } else {
                    &mut report.skipped
                };
                counts.retention_policies += 1;
            }
        }
    }
    if let Some(p) = pending.take() {
        write_session(store, p, &mut report).await?;
    }
    write_traces(store, &mut traces, &mut report).await?;
    report.read = reader.read;
    progress(&report);
    Ok(report)
}

/// Sets the policy unless the store has one there already, or lacks its session.
async fn import_policy<S: ServerStore + ?Sized>(
    store: &S,
    tenant: &str,
    session_id: Option<&str>,
    retention: Retention,
) -> Result<bool> {
    if store.retention(tenant, session_id).await?.is_some() {
        return Ok(false);
    }
    match store
        .put_retention(tenant, session_id, Some(retention), None)
        .await
    {
        Ok(()) => Ok(true),
        Err(Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The session being read, if `session_id` of `tenant` is it; else an error for the `what`
/// on line `number`.
fn owner<'a>(
    pending: &'a mut Option<Pending>,
    tenant: &str,
    session_id: &str,
    number: u64,
    what: &str,
) -> Result<&'a mut Pending> {
    match pending {
        Some(p) if p.tenant == tenant && p.archive.record.session.id == session_id => Ok(p),
        _ => Err(bad(
            number,
            format!("a {what} of session {session_id} not after that session's line"),
        )),
    }
}

/// Checks that a session's records are whole, then writes them.
async fn write_session<S: ServerStore + ?Sized>(
    store: &S,
    mut p: Pending,
    report: &mut ImportReport,
) -> Result<()> {
    // A memory added or deleted while the export ran may be in it or not: the count
    // follows the memories it holds.
    p.archive.record.session.memory_count = p.archive.memories.len() as u64;
    let s = &p.archive.record.session;
    let first = p.archive.versions.first().map_or(0, |v| v.version);
    let last_turn = p.archive.turns.last().map(|t| t.turn_number);
    let whole = first + p.archive.versions.len() as u64 == s.version + 1
        && last_turn.is_none_or(|n| n == s.turn_count);
    if !whole {
        return Err(bad(
            p.line,
            format!(
                "session {} is at version {} with {} turns, but the archive holds {} versions and {} turns of it",
                s.id,
                s.version,
                s.turn_count,
                p.archive.versions.len(),
                p.archive.turns.len()
            ),
        ));
    }
    let counts = Counts::of_session(&p.archive);
    if store.import_session(&p.tenant, p.archive).await? {
        report.imported += counts;
    } else {
        report.skipped += counts;
    }
    Ok(())
}

async fn write_traces<S: ServerStore + ?Sized>(
    store: &S,
    traces: &mut Vec<(String, Trace)>,
    report: &mut ImportReport,
) -> Result<()> {
    // Consecutive traces of one tenant go in one call.
    while let Some((tenant, _)) = traces.first() {
        let tenant = tenant.clone();
        let run = traces.iter().take_while(|(t, _)| *t == tenant).count();
        let batch: Vec<Trace> = traces.drain(..run).map(|(_, t)| t).collect();
        let total = batch.len() as u64;
        let written = store.import_traces(&tenant, batch).await?;
        report.imported.traces += written;
        report.skipped.traces += total - written;
    }
    Ok(())
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::archive_cases::{export_all, populated};
    use crate::MemoryStore;

    async fn refused(bytes: &[u8]) -> String {
        let e = verify(bytes).await.expect_err("a damaged archive verified");
        assert_eq!(e.code(), "invalid_request");
        e.to_string()
    }

    /// A changed byte, a missing trailer, an unknown format version, a record out of place
    /// and a wrong count are each refused, and an import writes nothing after such a line.
    #[tokio::test]
    async fn damaged_archives_are_refused() {
        let bytes = export_all(populated().await.store()).await;
        let text = String::from_utf8(bytes).unwrap();
        assert!(verify(text.as_bytes()).await.is_ok());

        let changed = text.replacen("Lisbon", "Lisbom", 1);
        assert!(refused(changed.as_bytes())
            .await
            .contains("checksum mismatch"));
        let lines: Vec<&str> = text.lines().collect();
        let truncated: String = lines[..lines.len() - 1]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(refused(truncated.as_bytes())
            .await
            .contains("without its trailer"));
        let newer = text.replacen("\"format_version\":2", "\"format_version\":3", 1);
        assert!(refused(newer.as_bytes()).await.contains("format version 3"));
        assert!(refused(b"{\"hello\":1}\n")
            .await
            .contains("not a statebase export"));

        // A version line before its session's line.
        let v = lines
            .iter()
            .position(|l| l.contains("\"kind\":\"version\""))
            .unwrap();
        let mut moved: Vec<&str> = lines.clone();
        moved.swap(v - 1, v);
        let moved: String = moved.iter().map(|l| format!("{l}\n")).collect();
        let store = MemoryStore::new();
        let e = import(&store, moved.as_bytes(), &mut |_| {})
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("not after that session's line"),
            "{e}"
        );
        assert!(
            store.tenants().await.unwrap().is_empty(),
            "wrote before the bad line"
        );
    }

    /// A format 1 archive (no retention lines, no count of them in its trailer), as the
    /// statebase before format 2 wrote it, still imports.
    #[tokio::test]
    async fn a_format_1_archive_imports() {
        let bytes = export_all(populated().await.store()).await;
        let text = String::from_utf8(bytes).unwrap();
        let mut body: String = text
            .lines()
            .filter(|l| {
                !l.contains("\"kind\":\"retention\"") && !l.contains("\"kind\":\"trailer\"")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        body = body.replacen("\"format_version\":2", "\"format_version\":1", 1);
        let (_, mut counts) = verify(text.as_bytes()).await.unwrap();
        counts.retention_policies = 0;
        let mut trailer = serde_json::json!({
            "kind": "trailer",
            "counts": counts,
            "sha256": hex(&Sha256::digest(body.as_bytes())),
        });
        trailer["counts"]
            .as_object_mut()
            .unwrap()
            .remove("retention_policies");
        body.push_str(&format!("{trailer}\n"));
        let store = MemoryStore::new();
        let report = import(&store, body.as_bytes(), &mut |_| {}).await.unwrap();
        assert_eq!(report.imported, counts);
        assert!(store.retention_policies(None, 10).await.unwrap().is_empty());
    }

    /// Every pager turns its pages: more versions than a version page holds, and more
    /// sessions, turns, memories and traces than a page.
    #[tokio::test]
    async fn exports_past_every_page_boundary() {
        use crate::{AddMemory, AddTurn, CreateSession, StateBase, StateWrite};
        let sb = StateBase::new(MemoryStore::new());
        let big = sb
            .create_session(CreateSession::new("agent"))
            .await
            .unwrap();
        let edits = VERSION_PAGE + 10;
        for step in 1..=edits {
            let write = StateWrite::new(serde_json::json!({ "step": step }));
            sb.merge_state(&big.id, write).await.unwrap();
        }
        let more = PAGE as u64 + 1;
        for n in 0..more {
            let turn = AddTurn::text(&format!("question {n}"), "answer");
            sb.add_turn(&big.id, turn).await.unwrap();
            let memory = AddMemory::new(&big.id, &format!("fact number {n}"));
            sb.add_memory(memory).await.unwrap();
            sb.create_session(CreateSession::new("agent"))
                .await
                .unwrap();
        }
        let bytes = export_all(sb.store()).await;
        let (_, counts) = verify(&bytes[..]).await.unwrap();
        let sessions = more + 1;
        assert_eq!(
            (
                counts.sessions,
                counts.versions,
                counts.turns,
                counts.memories
            ),
            (sessions, edits + sessions, more, more)
        );
        assert!(counts.traces > PAGE as u64);

        let restored = MemoryStore::new();
        let report = import(&restored, &bytes[..], &mut |_| {}).await.unwrap();
        assert_eq!(report.imported, counts);
        assert!(export_all(&restored).await == bytes, "the archives differ");
        let session = StateBase::new(restored).get_session(&big.id).await.unwrap();
        assert_eq!(session.version, edits);
        assert_eq!(session.state["step"], edits);
    }
}

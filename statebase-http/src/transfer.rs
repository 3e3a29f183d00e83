//! `statebase export`, `import` and `migrate`: archives of format 1 (see
//! [`statebase_core::archive`]), with their progress on stderr.

use indicatif::{ProgressBar, ProgressStyle};
use statebase_core::archive::{self, Counts, ExportOptions, ImportReport};
use statebase_core::ServerStore;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How often progress is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The progress of long work: a bar with counts and rates on a terminal, else a log line
/// every few seconds.
struct Progress {
    task: &'static str,
    bar: Option<ProgressBar>,
    logged: Instant,
}

impl Progress {
    fn new(task: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(
                "{spinner} {prefix}: {human_pos} records ({per_sec}), {elapsed} · {wide_msg}",
            )
            .expect("a valid template");
            let bar = ProgressBar::new_spinner().with_style(style);
            bar.set_prefix(task);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            task,
            bar,
            logged: Instant::now(),
        }
    }

    /// `records` done so far, of which `counts` says what.
    fn update(&mut self, records: u64, counts: &Counts) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(records);
                bar.set_message(counts.to_string());
            }
            None if self.logged.elapsed() >= LOG_EVERY => {
                self.logged = Instant::now();
                tracing::info!(task = self.task, records, %counts, "in progress");
            }
            None => {}
        }
    }

    fn import(&mut self, report: &ImportReport) {
        let done = report.imported.total() + report.skipped.total();
        self.update(done, &report.imported);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Writes `store`'s records (all, or `options.tenant`'s) to `output`, or stdout.
pub async fn export(
    store: &dyn ServerStore,
    options: &ExportOptions,
    output: Option<&Path>,
) -> Result<()> {
    let counts = match output {
        Some(path) => {
            let mut file = BufWriter::new(tokio::fs::File::create(path).await?);
            let counts = write_archive(store, options, &mut file).await?;
            file.into_inner().sync_all().await?;
            counts
        }
        None => write_archive(store, options, &mut BufWriter::new(tokio::io::stdout())).await?,
    };
    tracing::info!(%counts, records = counts.total(), "exported");
    Ok(())
}

async fn write_archive(
    store: &dyn ServerStore,
    options: &ExportOptions,
    out: &mut (impl AsyncWrite + Unpin + Send),
) -> Result<Counts> {
    let mut progress = Progress::new("export");
    let now = chrono::Utc::now();
    let counts = archive::export(store, options, now, out, &mut |c| {
        progress.update(c.total(), c)
    })
    .await?;
    out.flush().await?;
    Ok(counts)
}

/// Verifies the archive at `path` whole, then imports it into `store`.
pub async fn import(store: &dyn ServerStore, path: &Path) -> Result<ImportReport> {
    let open =
        || async { Ok::<_, std::io::Error>(BufReader::new(tokio::fs::File::open(path).await?)) };
    let (header, counts) = archive::verify(open().await?).await?;
    let tenant = header.tenant.as_deref().unwrap_or("every tenant");
    tracing::info!(tenant, %counts, created_at = %header.created_at, "archive verified");
    let mut progress = Progress::new("import");
    let report = archive::import(store, open().await?, &mut |r| progress.import(r)).await?;
    Ok(report)
}

/// Exports `from`'s records straight into `to`, as `export` piped into `import`.
pub async fn migrate(
    from: &dyn ServerStore,
    to: &dyn ServerStore,
    options: &ExportOptions,
) -> Result<ImportReport> {
    let (mut sending, received) = tokio::io::duplex(1 << 16);
    let export = async move {
        let now = chrono::Utc::now();
        let counts = archive::export(from, options, now, &mut sending, &mut |_| {}).await;
        // The import sees the end.
        drop(sending);
        counts
    };
    let mut progress = Progress::new("migrate");
    let mut report_progress = |r: &ImportReport| progress.import(r);
    let import = archive::import(to, BufReader::new(received), &mut report_progress);
    let (_, report) = tokio::try_join!(export, import)?;
    Ok(report)
}

/// What an import did, for stdout.
pub fn print_report(report: &ImportReport) {
    println!("imported: {}", report.imported);
    println!("skipped (already there): {}", report.skipped);
}

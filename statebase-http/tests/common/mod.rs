//! `statebase serve` as a child process, for the tests that run several or stop their
//! database under one.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `statebase serve` process, killed when dropped; its log goes to a file, shown when it
/// fails to start.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: tempfile::NamedTempFile,
}

impl Server {
    /// Serves `db` on a free loopback port with `args`, once it answers `/health`.
    pub async fn start(db: &str, args: &[&str]) -> Server {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_statebase"))
            .args(["serve", "--db", db, "--addr", &addr])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            url: format!("http://{addr}"),
            log,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http
            .get(format!("{}/health", server.url))
            .send()
            .await
            .is_err()
        {
            let log = std::fs::read_to_string(server.log.path()).unwrap_or_default();
            if let Some(exit) = server.child.try_wait().unwrap() {
                panic!("the server stopped ({exit}): {log}");
            }
            assert!(
                Instant::now() < deadline,
                "the server never answered: {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

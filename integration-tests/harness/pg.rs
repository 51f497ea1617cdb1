//! PostgreSQL 15 nodes for tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a server binary as user `postgres` (never as root).
fn as_postgres(program: &str) -> Command {
    let is_root = euid() == 0;
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn euid() -> u32 {
    // `id -u` avoids a libc dependency for one number.
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn check(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An initdb'ed data directory, made once per machine and copied per node:
/// initdb costs seconds, a copy milliseconds. A file lock keeps parallel
/// test processes from racing to create it.
fn template() -> PathBuf {
    let dir = PathBuf::from("/tmp/shardcast-pg15-template");
    let lock_path = PathBuf::from("/tmp/shardcast-pg15-template.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap();
    lock.lock().expect("lock template");
    if !dir.join("PG_VERSION").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let tmp = PathBuf::from(format!(
            "/tmp/shardcast-pg15-template.tmp{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        chown_postgres(&tmp);
        let out = as_postgres(&format!("{BIN}/initdb"))
            .args([
                "-D",
                tmp.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        check(out, "initdb");
        std::fs::rename(&tmp, &dir).unwrap();
    }
    drop(lock);
    dir
}

fn chown_postgres(p: &Path) {
    if euid() == 0 {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres", p.to_str().unwrap()])
            .output()
            .unwrap();
        check(out, "chown");
    }
}

/// One running PostgreSQL server.
pub struct PgNode {
    pub port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl PgNode {
    pub fn start() -> PgNode {
        let tmpl = template();
        for attempt in 0..3 {
            let tmp = tempfile::Builder::new()
                .prefix("shardcast-node-")
                .tempdir()
                .expect("temp dir");
            let dir = tmp.path().join("data");
            let out = Command::new("cp")
                .args(["-a", tmpl.to_str().unwrap(), dir.to_str().unwrap()])
                .output()
                .unwrap();
            check(out, "copy template");
            chown_postgres(tmp.path());
            let port = super::free_port();
            let opts = format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
                 -c shared_buffers=16MB -c max_prepared_transactions=20",
                dir.display()
            );
            let out = as_postgres(&format!("{BIN}/pg_ctl"))
                .args([
                    "-D",
                    dir.to_str().unwrap(),
                    "-l",
                    dir.join("server.log").to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &opts,
                    "start",
                ])
                .output()
                .unwrap();
            if out.status.success() {
                return PgNode {
                    port,
                    dir,
                    _tmp: tmp,
                };
            }
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            if attempt == 2 {
                panic!(
                    "pg_ctl start failed: {}\n{log}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        unreachable!()
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with the real `psql`, returning its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        check(out.clone(), &format!("psql {sql}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        super::connect(&self.url(db)).await
    }

    /// Stops the server now (to test a dead node).
    pub fn stop(&self) {
        let _ = as_postgres(&format!("{BIN}/pg_ctl"))
            .args([
                "-D",
                self.dir.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// N nodes started in parallel, each with database `db`.
pub struct Cluster {
    pub nodes: Vec<PgNode>,
    pub db: String,
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        let started = Instant::now();
        let nodes: Vec<PgNode> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n).map(|_| s.spawn(PgNode::start)).collect();
            hs.into_iter()
                .map(|h| h.join().expect("node start"))
                .collect()
        });
        let db = "shard".to_string();
        for node in &nodes {
            node.create_database(&db);
        }
        assert!(started.elapsed() < Duration::from_secs(120));
        Cluster { nodes, db }
    }

    /// A number-valued query run on every node, summed (e.g. a row count).
    pub fn sum(&self, sql: &str) -> i64 {
        self.nodes
            .iter()
            .map(|n| {
                n.psql(&self.db, sql)
                    .parse::<i64>()
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            })
            .sum()
    }

    /// Runs the same SQL on every node (schema setup).
    pub fn on_all(&self, sql: &str) {
        for n in &self.nodes {
            n.psql(&self.db, sql);
        }
    }
}

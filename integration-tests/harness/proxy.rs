//! The shardcast binary on a generated config, for tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::pg::Cluster;

pub struct ProxyBuilder {
    tables: Vec<(String, String, String)>,
    partitions: u32,
    pool_size: usize,
    checkout_timeout_ms: Option<u64>,
    extra: String,
    node_keys: String,
    env: Vec<(String, String)>,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self {
            tables: Vec::new(),
            partitions: 16,
            pool_size: 20,
            checkout_timeout_ms: None,
            extra: String::new(),
            node_keys: String::new(),
            env: Vec::new(),
        }
    }
}

impl ProxyBuilder {
    pub fn table(mut self, name: &str, key: &str, key_type: &str) -> Self {
        self.tables.push((name.into(), key.into(), key_type.into()));
        self
    }
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }
    pub fn checkout_timeout_ms(mut self, ms: u64) -> Self {
        self.checkout_timeout_ms = Some(ms);
        self
    }
    /// An environment variable for the proxy process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Raw TOML appended to the config (extra sections).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Raw TOML added to every `[[nodes]]` entry (e.g. `capacity_qps = 400`).
    pub fn node_keys(mut self, toml: &str) -> Self {
        self.node_keys.push_str(toml);
        self.node_keys.push('\n');
        self
    }

    pub fn config(&self, cluster: &Cluster, port: u16, admin: u16) -> String {
        let mut c = format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\ndatabase = \"app\"\nworkers = 2\n\n"
        );
        for (i, n) in cluster.nodes.iter().enumerate() {
            c.push_str(&format!(
                "[[nodes]]\nname = \"n{i}\"\nurl = \"{}\"\n{}\n",
                n.url(&cluster.db),
                self.node_keys
            ));
        }
        for (name, key, ty) in &self.tables {
            c.push_str(&format!(
                "[[tables]]\nname = \"{name}\"\nshard_key = \"{key}\"\nkey_type = \"{ty}\"\n\n"
            ));
        }
        c.push_str(&format!(
            "[sharding]\npartitions = {}\n\n[pool]\nsize = {}\n",
            self.partitions, self.pool_size
        ));
        if let Some(ms) = self.checkout_timeout_ms {
            c.push_str(&format!("checkout_timeout_ms = {ms}\n"));
        }
        c.push('\n');
        c.push_str(&self.extra);
        c
    }

    pub fn start(self, cluster: &Cluster) -> Proxy {
        let mut dir = tempfile::Builder::new()
            .prefix("shardcast-proxy-")
            .tempdir()
            .unwrap();
        for _ in 0..3 {
            let (port, admin) = (super::free_port(), super::free_port());
            let cfg = dir.path().join("shardcast.toml");
            std::fs::write(&cfg, self.config(cluster, port, admin)).unwrap();
            let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
                .args(["run", "--config", cfg.to_str().unwrap()])
                .env("SHARDCAST_LOG", "info")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn shardcast");
            let mut p = Proxy {
                child,
                port,
                admin_port: admin,
                dir,
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if p.child.try_wait().unwrap().is_some() {
                    break;
                }
                if p.try_get("/api/routing").is_some() {
                    return p;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("proxy did not come up; log:\n{}", p.log());
            let _ = p.child.kill();
            let _ = p.child.wait();
            dir = p.take_dir();
        }
        panic!("shardcast did not start");
    }
}

pub struct Proxy {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    dir: tempfile::TempDir,
}

impl Proxy {
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// The config file the proxy runs on.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("shardcast.toml")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/app", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        super::connect(&self.url()).await
    }

    fn try_get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    /// Any request on the admin port: (status, body).
    pub fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port)).expect("admin port");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    }

    /// Starts a migration (`POST /api/migrations`); returns its id.
    pub fn migrate(&self, request: serde_json::Value) -> i64 {
        let (status, body) = self.admin("POST", "/api/migrations", &request.to_string());
        assert_eq!(status, 202, "POST /api/migrations {request}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["id"].as_i64().unwrap()
    }

    /// Waits until migration `id` is done or aborted; returns its JSON.
    pub fn wait_migration(&self, id: i64, limit: Duration) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let (status, body) = self.admin("GET", &format!("/api/migrations/{id}"), "");
            if status == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                if matches!(v["state"].as_str(), Some("done" | "aborted")) {
                    return v;
                }
            }
            assert!(
                started.elapsed() < limit,
                "migration {id} unfinished after {limit:?}: {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process has exited (e.g. an injected fault).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// GET on the admin port; panics unless 200.
    pub fn admin_get(&self, path: &str) -> String {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed"))
    }

    pub fn routing(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/api/routing")).expect("routing json")
    }

    /// `psql` through the proxy; returns the whole output (stdout + stderr).
    pub fn psql(&self, args: &[&str]) -> Output {
        Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "app",
            ])
            .args(args)
            .output()
            .expect("run psql")
    }

    pub fn pgbench(&self, args: &[&str]) -> Output {
        Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("app")
            .output()
            .expect("run pgbench")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- shardcast log (last 40 lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

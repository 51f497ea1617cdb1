//! `shardcast.toml`: the schema, its defaults, and validation that reports
//! every problem at once, each naming the key and its line.

use std::path::Path;

use serde::Deserialize;

mod validate;

/// The whole configuration, as loaded and validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    #[serde(default)]
    pub sharding: ShardingConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub recorder: RecorderConfig,
    #[serde(default)]
    pub forecast: ForecastConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub transactions: TransactionsConfig,
    #[serde(default)]
    pub catalog: CatalogConfig,
    #[serde(default)]
    pub migration: MigrationConfig,
    #[serde(default)]
    pub planner: PlannerConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
}

/// The Predictive Migration Engine (`planner/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerConfig {
    /// `predictive` (default), `reactive` or `off`.
    #[serde(default = "defaults::policy")]
    pub policy: String,
    /// How often the planner looks (default `1m`).
    #[serde(default = "defaults::planner_interval", deserialize_with = "duration")]
    pub interval: u64,
    /// Utilization every node must stay under, in (0, 1] (default 0.8).
    #[serde(default = "defaults::threshold", deserialize_with = "number")]
    pub threshold: f64,
    /// How far ahead it plans (default: `[forecast] horizon`).
    #[serde(default, deserialize_with = "opt_duration")]
    pub horizon: Option<u64>,
    /// Migrations at once (default: `[migration] max_concurrent`).
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// The copy rate it assumes (default: `[migration] copy_rate`).
    #[serde(default, deserialize_with = "opt_bytes_rate")]
    pub copy_rate: Option<u64>,
    /// Smallest benefit worth a move, in node-seconds of overload avoided.
    #[serde(default = "defaults::min_benefit", deserialize_with = "number")]
    pub min_benefit: f64,
    /// How long a moved partition stays put (default `1h`).
    #[serde(default = "defaults::cooldown", deserialize_with = "duration")]
    pub cooldown: u64,
    /// `reactive`: how long a node must stay over the threshold (default `1m`).
    #[serde(default = "defaults::window", deserialize_with = "duration")]
    pub window: u64,
    /// Merge cold neighbours above this many partitions (default 0: never).
    #[serde(default)]
    pub merge_above: usize,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            policy: defaults::policy(),
            interval: defaults::planner_interval(),
            threshold: defaults::threshold(),
            horizon: None,
            max_concurrent: None,
            copy_rate: None,
            min_benefit: defaults::min_benefit(),
            cooldown: defaults::cooldown(),
            window: defaults::window(),
            merge_above: 0,
        }
    }
}

/// The Resource Utilization Monitor (`monitor/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// How often each node is sampled (default `5s`).
    #[serde(default = "defaults::monitor_interval", deserialize_with = "duration")]
    pub interval: u64,
    /// How often partition sizes are estimated (default `1m`).
    #[serde(default = "defaults::sizes_interval", deserialize_with = "duration")]
    pub sizes_interval: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            interval: defaults::monitor_interval(),
            sizes_interval: defaults::sizes_interval(),
        }
    }
}

impl Config {
    /// The planner's settings from `[planner]`, `[forecast]` and `[migration]`.
    pub fn planner_settings(&self) -> crate::planner::Settings {
        let p = &self.planner;
        crate::planner::Settings {
            policy: crate::planner::Policy::parse(&p.policy).unwrap_or(crate::planner::Policy::Off),
            threshold: p.threshold,
            horizon: p.horizon.unwrap_or(self.forecast.horizon),
            interval: p.interval,
            max_concurrent: p.max_concurrent.unwrap_or(self.migration.max_concurrent),
            copy_rate: p.copy_rate.unwrap_or(self.migration.copy_rate) as f64,
            min_benefit: p.min_benefit,
            cooldown: p.cooldown,
            window: p.window,
            merge_above: p.merge_above,
            ..crate::planner::Settings::default()
        }
    }
}

/// Where the cluster's shared state lives (routing epochs, migration
/// journal, proxy heartbeats).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// `postgres://…` of the catalog database (default: the first node's).
    #[serde(default)]
    pub url: Option<String>,
}

/// Online migration: how fast it copies, how long writes may be held.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// Bytes per second a copy may read from its source (`64MB`; `0`: no
    /// limit), so the source keeps serving.
    #[serde(default = "defaults::copy_rate", deserialize_with = "bytes_rate")]
    pub copy_rate: u64,
    /// Migrations running at once, across all proxies (default 1).
    #[serde(default = "defaults::max_concurrent")]
    pub max_concurrent: usize,
    /// Longest a write waits for a cut-over before it fails with 40001.
    #[serde(default = "defaults::hold_timeout", deserialize_with = "duration")]
    pub hold_timeout: u64,
    /// How often a proxy records its heartbeat in the catalog.
    #[serde(default = "defaults::heartbeat", deserialize_with = "duration")]
    pub heartbeat: u64,
    /// A proxy silent for this long no longer holds back a clean-up.
    #[serde(default = "defaults::heartbeat_timeout", deserialize_with = "duration")]
    pub heartbeat_timeout: u64,
    /// How often a proxy polls the catalog for a new epoch (besides
    /// LISTEN/NOTIFY).
    #[serde(default = "defaults::poll", deserialize_with = "duration")]
    pub poll: u64,
    /// The catch-up ends (and the cut-over starts) when fewer changed rows
    /// than this are waiting.
    #[serde(default = "defaults::catch_up_rows")]
    pub catch_up_rows: usize,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            copy_rate: defaults::copy_rate(),
            max_concurrent: defaults::max_concurrent(),
            hold_timeout: defaults::hold_timeout(),
            heartbeat: defaults::heartbeat(),
            heartbeat_timeout: defaults::heartbeat_timeout(),
            poll: defaults::poll(),
            catch_up_rows: defaults::catch_up_rows(),
        }
    }
}

/// Bytes in `64MB`, `512kB`, `1GB`, `100` (bytes); `0` means no limit.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        _ => return None,
    };
    Some(n * mult)
}

fn opt_bytes_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bytes_rate(d).map(Some)
}

/// A TOML integer or float as f64.
fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        I(i64),
        F(f64),
    }
    Ok(match Num::deserialize(d)? {
        Num::I(i) => i as f64,
        Num::F(f) => f,
    })
}

fn opt_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number(d).map(Some)
}

fn bytes_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_bytes(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("\"{s}\" is not a rate like 64MB")))
}

/// Atomicity of statements that change rows on several nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionsConfig {
    /// Two-phase commit for multi-node writes. Unset: on when every node
    /// allows prepared transactions (`max_prepared_transactions > 0`).
    #[serde(default)]
    pub two_phase: Option<bool>,
    /// A prepared transaction older than this with no live coordinator is
    /// resolved from the decision record (default `30s`).
    #[serde(default = "defaults::recover_after", deserialize_with = "duration")]
    pub recover_after: u64,
}

impl Default for TransactionsConfig {
    fn default() -> Self {
        Self {
            two_phase: None,
            recover_after: defaults::recover_after(),
        }
    }
}

/// How statements that need several shards are answered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Most partial rows a cross-shard read may gather for its final step
    /// (sorting, grouping); beyond it the read is refused, not truncated.
    #[serde(default = "defaults::merge_max_rows")]
    pub merge_max_rows: usize,
    /// UPDATE/DELETE without the shard key run on every node (default on);
    /// off, they are refused.
    #[serde(default = "defaults::yes")]
    pub allow_multi_shard_writes: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            merge_max_rows: defaults::merge_max_rows(),
            allow_multi_shard_writes: true,
        }
    }
}

/// The forecaster: how load is bucketed, how far ahead it looks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastConfig {
    /// Width of one step of a partition's rate series (default `1m`).
    #[serde(default = "defaults::bucket", deserialize_with = "duration")]
    pub bucket: u64,
    /// How far ahead to predict (default `15m`): longer than a migration takes.
    #[serde(default = "defaults::horizon", deserialize_with = "duration")]
    pub horizon: u64,
    /// How often forecasts are refreshed (default: every bucket).
    #[serde(default, deserialize_with = "opt_duration")]
    pub interval: Option<u64>,
    /// The upper bound's quantile (default 0.9).
    #[serde(default = "defaults::quantile")]
    pub quantile: f64,
    /// How far back each partition's running backtest looks when it picks
    /// a model (default `2d`): long enough to have seen a daily cycle.
    #[serde(default = "defaults::history", deserialize_with = "duration")]
    pub history: u64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self {
            bucket: defaults::bucket(),
            horizon: defaults::horizon(),
            interval: None,
            quantile: defaults::quantile(),
            history: defaults::history(),
        }
    }
}

/// Seconds in `10s`, `15m`, `2h`, `1d` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    (n > 0).then_some(n * mult)
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).ok_or_else(|| serde::de::Error::custom(format!("\"{s}\" is not a duration")))
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    duration(d).map(Some)
}

/// The per-request recorder (Access Pattern Analyzer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecorderConfig {
    /// Off: no per-partition history (and no forecast); for measuring its cost.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Minutes of per-minute history kept per partition (default 7 days).
    #[serde(default = "defaults::history_minutes")]
    pub history_minutes: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            history_minutes: defaults::history_minutes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Postgres clients connect here, e.g. `127.0.0.1:6432`.
    pub listen: String,
    /// `/metrics` and `/api/*`.
    pub admin_listen: String,
    /// The database name clients ask for.
    pub database: String,
    /// Threads serving clients (default 1; raise it on hosts with idle cores).
    #[serde(default = "defaults::workers")]
    pub workers: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// `postgres://user[:password]@host:port/dbname`
    pub url: String,
    /// Requests per second the node serves before latency bends (from
    /// `shardcast calibrate`); without it the node's utilization is unknown.
    #[serde(default, deserialize_with = "opt_number")]
    pub capacity_qps: Option<f64>,
    /// A Prometheus node_exporter on the node's host, e.g. `http://10.0.0.5:9100/metrics`.
    #[serde(default)]
    pub exporter: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Bigint,
    Integer,
    Text,
    Uuid,
}

impl KeyType {
    /// The SQL type and the PostgreSQL hash function (seed 0 gives the
    /// ring's hash) of this key type.
    pub fn sql(self) -> (&'static str, &'static str) {
        match self {
            KeyType::Bigint => ("bigint", "hashint8extended"),
            KeyType::Integer => ("integer", "hashint4extended"),
            KeyType::Text => ("text", "hashtextextended"),
            KeyType::Uuid => ("uuid", "uuid_hash_extended"),
        }
    }

    /// Equal keys of these two types hash alike (an int8 in int4 range
    /// hashes like that int4), so a join on them is co-located.
    pub fn hash_compatible(self, other: KeyType) -> bool {
        use KeyType::*;
        matches!(
            (self, other),
            (Bigint | Integer, Bigint | Integer) | (Text, Text) | (Uuid, Uuid)
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    pub shard_key: String,
    pub key_type: KeyType,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardingConfig {
    /// Initial partitions, spread evenly over the nodes.
    #[serde(default = "defaults::partitions")]
    pub partitions: u32,
    /// Node for unsharded tables and table-less statements (default: first node).
    #[serde(default)]
    pub default_node: Option<String>,
}

impl Default for ShardingConfig {
    fn default() -> Self {
        Self {
            partitions: defaults::partitions(),
            default_node: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Server connections per node at most.
    #[serde(default = "defaults::pool_size")]
    pub size: usize,
    /// How long a transaction may wait for a server connection, in ms.
    #[serde(default = "defaults::checkout_timeout_ms")]
    pub checkout_timeout_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            size: defaults::pool_size(),
            checkout_timeout_ms: defaults::checkout_timeout_ms(),
        }
    }
}

/// How clients authenticate to the proxy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `trust` (default) or `md5`.
    #[serde(default)]
    pub method: AuthMethod,
    /// Users and their passwords, for `md5`.
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    #[default]
    Trust,
    Md5,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
}

/// Defaults live in one place.
pub(crate) mod defaults {
    pub fn recover_after() -> u64 {
        30
    }
    pub fn copy_rate() -> u64 {
        256 << 20
    }
    pub fn max_concurrent() -> usize {
        1
    }
    pub fn hold_timeout() -> u64 {
        5
    }
    pub fn heartbeat() -> u64 {
        2
    }
    pub fn heartbeat_timeout() -> u64 {
        10
    }
    pub fn poll() -> u64 {
        3
    }
    pub fn catch_up_rows() -> usize {
        100
    }
    pub fn merge_max_rows() -> usize {
        100_000
    }
    pub fn partitions() -> u32 {
        16
    }
    pub fn pool_size() -> usize {
        20
    }
    pub fn checkout_timeout_ms() -> u64 {
        5_000
    }
    pub fn workers() -> usize {
        // One thread, like PgBouncer: measured cheaper per transaction than
        // two on a 2-core host shared with the database and the clients.
        1
    }
    pub fn bucket() -> u64 {
        60
    }
    pub fn horizon() -> u64 {
        15 * 60
    }
    pub fn quantile() -> f64 {
        0.9
    }
    pub fn history() -> u64 {
        2 * 86_400
    }
    pub fn yes() -> bool {
        true
    }
    pub fn history_minutes() -> usize {
        7 * 24 * 60
    }
    pub fn policy() -> String {
        "predictive".into()
    }
    pub fn planner_interval() -> u64 {
        60
    }
    pub fn threshold() -> f64 {
        0.8
    }
    pub fn min_benefit() -> f64 {
        1.0
    }
    pub fn cooldown() -> u64 {
        3600
    }
    pub fn window() -> u64 {
        60
    }
    pub fn monitor_interval() -> u64 {
        5
    }
    pub fn sizes_interval() -> u64 {
        60
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `nodes[1].name`.
    pub key: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{l}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", issues.iter().map(|i| format!("{path}:{i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        issues: Vec<ConfigIssue>,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|issues| ConfigError::Invalid {
            path: path.display().to_string(),
            issues,
        })
    }

    /// Parses and validates; returns every issue found.
    pub fn parse(text: &str) -> Result<Self, Vec<ConfigIssue>> {
        let issues = validate::validate(text);
        if !issues.is_empty() {
            return Err(issues);
        }
        toml::from_str(text).map_err(|e| {
            vec![ConfigIssue {
                key: String::from("(file)"),
                line: e.span().map(|s| text[..s.start].matches('\n').count() + 1),
                message: e.message().to_string(),
            }]
        })
    }

    /// Index of the node unsharded statements go to.
    pub fn default_node(&self) -> usize {
        self.sharding
            .default_node
            .as_ref()
            .and_then(|n| self.nodes.iter().position(|x| &x.name == n))
            .unwrap_or(0)
    }
}

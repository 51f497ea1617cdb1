//! Validation that reports every problem in a config file at once, each
//! with its dotted key (`nodes[1].name`) and line, before the typed
//! config is built. It walks toml's spanned document, so even a key the
//! schema does not know is reported where it stands.

use std::collections::HashMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::ConfigIssue;

/// The type a key must have.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Float,
    Table(&'static [Field]),
    Tables(&'static [Field]),
}

struct Field {
    name: &'static str,
    ty: Ty,
    required: bool,
}

const fn f(name: &'static str, ty: Ty, required: bool) -> Field {
    Field { name, ty, required }
}

const PROXY: &[Field] = &[
    f("listen", Ty::Str, true),
    f("admin_listen", Ty::Str, true),
    f("database", Ty::Str, true),
    f("workers", Ty::Int, false),
];
const NODE: &[Field] = &[
    f("name", Ty::Str, true),
    f("url", Ty::Str, true),
    f("capacity_qps", Ty::Float, false),
    f("exporter", Ty::Str, false),
];
const TABLE: &[Field] = &[
    f("name", Ty::Str, true),
    f("shard_key", Ty::Str, true),
    f("key_type", Ty::Str, true),
];
const SHARDING: &[Field] = &[
    f("partitions", Ty::Int, false),
    f("default_node", Ty::Str, false),
];
const POOL: &[Field] = &[
    f("size", Ty::Int, false),
    f("checkout_timeout_ms", Ty::Int, false),
];
const USER: &[Field] = &[f("name", Ty::Str, true), f("password", Ty::Str, true)];
const AUTH: &[Field] = &[
    f("method", Ty::Str, false),
    f("users", Ty::Tables(USER), false),
];
const RECORDER: &[Field] = &[
    f("enabled", Ty::Bool, false),
    f("history_minutes", Ty::Int, false),
];
const FORECAST: &[Field] = &[
    f("bucket", Ty::Str, false),
    f("horizon", Ty::Str, false),
    f("interval", Ty::Str, false),
    f("quantile", Ty::Float, false),
    f("history", Ty::Str, false),
];
const ROUTING: &[Field] = &[
    f("merge_max_rows", Ty::Int, false),
    f("allow_multi_shard_writes", Ty::Bool, false),
];
const TRANSACTIONS: &[Field] = &[
    f("two_phase", Ty::Bool, false),
    f("recover_after", Ty::Str, false),
];
const CATALOG: &[Field] = &[f("url", Ty::Str, false)];
const MIGRATION: &[Field] = &[
    f("copy_rate", Ty::Str, false),
    f("max_concurrent", Ty::Int, false),
    f("hold_timeout", Ty::Str, false),
    f("heartbeat", Ty::Str, false),
    f("heartbeat_timeout", Ty::Str, false),
    f("poll", Ty::Str, false),
    f("catch_up_rows", Ty::Int, false),
];
const PLANNER: &[Field] = &[
    f("policy", Ty::Str, false),
    f("interval", Ty::Str, false),
    f("threshold", Ty::Float, false),
    f("horizon", Ty::Str, false),
    f("max_concurrent", Ty::Int, false),
    f("copy_rate", Ty::Str, false),
    f("min_benefit", Ty::Float, false),
    f("cooldown", Ty::Str, false),
    f("window", Ty::Str, false),
    f("merge_above", Ty::Int, false),
];
const MONITOR: &[Field] = &[
    f("interval", Ty::Str, false),
    f("sizes_interval", Ty::Str, false),
];
const ROOT: &[Field] = &[
    f("proxy", Ty::Table(PROXY), true),
    f("nodes", Ty::Tables(NODE), true),
    f("tables", Ty::Tables(TABLE), false),
    f("sharding", Ty::Table(SHARDING), false),
    f("pool", Ty::Table(POOL), false),
    f("auth", Ty::Table(AUTH), false),
    f("recorder", Ty::Table(RECORDER), false),
    f("forecast", Ty::Table(FORECAST), false),
    f("routing", Ty::Table(ROUTING), false),
    f("transactions", Ty::Table(TRANSACTIONS), false),
    f("catalog", Ty::Table(CATALOG), false),
    f("migration", Ty::Table(MIGRATION), false),
    f("planner", Ty::Table(PLANNER), false),
    f("monitor", Ty::Table(MONITOR), false),
];

/// What the walk found: issues, and the span of every scalar by key path.
struct Walk<'t> {
    text: &'t str,
    issues: Vec<ConfigIssue>,
    spans: HashMap<String, Range<usize>>,
    values: HashMap<String, String>,
}

impl Walk<'_> {
    fn line(&self, at: usize) -> usize {
        self.text[..at.min(self.text.len())].matches('\n').count() + 1
    }

    fn issue(&mut self, key: &str, at: usize, message: String) {
        let line = Some(self.line(at));
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            line,
            message,
        });
    }

    fn table(&mut self, path: &str, t: &DeTable<'_>, span: Range<usize>, schema: &'static [Field]) {
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            match schema.iter().find(|f| f.name == name) {
                None => {
                    let known: Vec<&str> = schema.iter().map(|f| f.name).collect();
                    self.issue(
                        &key,
                        k.span().start,
                        format!("unknown key; expected one of: {}", known.join(", ")),
                    );
                }
                Some(field) => self.value(&key, v, field.ty),
            }
        }
        for field in schema.iter().filter(|f| f.required) {
            if !t.iter().any(|(k, _)| k.get_ref() == field.name) {
                let key = if path.is_empty() {
                    field.name.to_string()
                } else {
                    format!("{path}.{}", field.name)
                };
                let what = match field.ty {
                    Ty::Table(_) => format!("add a [{key}] section"),
                    Ty::Tables(_) => format!("add at least one [[{key}]] section"),
                    _ => format!("add `{} = ...`", field.name),
                };
                self.issue(&key, span.start, format!("missing; {what}"));
            }
        }
    }

    fn value(&mut self, key: &str, v: &Spanned<DeValue<'_>>, ty: Ty) {
        let at = v.span().start;
        match (ty, v.get_ref()) {
            (Ty::Str, DeValue::String(s)) => {
                self.values.insert(key.to_string(), s.to_string());
                self.spans.insert(key.to_string(), v.span());
            }
            (Ty::Int, DeValue::Integer(i)) => {
                self.values
                    .insert(key.to_string(), i.as_str().replace('_', ""));
                self.spans.insert(key.to_string(), v.span());
            }
            (Ty::Bool, DeValue::Boolean(_)) => {}
            (Ty::Float, DeValue::Float(x)) => {
                self.values.insert(key.to_string(), x.as_str().to_string());
                self.spans.insert(key.to_string(), v.span());
            }
            (Ty::Float, DeValue::Integer(i)) => {
                self.values.insert(key.to_string(), i.as_str().to_string());
                self.spans.insert(key.to_string(), v.span());
            }
            (Ty::Table(schema), DeValue::Table(t)) => self.table(key, t, v.span(), schema),
            (Ty::Tables(schema), DeValue::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let k = format!("{key}[{i}]");
                    match item.get_ref() {
                        DeValue::Table(t) => self.table(&k, t, item.span(), schema),
                        other => self.issue(
                            &k,
                            item.span().start,
                            format!("must be a table, not {}", other.type_str()),
                        ),
                    }
                }
                self.values
                    .insert(format!("{key}.len"), items.len().to_string());
                self.spans.insert(format!("{key}.len"), v.span());
            }
            (expected, got) => {
                let want = match expected {
                    Ty::Str => "a string",
                    Ty::Int => "an integer",
                    Ty::Bool => "true or false",
                    Ty::Float => "a number",
                    Ty::Table(_) => "a table ([section])",
                    Ty::Tables(_) => "an array of tables ([[section]])",
                };
                self.issue(key, at, format!("must be {want}, not {}", got.type_str()));
            }
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn at(&self, key: &str) -> usize {
        self.spans.get(key).map(|s| s.start).unwrap_or(0)
    }

    fn count(&self, key: &str) -> usize {
        self.get(&format!("{key}.len"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Checks that need more than one key: names, URLs, addresses, ranges.
    fn semantics(&mut self) {
        let mut names: HashMap<String, usize> = HashMap::new();
        for i in 0..self.count("nodes") {
            let key = format!("nodes[{i}].name");
            if let Some(n) = self.get(&key).map(str::to_string) {
                if let Some(first) = names.insert(n.clone(), i) {
                    self.issue(&key, self.at(&key), format!("duplicate node name \"{n}\" (also nodes[{first}]); names must be unique"));
                }
            }
            let key = format!("nodes[{i}].url");
            if let Some(url) = self.get(&key).map(str::to_string) {
                let ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
                match url.parse::<tokio_postgres::Config>() {
                    Ok(c) if ok && !c.get_hosts().is_empty() => {}
                    Ok(_) | Err(_) => self.issue(
                        &key,
                        self.at(&key),
                        format!("\"{url}\" is not a URL like postgres://user[:password]@host[:port]/database"),
                    ),
                }
            }
        }
        if self.count("nodes") == 0 && self.spans.contains_key("nodes.len") {
            self.issue(
                "nodes",
                self.at("nodes.len"),
                "at least one node is required".into(),
            );
        }
        let mut tables: HashMap<String, usize> = HashMap::new();
        for i in 0..self.count("tables") {
            let key = format!("tables[{i}].name");
            if let Some(n) = self.get(&key).map(|s| s.to_ascii_lowercase()) {
                if let Some(first) = tables.insert(n.clone(), i) {
                    self.issue(
                        &key,
                        self.at(&key),
                        format!("table \"{n}\" is listed twice (also tables[{first}])"),
                    );
                }
            }
            let key = format!("tables[{i}].key_type");
            if let Some(t) = self.get(&key).map(str::to_string) {
                if !["bigint", "integer", "text", "uuid"].contains(&t.as_str()) {
                    self.issue(
                        &key,
                        self.at(&key),
                        format!("\"{t}\" is not a key type; use bigint, integer, text or uuid"),
                    );
                }
            }
            let key = format!("tables[{i}].shard_key");
            if self.get(&key).is_some_and(|k| k.trim().is_empty()) {
                self.issue(
                    &key,
                    self.at(&key),
                    "the shard key column must not be empty".into(),
                );
            }
        }
        for key in ["proxy.listen", "proxy.admin_listen"] {
            if let Some(addr) = self.get(key).map(str::to_string) {
                let ok = addr
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    self.issue(
                        key,
                        self.at(key),
                        format!("\"{addr}\" is not host:port (e.g. 127.0.0.1:6432)"),
                    );
                }
            }
        }
        let positive = |w: &Self, key: &str, max: u64| -> Option<String> {
            let v = w.get(key)?;
            match v.parse::<u64>() {
                Ok(n) if n >= 1 && n <= max => None,
                _ => Some(format!("must be between 1 and {max}, not {v}")),
            }
        };
        for (key, max) in [
            ("sharding.partitions", 1_000_000),
            ("pool.size", 10_000),
            ("proxy.workers", 1024),
            ("pool.checkout_timeout_ms", 3_600_000),
            ("recorder.history_minutes", 60 * 24 * 366),
            ("routing.merge_max_rows", 100_000_000),
            ("migration.max_concurrent", 1_000),
            ("migration.catch_up_rows", 100_000_000),
        ] {
            if let Some(m) = positive(self, key, max) {
                self.issue(key, self.at(key), m);
            }
        }
        for key in [
            "forecast.bucket",
            "forecast.horizon",
            "forecast.interval",
            "forecast.history",
            "transactions.recover_after",
            "migration.hold_timeout",
            "migration.heartbeat",
            "migration.heartbeat_timeout",
            "migration.poll",
            "planner.interval",
            "planner.horizon",
            "planner.cooldown",
            "planner.window",
            "monitor.interval",
            "monitor.sizes_interval",
        ] {
            if let Some(d) = self.get(key).map(str::to_string) {
                if super::parse_duration(&d).is_none() {
                    self.issue(
                        key,
                        self.at(key),
                        format!("\"{d}\" is not a duration like 10s, 15m, 2h or 1d"),
                    );
                }
            }
        }
        for key in ["migration.copy_rate", "planner.copy_rate"] {
            if let Some(r) = self.get(key).map(str::to_string) {
                if super::parse_bytes(&r).is_none() {
                    self.issue(
                        key,
                        self.at(key),
                        format!("\"{r}\" is not a rate like 64MB (per second; 0 for no limit)"),
                    );
                }
            }
        }
        self.planner();
        if let Some(q) = self.get("forecast.quantile").map(str::to_string) {
            if !q.parse::<f64>().is_ok_and(|q| q > 0.5 && q < 1.0) {
                self.issue(
                    "forecast.quantile",
                    self.at("forecast.quantile"),
                    format!("must be between 0.5 and 1 (e.g. 0.9), not {q}"),
                );
            }
        }
        if let Some(d) = self.get("sharding.default_node").map(str::to_string) {
            if !names.contains_key(&d) {
                let mut known: Vec<&String> = names.keys().collect();
                known.sort();
                self.issue(
                    "sharding.default_node",
                    self.at("sharding.default_node"),
                    format!("no node is named \"{d}\" (nodes: {known:?})"),
                );
            }
        }
        if let Some(m) = self.get("auth.method").map(str::to_string) {
            if m != "trust" && m != "md5" {
                self.issue(
                    "auth.method",
                    self.at("auth.method"),
                    format!("\"{m}\" is not supported; use trust or md5"),
                );
            } else if m == "md5" && self.count("auth.users") == 0 {
                self.issue(
                    "auth.method",
                    self.at("auth.method"),
                    "md5 needs at least one [[auth.users]] entry".into(),
                );
            }
        }
    }
}

impl Walk<'_> {
    /// `[planner]` and the nodes' capacities and exporters.
    fn planner(&mut self) {
        if let Some(p) = self.get("planner.policy").map(str::to_string) {
            let msg = match p.as_str() {
                "predictive" | "reactive" | "off" => None,
                "oracle" => Some("oracle reads the future: it exists only in `shardcast simulate`; use predictive, reactive or off".to_string()),
                _ => Some(format!("\"{p}\" is not a policy; use predictive, reactive or off")),
            };
            if let Some(m) = msg {
                self.issue("planner.policy", self.at("planner.policy"), m);
            }
        }
        if let Some(t) = self.get("planner.threshold").map(str::to_string) {
            if !t.parse::<f64>().is_ok_and(|t| t > 0.0 && t <= 1.0) {
                self.issue(
                    "planner.threshold",
                    self.at("planner.threshold"),
                    format!("must be in (0, 1] (a utilization, e.g. 0.8), not {t}"),
                );
            }
        }
        if let Some(h) = self.get("planner.horizon").and_then(super::parse_duration) {
            let bucket = self
                .get("forecast.bucket")
                .and_then(super::parse_duration)
                .unwrap_or_else(super::defaults::bucket);
            if h < bucket {
                self.issue(
                    "planner.horizon",
                    self.at("planner.horizon"),
                    format!(
                        "{h}s is shorter than one forecast bucket ([forecast] bucket = {bucket}s)"
                    ),
                );
            }
        }
        if let Some(m) = self.get("planner.max_concurrent").map(str::to_string) {
            if !m.parse::<u64>().is_ok_and(|m| (1..=1000).contains(&m)) {
                self.issue(
                    "planner.max_concurrent",
                    self.at("planner.max_concurrent"),
                    format!("must be between 1 and 1000, not {m}"),
                );
            }
        }
        for i in 0..self.count("nodes") {
            let key = format!("nodes[{i}].capacity_qps");
            if let Some(c) = self.get(&key).map(str::to_string) {
                if !c.parse::<f64>().is_ok_and(|c| c > 0.0 && c.is_finite()) {
                    self.issue(
                        &key,
                        self.at(&key),
                        format!("must be a positive number of requests per second, not {c}"),
                    );
                }
            }
            let key = format!("nodes[{i}].exporter");
            if let Some(u) = self.get(&key).map(str::to_string) {
                if !u.starts_with("http://") {
                    self.issue(
                        &key,
                        self.at(&key),
                        format!("\"{u}\" is not a URL like http://host:9100/metrics"),
                    );
                }
            }
        }
    }
}

/// Every problem found in `text`; empty when it is a valid config.
pub fn validate(text: &str) -> Vec<ConfigIssue> {
    let (root, errors) = DeTable::parse_recoverable(text);
    let mut w = Walk {
        text,
        issues: Vec::new(),
        spans: HashMap::new(),
        values: HashMap::new(),
    };
    for e in errors {
        let at = e.span().map(|s| s.start).unwrap_or(0);
        w.issue("(syntax)", at, e.message().trim().to_string());
    }
    let span = root.span();
    w.table("", root.get_ref(), span, ROOT);
    w.semantics();
    w.issues.sort_by_key(|i| i.line);
    w.issues
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:6432"
admin_listen = "127.0.0.1:9187"
database = "app"

[[nodes]]
name = "a"
url = "postgres://postgres@127.0.0.1:5432/shard_a"

[[nodes]]
name = "b"
url = "postgres://postgres@127.0.0.1:5432/shard_b"

[[tables]]
name = "accounts"
shard_key = "id"
key_type = "bigint"

[sharding]
partitions = 16
"#;

    fn issues(text: &str) -> Vec<(String, usize)> {
        validate(text)
            .into_iter()
            .map(|i| (i.key, i.line.unwrap()))
            .collect()
    }

    #[test]
    fn the_sample_and_this_config_are_valid() {
        assert_eq!(issues(GOOD), vec![]);
        let sample = include_str!("../../config/shardcast.toml");
        assert_eq!(issues(sample), vec![]);
        assert!(crate::config::Config::parse(sample).is_ok());
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let bad = GOOD
            .replace("database = \"app\"", "database = \"app\"\nlisen = 1")
            .replace("name = \"b\"", "name = \"a\"")
            .replace("key_type = \"bigint\"", "key_type = \"int8\"")
            .replace("partitions = 16", "partitions = 0\ndefault_node = \"zz\"");
        let got = issues(&bad);
        assert_eq!(
            got,
            vec![
                ("proxy.lisen".to_string(), 6),
                ("nodes[1].name".to_string(), 13),
                ("tables[0].key_type".to_string(), 19),
                ("sharding.partitions".to_string(), 22),
                ("sharding.default_node".to_string(), 23),
            ]
        );
    }

    #[test]
    fn missing_and_mistyped_keys() {
        let t = "[proxy]\nlisten = 5\n[[nodes]]\nname = \"a\"\n[[tables]]\nname = \"t\"\nkey_type = \"text\"\n";
        let got = issues(t);
        assert!(got.contains(&("proxy.listen".into(), 2)), "{got:?}");
        assert!(got.contains(&("proxy.admin_listen".into(), 1)), "{got:?}");
        assert!(got.contains(&("nodes[0].url".into(), 3)), "{got:?}");
        assert!(got.contains(&("tables[0].shard_key".into(), 5)), "{got:?}");
    }

    #[test]
    fn urls_addresses_auth_and_syntax() {
        let bad = GOOD
            .replace("postgres://postgres@127.0.0.1:5432/shard_a", "mysql://x")
            .replace("127.0.0.1:9187", "9187")
            .replace("[sharding]", "[auth]\nmethod = \"md5\"\n[sharding]");
        let got: Vec<String> = issues(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            got,
            vec!["proxy.admin_listen", "nodes[0].url", "auth.method"]
        );
        let syntax = issues("[proxy\nlisten = ");
        assert_eq!(syntax[0], ("(syntax)".to_string(), 1));
    }

    #[test]
    fn planner_section() {
        let c = super::super::Config::parse(&format!(
            "{GOOD}\n[planner]\npolicy = \"reactive\"\nthreshold = 0.75\nhorizon = \"30m\"\ncopy_rate = \"32MB\"\n"
        ))
        .unwrap();
        let s = c.planner_settings();
        assert_eq!(s.policy, crate::planner::Policy::Reactive);
        assert_eq!(
            (s.threshold, s.horizon, s.copy_rate),
            (0.75, 1800, 32.0 * 1024.0 * 1024.0)
        );
        let bad = format!(
            "{GOOD}\n[planner]\npolicy = \"clairvoyant\"\nthreshold = 1.5\nhorizon = \"10s\"\n"
        );
        let got: Vec<String> = issues(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            got,
            vec!["planner.policy", "planner.threshold", "planner.horizon"]
        );
        let msgs = super::super::Config::parse(&bad).unwrap_err();
        assert!(
            msgs[2].message.contains("shorter than one forecast bucket"),
            "{msgs:?}"
        );
        let oracle = format!("{GOOD}\n[planner]\npolicy = \"oracle\"\nthreshold = 0\n");
        let msgs = super::super::Config::parse(&oracle).unwrap_err();
        assert!(msgs[0].message.contains("simulate"), "{msgs:?}");
        assert_eq!(msgs[1].key, "planner.threshold");
    }

    #[test]
    fn forecast_section() {
        let good =
            format!("{GOOD}\n[forecast]\nbucket = \"1m\"\nhistory = \"3d\"\nquantile = 0.9\n");
        assert_eq!(issues(&good), vec![]);
        let c = crate::config::Config::parse(&good).unwrap();
        assert_eq!(c.forecast.history, 3 * 86_400);
        let bad = format!("{GOOD}\n[forecast]\nhistory = \"two days\"\nquantile = 1.5\n");
        let got: Vec<String> = issues(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, vec!["forecast.history", "forecast.quantile"]);
    }
}

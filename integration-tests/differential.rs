//! Differential test of cross-shard reads: random queries run against one
//! reference PostgreSQL holding every row and through shardcast on three
//! nodes holding the same rows sharded. Results must be equal — as
//! sequences where ORDER BY fixes the order, as multisets otherwise — and
//! a query shardcast cannot answer exactly must be refused with `0A000`.
//! Seeded and reproducible (`DIFF_SEED`, `DIFF_QUERIES`); a difference
//! prints the query.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{Cluster, Proxy};

const SCHEMA: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, grp integer, qty integer, price numeric(12,2),
                    name text, at timestamptz, flag boolean, big bigint);
CREATE INDEX ON items (hashint8extended(id, 0));
CREATE TABLE cats (grp integer PRIMARY KEY, label text);
INSERT INTO cats SELECT g, 'label' || (g % 3) FROM generate_series(0, 9) g;";

const WORDS: &[&str] = &[
    "ant", "Bee", "cat", "dog", "eel", "fox", "", "Émile", "zebra", "a b",
];

/// SQL for a value, NULL with probability `1 - p`.
fn maybe(rng: &mut StdRng, p: f64, v: impl FnOnce(&mut StdRng) -> String) -> String {
    if rng.random_bool(p) {
        v(rng)
    } else {
        "NULL".into()
    }
}

/// One row of `items`, as SQL values.
fn row(rng: &mut StdRng, id: i64) -> String {
    let grp = maybe(rng, 0.9, |r| r.random_range(0..10).to_string());
    let qty = maybe(rng, 0.85, |r| r.random_range(-50..500).to_string());
    let price = maybe(rng, 0.8, |r| {
        format!(
            "{}.{:02}",
            r.random_range(-100..10_000),
            r.random_range(0..100)
        )
    });
    let name = maybe(rng, 0.9, |r| {
        format!("'{}'", WORDS[r.random_range(0..WORDS.len())])
    });
    let at = maybe(rng, 0.85, |r| {
        format!(
            "'2026-01-01 00:00:00+00'::timestamptz + interval '{} minutes'",
            r.random_range(0..100_000)
        )
    });
    let flag = maybe(rng, 0.8, |r| r.random_bool(0.6).to_string());
    let big = maybe(rng, 0.9, |r| {
        r.random_range(i64::MIN / 4..i64::MAX / 4).to_string()
    });
    format!("({id}, {grp}, {qty}, {price}, {name}, {at}, {flag}, {big})")
}

/// A generated query and how to compare its results.
struct Case {
    sql: String,
    /// ORDER BY fixes the whole order: compare as sequences.
    ordered: bool,
    /// Expected to be refused with 0A000 (a construct that cannot be merged).
    refused: bool,
}

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn where_clause(rng: &mut StdRng) -> String {
    let mut terms = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        terms.push(match rng.random_range(0..8) {
            0 => format!("qty > {}", rng.random_range(-60..400)),
            1 => format!("grp = {}", rng.random_range(0..10)),
            2 => "name IS NOT NULL".to_string(),
            3 => format!("price < {}", rng.random_range(0..5000)),
            4 => {
                let ids: Vec<String> = (0..rng.random_range(1..8))
                    .map(|_| rng.random_range(1..700).to_string())
                    .collect();
                format!("id IN ({})", ids.join(", "))
            }
            5 => "flag".to_string(),
            6 => format!(
                "at < '2026-02-01'::timestamptz + interval '{} hours'",
                rng.random_range(0..400)
            ),
            _ => format!("name > '{}'", WORDS[rng.random_range(0..WORDS.len())]),
        });
    }
    if terms.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", terms.join(" AND "))
    }
}

const AGGS: &[&str] = &[
    "count(*)",
    "count(qty)",
    "sum(qty)",
    "sum(price)",
    "sum(big)",
    "avg(qty)",
    "avg(price)",
    "avg(big)",
    "min(name)",
    "max(name)",
    "min(at)",
    "max(at)",
    "max(price)",
    "bool_and(flag)",
    "bool_or(flag)",
    "count(DISTINCT grp)",
    "count(DISTINCT name)",
    "sum(DISTINCT qty)",
    "count(*) FILTER (WHERE flag)",
    "sum(qty) FILTER (WHERE grp > 4)",
    "avg(price) FILTER (WHERE qty > 10)",
    "sum(qty) + count(*)",
    "coalesce(max(qty), -1)",
    "max(qty) - min(qty)",
];

fn aggs(rng: &mut StdRng) -> Vec<String> {
    (0..rng.random_range(1..4))
        .map(|_| pick(rng, AGGS).to_string())
        .collect()
}

fn limit(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => format!(" LIMIT {}", rng.random_range(0..20)),
        1 => format!(
            " LIMIT {} OFFSET {}",
            rng.random_range(1..15),
            rng.random_range(0..20)
        ),
        2 => format!(" OFFSET {}", rng.random_range(0..30)),
        _ => String::new(),
    }
}

fn nulls(rng: &mut StdRng) -> &'static str {
    pick(
        rng,
        &[
            "",
            " ASC",
            " DESC",
            " NULLS FIRST",
            " DESC NULLS LAST",
            " ASC NULLS LAST",
        ],
    )
}

fn case(rng: &mut StdRng) -> Case {
    let w = where_clause(rng);
    match rng.random_range(0..12) {
        // Row-wise, unordered: concatenation.
        0 => Case {
            sql: format!("SELECT id, name, qty FROM items{w}"),
            ordered: false,
            refused: false,
        },
        // Aggregates over everything.
        1 | 2 => Case {
            sql: format!("SELECT {} FROM items{w}", aggs(rng).join(", ")),
            ordered: false,
            refused: false,
        },
        // GROUP BY, HAVING, ORDER BY over the groups, LIMIT.
        3 | 4 => {
            let g = pick(rng, &["grp", "flag", "name", "grp, flag"]);
            let a = aggs(rng);
            let having = if rng.random_bool(0.4) {
                format!(" HAVING count(*) > {}", rng.random_range(0..40))
            } else {
                String::new()
            };
            let ordered = rng.random_bool(0.7);
            let tail = if ordered {
                let keys: Vec<String> = g
                    .split(", ")
                    .map(|k| format!("{k}{}", nulls(rng)))
                    .collect();
                format!(" ORDER BY {}{}", keys.join(", "), limit(rng))
            } else {
                String::new()
            };
            Case {
                sql: format!("SELECT {g}, {} FROM items{w} GROUP BY {g}{having}{tail}", a.join(", ")),
                ordered,
                refused: false,
            }
        }
        // ORDER BY with ties and NULLs, made total by the key; positions and aliases.
        5 | 6 => {
            let (cols, key) = match rng.random_range(0..4) {
                0 => ("id, name, grp", "grp"),
                1 => ("id, qty AS q, at", "q"),
                2 => ("id, price, name", "3"),
                _ => ("id, at, flag", "at"),
            };
            Case {
                sql: format!(
                    "SELECT {cols} FROM items{w} ORDER BY {key}{}, id{}",
                    nulls(rng),
                    limit(rng)
                ),
                ordered: true,
                refused: false,
            }
        }
        // DISTINCT.
        7 => {
            let ordered = rng.random_bool(0.5);
            let tail = if ordered {
                format!(" ORDER BY 1{}, 2{}", nulls(rng), nulls(rng))
            } else {
                String::new()
            };
            Case {
                sql: format!("SELECT DISTINCT grp, flag FROM items{w}{tail}"),
                ordered,
                refused: false,
            }
        }
        // A join with an unsharded table every node holds.
        8 => Case {
            sql: format!(
                "SELECT c.label, count(*), sum(i.qty) FROM items i JOIN cats c ON c.grp = i.grp{} GROUP BY c.label ORDER BY 1",
                if rng.random_bool(0.5) {
                    format!(" WHERE i.qty > {}", rng.random_range(-60..400))
                } else {
                    String::new()
                }
            ),
            ordered: true,
            refused: false,
        },
        // A sub-select in FROM.
        9 => Case {
            sql: format!(
                "SELECT count(*), sum(q), max(n) FROM (SELECT qty AS q, name AS n FROM items{w}) s"
            ),
            ordered: false,
            refused: false,
        },
        // A sub-select in FROM that itself needs merging.
        10 => {
            let (sql, ordered) = match rng.random_range(0..4) {
                0 => (format!("SELECT count(*) FROM (SELECT DISTINCT grp FROM items{w}) d"), false),
                1 => (
                    format!("SELECT avg(c), max(c), sum(s) FROM (SELECT grp, count(*) AS c, sum(qty) AS s FROM items{w} GROUP BY grp) t"),
                    false,
                ),
                2 => (
                    format!("SELECT t.g, t.c FROM (SELECT grp AS g, count(*) AS c FROM items{w} GROUP BY grp) t WHERE t.c > {} ORDER BY t.g NULLS FIRST", rng.random_range(0..60)),
                    true,
                ),
                _ => (
                    format!("SELECT * FROM (SELECT id, qty FROM items{w} ORDER BY qty DESC NULLS LAST, id LIMIT {}) t ORDER BY id", rng.random_range(0..30)),
                    true,
                ),
            };
            Case {
                sql,
                ordered,
                refused: false,
            }
        }
        // Constructs that cannot be merged exactly: refused.
        _ => Case {
            sql: pick(
                rng,
                &[
                    "SELECT id, row_number() OVER (ORDER BY id) FROM items",
                    "SELECT string_agg(name, ',') FROM items",
                    "SELECT id FROM items WHERE qty > (SELECT avg(qty) FROM items)",
                    "SELECT grp FROM items UNION SELECT grp FROM items",
                    "WITH x AS (SELECT * FROM items) SELECT count(*) FROM x",
                    "SELECT a.id FROM items a JOIN items b ON a.grp = b.grp",
                    "SELECT c.label, i.id FROM cats c LEFT JOIN items i ON i.grp = c.grp",
                    "SELECT d.grp, i.id FROM (SELECT DISTINCT grp FROM items) d JOIN items i ON i.grp = d.grp",
                ],
            )
            .to_string(),
            ordered: false,
            refused: true,
        },
    }
}

/// Rows as text, NULL as None; or the SQLSTATE of an error.
async fn run(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()),
        Err(e) => Err(e
            .as_db_error()
            .map(|d| format!("{} {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string())),
    }
}

/// Any value, as the bytes the server sent (binary format).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// The first `qty > N` literal as a parameter: `qty > $1` and N.
fn parameterized(sql: &str) -> Option<(String, i32)> {
    let at = sql.find("qty > ")? + "qty > ".len();
    let len = sql[at..]
        .char_indices()
        .take_while(|(i, c)| c.is_ascii_digit() || (*i == 0 && *c == '-'))
        .count();
    let n = sql[at..at + len].parse().ok()?;
    Some((format!("{}$1{}", &sql[..at], &sql[at + len..]), n))
}

/// The extended protocol with binary results (and a parameter when the
/// query has a `qty > N`): rows as raw bytes, or the error.
async fn run_extended(c: &Client, sql: &str) -> Result<Vec<Vec<Option<Raw>>>, String> {
    let rows = match parameterized(sql) {
        Some((sql, n)) => c.query(&sql, &[&n]).await,
        None => c.query(sql, &[]).await,
    };
    match rows {
        Ok(rows) => Ok(rows
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get::<_, Option<Raw>>(i)).collect())
            .collect()),
        Err(e) => Err(e
            .as_db_error()
            .map(|d| format!("{} {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_queries_answer_as_one_database() {
    let seed: u64 = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261125);
    let queries: usize = std::env::var("DIFF_QUERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let shards = Cluster::start(3);
    let reference = Cluster::start(1);
    shards.on_all(SCHEMA);
    reference.on_all(SCHEMA);
    let proxy = Proxy::builder()
        .table("items", "id", "bigint")
        .partitions(12)
        .start(&shards);
    let sc = proxy.client().await;
    let rf = reference.nodes[0].client(&reference.db).await;

    let mut rng = StdRng::seed_from_u64(seed);
    let rows: Vec<String> = (1..=600).map(|id| row(&mut rng, id)).collect();
    rf.batch_execute(&format!("INSERT INTO items VALUES {}", rows.join(", ")))
        .await
        .unwrap();
    for r in &rows {
        sc.batch_execute(&format!("INSERT INTO items VALUES {r}"))
            .await
            .unwrap_or_else(|e| panic!("insert {r}: {e}"));
    }

    let (mut same, mut refused, mut extended) = (0, 0, 0);
    for i in 0..queries {
        let c = case(&mut rng);
        let want = run(&rf, &c.sql).await;
        let got = run(&sc, &c.sql).await;
        match (&want, &got) {
            (Ok(w), Ok(g)) => {
                assert!(!c.refused, "query {i} should have been refused: {}", c.sql);
                let (mut w, mut g) = (w.clone(), g.clone());
                if !c.ordered {
                    w.sort();
                    g.sort();
                }
                assert_eq!(g, w, "query {i} (seed {seed}) differs: {}", c.sql);
                same += 1;
                // The same through the extended protocol, binary results.
                let want = run_extended(&rf, &c.sql).await;
                let got = run_extended(&sc, &c.sql).await;
                let (Ok(mut w), Ok(mut g)) = (want.clone(), got.clone()) else {
                    panic!(
                        "query {i} (extended): {}\nreference: {want:?}\nshardcast: {got:?}",
                        c.sql
                    );
                };
                if !c.ordered {
                    w.sort();
                    g.sort();
                }
                assert_eq!(g, w, "query {i} (seed {seed}, extended) differs: {}", c.sql);
                extended += 1;
            }
            (_, Err(e)) if e.starts_with("0A000") => {
                assert!(c.refused, "query {i} (seed {seed}) refused: {}\n{e}", c.sql);
                refused += 1;
            }
            (Err(w), Err(g)) => {
                panic!(
                    "query {i} fails on both: {}\nreference: {w}\nshardcast: {g}",
                    c.sql
                )
            }
            _ => panic!(
                "query {i} (seed {seed}): {}\nreference: {want:?}\nshardcast: {got:?}",
                c.sql
            ),
        }
    }
    eprintln!(
        "differential: {same} queries equal ({extended} also in the extended protocol, binary), {refused} refused with 0A000 (seed {seed})"
    );
    assert!(same > queries / 2);
}

/// The five statements a new user tried (issue 8), through psql, against
/// one database and through shardcast on two nodes: the same output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_five_statements_answer_as_one_database() {
    let schema = "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text);
                  CREATE INDEX ON accounts (hashint8extended(id, 0));
                  INSERT INTO accounts SELECT g, 'o' || g FROM generate_series(1, 8) g;";
    let shards = Cluster::start(2);
    let reference = Cluster::start(1);
    shards.on_all("CREATE TABLE accounts (id bigint PRIMARY KEY, owner text); CREATE INDEX ON accounts (hashint8extended(id, 0));");
    reference.on_all(schema);
    let proxy = Proxy::builder()
        .table("accounts", "id", "bigint")
        .partitions(8)
        .start(&shards);
    let c = proxy.client().await;
    for id in 1..=8i64 {
        c.execute(
            "INSERT INTO accounts VALUES ($1, $2)",
            &[&id, &format!("o{id}")],
        )
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("accounts.tsv");
    std::fs::write(&tsv, "2000\tx\n2001\ty\n2002\tz\n").unwrap();
    let script = format!(
        "SELECT count(*) FROM accounts;
         SELECT id FROM accounts ORDER BY id LIMIT 3;
         SELECT sum(id), max(id) FROM accounts;
         INSERT INTO accounts(id, owner) VALUES (1000,'a'),(1001,'b');
         \\copy accounts from '{}'
         SELECT count(*), min(owner), max(owner) FROM accounts;",
        tsv.display()
    );
    let file = dir.path().join("script.sql");
    std::fs::write(&file, &script).unwrap();
    let run = |url: String| {
        let o = std::process::Command::new("psql")
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                file.to_str().unwrap(),
                &url,
            ])
            .output()
            .expect("run psql");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let out = run(proxy.url());
    let direct = run(reference.nodes[0].url(&reference.db));
    assert_eq!(out, direct);
    assert!(out.starts_with("8\n1\n2\n3\n36|8"), "{out}");
}

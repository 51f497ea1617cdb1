//! Router tests: what each kind of statement routes by.

use proptest::prelude::*;

use super::sql::{Analyzer, Command, KeyRef, KeyValue, RouteError, Shape, Target};
use crate::config::{KeyType, TableConfig};

fn analyzer() -> Analyzer {
    let t = |name: &str, key: &str, key_type| TableConfig {
        name: name.into(),
        shard_key: key.into(),
        key_type,
    };
    Analyzer::new(&[
        t("accounts", "id", KeyType::Bigint),
        t("pgbench_accounts", "aid", KeyType::Integer),
        t("users", "email", KeyType::Text),
        t("sessions", "sid", KeyType::Uuid),
    ])
}

fn one(sql: &str) -> Shape {
    let shapes = analyzer()
        .analyze(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(shapes.len(), 1, "{sql}");
    shapes[0].clone()
}

fn keys(sql: &str) -> Vec<KeyRef> {
    match one(sql).target {
        Target::Keys { keys, .. } => keys,
        other => panic!("{sql}: expected keys, got {other:?}"),
    }
}

fn int(v: i64) -> KeyRef {
    KeyRef::Value(KeyValue::Int(v))
}

fn all_shards(sql: &str) -> bool {
    matches!(one(sql).target, Target::AllShards { .. })
}

#[test]
fn no_table_and_transaction_control() {
    for (sql, cmd) in [
        ("SELECT 1", Command::Select),
        ("select now()", Command::Select),
        ("BEGIN", Command::Begin),
        ("begin isolation level serializable", Command::Begin),
        ("START TRANSACTION", Command::Begin),
        ("COMMIT", Command::Commit),
        ("END", Command::Commit),
        ("ROLLBACK", Command::Rollback),
        ("ABORT", Command::Rollback),
        ("SAVEPOINT a", Command::Savepoint),
        ("RELEASE SAVEPOINT a", Command::Savepoint),
        ("ROLLBACK TO SAVEPOINT a", Command::Savepoint),
        ("SET search_path = public", Command::Set),
        ("SET LOCAL statement_timeout = '5s'", Command::Set),
        ("SHOW server_version", Command::Show),
    ] {
        let s = one(sql);
        assert_eq!(s.command, cmd, "{sql}");
        assert_eq!(s.target, Target::NoTable, "{sql}");
    }
}

#[test]
fn unsharded_and_catalog_tables() {
    assert_eq!(
        one("SELECT * FROM pgbench_branches WHERE bid = 1").target,
        Target::Unsharded
    );
    assert_eq!(
        one("SELECT relname FROM pg_catalog.pg_class c WHERE c.relkind = 'r'").target,
        Target::Unsharded
    );
    assert_eq!(
        one("SELECT * FROM information_schema.tables").target,
        Target::Unsharded
    );
    // psql's \d uses operators sqlparser may not read; either way it is not sharded.
    let d = one("SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) '^(accounts)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3;");
    assert_eq!(d.command, Command::Select);
    assert_eq!(d.target, Target::Unsharded);
}

#[test]
fn where_key_equals() {
    assert_eq!(keys("SELECT * FROM accounts WHERE id = 42"), vec![int(42)]);
    assert_eq!(keys("SELECT * FROM accounts WHERE 42 = id"), vec![int(42)]);
    assert_eq!(keys("select * from ACCOUNTS where ID = -7"), vec![int(-7)]);
    assert_eq!(
        keys("SELECT * FROM accounts WHERE id = '42'"),
        vec![int(42)]
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE id = 42::bigint"),
        vec![int(42)]
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE id = CAST(42 AS bigint)"),
        vec![int(42)]
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE (id = $1) AND owner = 'x'"),
        vec![KeyRef::Param(1)]
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE owner = $1 AND id = $2::int8"),
        vec![KeyRef::Param(2)]
    );
    assert_eq!(
        keys("SELECT * FROM public.accounts a WHERE a.id = 5"),
        vec![int(5)]
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE accounts.id = 5"),
        vec![int(5)]
    );
    assert_eq!(
        keys("SELECT a.* FROM accounts a JOIN owners o ON o.id = a.owner WHERE a.id = 9"),
        vec![int(9)]
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE id IN (1, 2, 3)"),
        vec![int(1), int(2), int(3)]
    );
    assert_eq!(
        keys("SELECT * FROM accounts WHERE id = 1 FOR UPDATE"),
        vec![int(1)]
    );
}

#[test]
fn no_usable_key_touches_every_shard() {
    assert!(all_shards("SELECT * FROM accounts"));
    assert!(all_shards("SELECT count(*) FROM accounts"));
    assert!(all_shards("SELECT * FROM accounts WHERE id > 5"));
    assert!(all_shards(
        "SELECT * FROM accounts WHERE id = 5 OR owner = 'x'"
    ));
    assert!(all_shards("SELECT * FROM accounts WHERE owner = 'x'"));
    assert!(all_shards(
        "SELECT * FROM accounts a JOIN owners o ON o.id = a.owner WHERE id = 5"
    ));
    assert!(all_shards(
        "SELECT * FROM accounts WHERE id = (SELECT max(id) FROM owners)"
    ));
    assert!(all_shards(
        "SELECT * FROM accounts a, accounts b WHERE a.id = 1 AND b.id = 1"
    ));
    assert!(all_shards("DELETE FROM accounts"));
    assert!(all_shards("UPDATE accounts SET balance = 0"));
    assert!(all_shards("INSERT INTO accounts SELECT * FROM accounts"));
    assert!(all_shards("INSERT INTO accounts VALUES (1, 'x')"));
    assert!(all_shards("COPY accounts FROM STDIN"));
    let s = one("SELECT * FROM accounts");
    assert_eq!(
        s.target,
        Target::AllShards {
            table: "accounts".into(),
            key_column: "id".into()
        }
    );
}

#[test]
fn writes_by_key() {
    assert_eq!(
        keys("INSERT INTO accounts (id, owner) VALUES (1, 'a')"),
        vec![int(1)]
    );
    assert_eq!(
        keys("INSERT INTO accounts (owner, id) VALUES ('a', 1), ('b', 2), ('c', -3)"),
        vec![int(1), int(2), int(-3)]
    );
    assert_eq!(
        keys("INSERT INTO accounts (id, owner) VALUES ($1, $2)"),
        vec![KeyRef::Param(1)]
    );
    assert_eq!(
        keys("INSERT INTO accounts (id, owner) VALUES (7, 'x') ON CONFLICT (id) DO UPDATE SET owner = excluded.owner RETURNING id"),
        vec![int(7)]
    );
    assert_eq!(
        keys("UPDATE accounts SET balance = balance + 1 WHERE id = 3"),
        vec![int(3)]
    );
    assert_eq!(
        keys("DELETE FROM accounts WHERE id = 3 RETURNING *"),
        vec![int(3)]
    );
    assert_eq!(
        one("DELETE FROM accounts WHERE id = 3").command,
        Command::Delete
    );
}

#[test]
fn insert_without_columns_uses_the_catalog_position() {
    let mut a = analyzer();
    assert!(matches!(
        a.analyze("INSERT INTO accounts VALUES (1, 'x')").unwrap()[0].target,
        Target::AllShards { .. }
    ));
    a.set_key_position("accounts", 1);
    let s = a
        .analyze("INSERT INTO accounts VALUES ('x', 5), ('y', 6)")
        .unwrap();
    assert!(
        matches!(&s[0].target, Target::Keys { keys, .. } if *keys == vec![int(5), int(6)]),
        "{s:?}"
    );
}

#[test]
fn changing_the_key_is_refused() {
    let e = analyzer()
        .analyze("UPDATE accounts SET id = 5 WHERE id = 4")
        .unwrap_err();
    assert!(matches!(e, RouteError::KeyUpdate { .. }));
}

#[test]
fn key_types() {
    assert_eq!(
        keys("SELECT * FROM users WHERE email = 'a@b.c'"),
        vec![KeyRef::Value(KeyValue::Text("a@b.c".into()))]
    );
    assert_eq!(
        keys("SELECT * FROM users WHERE email = E'it\\'s'"),
        vec![KeyRef::Value(KeyValue::Text("it's".into()))]
    );
    let u = keys("SELECT * FROM sessions WHERE sid = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid");
    assert!(matches!(u[0], KeyRef::Value(KeyValue::Uuid(b)) if b[0] == 0xa0));
    assert!(analyzer()
        .analyze("SELECT * FROM accounts WHERE id = 'abc'")
        .is_err());
    assert!(analyzer()
        .analyze("SELECT * FROM pgbench_accounts WHERE aid = 99999999999")
        .is_err());
    assert_eq!(
        keys("SELECT * FROM accounts WHERE id = NULL"),
        vec![KeyRef::Value(KeyValue::Null)]
    );
}

#[test]
fn pgbench_statements() {
    let lit = [
        ("UPDATE pgbench_accounts SET abalance = abalance + -4130 WHERE aid = 35013;", Some(35013)),
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 35013;", Some(35013)),
        ("UPDATE pgbench_tellers SET tbalance = tbalance + -4130 WHERE tid = 9;", None),
        ("UPDATE pgbench_branches SET bbalance = bbalance + -4130 WHERE bid = 1;", None),
        ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (9, 1, 35013, -4130, CURRENT_TIMESTAMP);", None),
    ];
    for (sql, key) in lit {
        let s = one(sql);
        match key {
            Some(k) => assert_eq!(
                s.target,
                Target::Keys {
                    table: "pgbench_accounts".into(),
                    key_type: KeyType::Integer,
                    keys: vec![int(k)]
                },
                "{sql}"
            ),
            None => assert_eq!(s.target, Target::Unsharded, "{sql}"),
        }
    }
    assert_eq!(
        keys("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"),
        vec![KeyRef::Param(2)]
    );
    assert_eq!(
        keys("SELECT abalance FROM pgbench_accounts WHERE aid = $1;"),
        vec![KeyRef::Param(1)]
    );
}

#[test]
fn several_statements_in_one_string() {
    let s = analyzer()
        .analyze("BEGIN; UPDATE accounts SET balance = 1 WHERE id = 5; COMMIT;")
        .unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].command, Command::Begin);
    assert_eq!(
        s[1].target,
        Target::Keys {
            table: "accounts".into(),
            key_type: KeyType::Bigint,
            keys: vec![int(5)]
        }
    );
    assert_eq!(s[2].command, Command::Commit);
}

#[test]
fn unparseable_statements_are_classified_conservatively() {
    let s = one("VACUUM (VERBOSE, ANALYZE, SOME_FUTURE_OPTION) accounts");
    assert!(matches!(
        s.target,
        Target::AllShards { .. } | Target::Unsharded
    ));
    let s = one("SELECT * FROM accounts WHERE id = 1 AND tstzrange(a, b) @@@@ 'x'");
    assert!(matches!(
        s.target,
        Target::AllShards { .. } | Target::Keys { .. }
    ));
}

proptest! {
    /// The cache must give what a fresh parse gives, whatever the literals.
    #[test]
    fn cached_shapes_match_fresh_ones(id in any::<i64>(), other in any::<i32>(), text in "[a-z' ]{0,12}") {
        let warm = analyzer();
        let quoted = text.replace('\'', "''");
        let sqls = [
            format!("SELECT * FROM accounts WHERE id = {id}"),
            format!("SELECT * FROM accounts WHERE owner = '{quoted}' AND id = {id}"),
            format!("INSERT INTO accounts (id, owner) VALUES ({id}, '{quoted}'), ({other}, 'x')"),
            format!("SELECT * FROM users WHERE email = '{quoted}'"),
        ];
        for sql in &sqls {
            // Warm the cache with other literals, then compare with a cold analyzer.
            let _ = warm.analyze(&sql.replace(&id.to_string(), "1"));
            let a = warm.analyze(sql);
            let b = analyzer().analyze(sql);
            prop_assert_eq!(a, b, "{}", sql);
        }
    }
}

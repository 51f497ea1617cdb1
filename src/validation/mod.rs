//! Automated Validation Module: before a cut-over commits, a partition's
//! rows on the source and on the target must agree — per sharded table,
//! the row count and an order-independent checksum (`bit_xor` of each
//! row's text hashed), both computed on the servers so the partition never
//! passes through the proxy. The whole range is compared just before
//! writes are held, except the keys the change log still names; while
//! writes are held only those keys, and the ones changed since, are
//! compared — so the pause does not grow with the partition. After the cut-over, a read through the proxy
//! checks that the partition answers from its new home.

use tokio_postgres::GenericClient;

use crate::sharding::triggers::Table;

/// One table's share of a partition on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub rows: i64,
    pub checksum: i64,
}

/// The digest of rows hashing into `lo..=hi`, per table: of only the
/// rows whose key is in `keys[table]` (`within`), or of all rows but those.
pub async fn digest_keys(
    c: &impl GenericClient,
    tables: &[Table<'_>],
    lo: i64,
    hi: i64,
    keys: &[Vec<String>],
    within: bool,
) -> Result<Vec<Digest>, String> {
    let mut out = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let keys = keys.get(i).cloned().unwrap_or_default();
        let filter = format!(
            "{}(r.{key} = ANY($1::text[]::{ty}[]))",
            if within { "" } else { "NOT " },
            key = t.key(),
            ty = t.key_type()
        );
        let sql = format!(
            "SELECT count(*), coalesce(bit_xor(hashtextextended(r::text, 0)), 0) FROM {} AS r WHERE {} BETWEEN {lo} AND {hi} AND {filter}",
            t.name(),
            t.hash_of("r"),
        );
        let row = c
            .query_one(&sql, &[&keys])
            .await
            .map_err(|e| format!("checksum of {}: {e}", t.name()))?;
        out.push(Digest {
            rows: row.get(0),
            checksum: row.get(1),
        });
    }
    Ok(out)
}

/// Ok if source and target agree on every table; else which differs, how.
pub fn compare(
    tables: &[Table<'_>],
    source: &[Digest],
    target: &[Digest],
    source_name: &str,
    target_name: &str,
) -> Result<u64, String> {
    let mut rows = 0;
    for ((t, a), b) in tables.iter().zip(source).zip(target) {
        if a != b {
            return Err(format!(
                "validation failed for {}: {source_name} has {} rows (checksum {:x}), {target_name} has {} rows (checksum {:x})",
                t.name(),
                a.rows,
                a.checksum,
                b.rows,
                b.checksum
            ));
        }
        rows += a.rows as u64;
    }
    Ok(rows)
}

/// After the cut-over: a key of the partition read through the proxy
/// itself (routed by the new table) must return the rows its new home
/// holds for it. `expected` comes from the new home, read just before.
pub async fn read_through(
    shared: &crate::frontend::Shared,
    table: &Table<'_>,
    key: &str,
    expected: i64,
) -> Result<(), String> {
    let cfg = &shared.config;
    let listen = cfg.proxy.listen.replace("0.0.0.0", "127.0.0.1");
    let (host, port) = listen
        .rsplit_once(':')
        .ok_or_else(|| format!("[proxy] listen {listen} has no port"))?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(host.trim_matches(|c| c == '[' || c == ']'))
        .port(
            port.parse()
                .map_err(|_| format!("[proxy] listen {listen}: bad port"))?,
        )
        .dbname(&cfg.proxy.database)
        .application_name("shardcast-validation");
    match cfg.auth.users.first() {
        Some(u) => pg.user(&u.name).password(&u.password),
        None => pg.user("postgres"),
    };
    let (c, conn) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting through the proxy: {e}"))?;
    tokio::spawn(conn);
    // A literal key, so the proxy routes it like any client's statement.
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {} = '{}'",
        table.name(),
        table.key(),
        key.replace('\'', "''")
    );
    let got: i64 = c
        .query_one(&sql, &[])
        .await
        .map_err(|e| format!("read through the proxy: {e}"))?
        .get(0);
    if got != expected {
        return Err(format!(
            "read through the proxy: {} with {} = {key} has {got} rows, its new home {expected}",
            table.name(),
            table.key()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyType, TableConfig};

    #[test]
    fn a_difference_names_the_table_and_both_counts() {
        let cfg = TableConfig {
            name: "accounts".into(),
            shard_key: "id".into(),
            key_type: KeyType::Bigint,
        };
        let tables = [Table {
            index: 0,
            config: &cfg,
        }];
        let a = [Digest {
            rows: 3,
            checksum: 7,
        }];
        let b = [Digest {
            rows: 2,
            checksum: 7,
        }];
        assert_eq!(compare(&tables, &a, &a, "a", "b"), Ok(3));
        let e = compare(&tables, &a, &b, "a", "b").unwrap_err();
        assert!(
            e.contains("accounts") && e.contains("3 rows") && e.contains("2 rows"),
            "{e}"
        );
    }
}

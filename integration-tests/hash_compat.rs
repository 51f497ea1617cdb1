//! Our hash functions against a real server's, on random values.

use rand::{Rng, SeedableRng};

use crate::harness::Cluster;
use shardcast::ring::hash;

const N: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashes_match_postgres_on_random_values() {
    let cluster = Cluster::start(1);
    let c = cluster.nodes[0].client(&cluster.db).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);

    let mut ints: Vec<i64> = (0..N).map(|_| rng.random()).collect();
    ints.extend([
        0,
        1,
        -1,
        i64::MIN,
        i64::MAX,
        i32::MIN as i64,
        i32::MAX as i64,
        1 << 32,
        -(1 << 32),
    ]);
    let rows = c.query("SELECT hashint8extended(v, 0) FROM unnest($1::int8[]) WITH ORDINALITY AS t(v, i) ORDER BY i", &[&ints]).await.unwrap();
    for (v, r) in ints.iter().zip(&rows) {
        assert_eq!(
            hash::hash_int8(*v),
            r.get::<_, i64>(0),
            "hashint8extended({v}, 0)"
        );
    }

    let mut int4s: Vec<i32> = (0..N).map(|_| rng.random()).collect();
    int4s.extend([0, -1, i32::MIN, i32::MAX]);
    let rows = c.query("SELECT hashint4extended(v, 0) FROM unnest($1::int4[]) WITH ORDINALITY AS t(v, i) ORDER BY i", &[&int4s]).await.unwrap();
    for (v, r) in int4s.iter().zip(&rows) {
        assert_eq!(
            hash::hash_int4(*v),
            r.get::<_, i64>(0),
            "hashint4extended({v}, 0)"
        );
    }

    let alphabet: Vec<char> = "abcXYZ019 _-é☃😀\u{7f}".chars().collect();
    let mut texts: Vec<String> = (0..N)
        .map(|_| {
            let len = rng.random_range(0..40);
            (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect()
        })
        .collect();
    texts.extend([
        "".to_string(),
        "a".repeat(12),
        "b".repeat(13),
        "c".repeat(1000),
    ]);
    let rows = c.query("SELECT hashtextextended(v, 0) FROM unnest($1::text[]) WITH ORDINALITY AS t(v, i) ORDER BY i", &[&texts]).await.unwrap();
    for (v, r) in texts.iter().zip(&rows) {
        assert_eq!(
            hash::hash_text(v.as_bytes()),
            r.get::<_, i64>(0),
            "hashtextextended({v:?}, 0)"
        );
    }

    let uuids: Vec<[u8; 16]> = (0..N).map(|_| rng.random()).collect();
    let as_text: Vec<String> = uuids
        .iter()
        .map(|u| u.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let rows = c.query("SELECT uuid_hash_extended(v::uuid, 0) FROM unnest($1::text[]) WITH ORDINALITY AS t(v, i) ORDER BY i", &[&as_text]).await.unwrap();
    for (u, r) in uuids.iter().zip(&rows) {
        assert_eq!(
            hash::hash_uuid(u),
            r.get::<_, i64>(0),
            "uuid_hash_extended({u:?}, 0)"
        );
    }
    assert_eq!(rows.len(), N);
}

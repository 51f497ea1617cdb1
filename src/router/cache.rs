//! The shape cache, shared by all connections: normalised text → template.
//!
//! Sharded by the text's hash so concurrent lookups rarely meet on one lock
//! (and then only as readers); bounded: a full shard is cleared, which is
//! cheap and keeps whatever the workload still uses coming back.

use std::collections::HashMap;
use std::hash::BuildHasher;

use parking_lot::RwLock;

use std::sync::Arc;

use super::sql::Template;

const SHARDS: usize = 32;

type Map = HashMap<String, Arc<Template>, foldhash::fast::RandomState>;

pub(super) struct ShapeCache {
    shards: Vec<RwLock<Map>>,
    per_shard: usize,
    /// A fast seeded hasher: every statement's key is hashed on the hot path.
    hasher: foldhash::fast::RandomState,
}

impl ShapeCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Map::default())).collect(),
            per_shard: (capacity / SHARDS).max(16),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<Map> {
        // Middle bits: the maps use the low bits (bucket) and top bits (tag).
        &self.shards[(self.hasher.hash_one(key) >> 32) as usize % SHARDS]
    }

    pub fn get(&self, key: &str) -> Option<Arc<Template>> {
        self.shard(key).read().get(key).cloned()
    }

    pub fn insert(&self, key: String, t: Arc<Template>) {
        let mut shard = self.shard(&key).write();
        if shard.len() >= self.per_shard {
            shard.clear();
        }
        shard.insert(key, t);
    }
}

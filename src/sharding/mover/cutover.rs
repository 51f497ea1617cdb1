//! The cut-over: the whole range validated before writes are held, then
//! writes held in every proxy, the source fenced, the last changes
//! applied, the changed keys validated, and the new epoch committed — all
//! under the epoch lock, so no other change slips in between.

use super::*;

impl Move<'_> {
    /// Compares the whole range on A and B except the keys A's change log
    /// names (in one snapshot of A; B changes only by this migrator), so
    /// that the held writes wait only for those keys' comparison. Returns
    /// those keys per table and the rows compared.
    pub(super) async fn pre_validate(
        &self,
        a: &mut Client,
        b: &Client,
    ) -> Result<(Vec<Vec<String>>, u64), Stop> {
        let snap = self.snapshot(a).await?;
        let mut keys = vec![Vec::new(); self.tables.len()];
        for r in snap
            .query(
                "SELECT DISTINCT tbl, key FROM shardcast.changes WHERE migration = $1",
                &[&self.id()],
            )
            .await
            .map_err(self.err_at(self.source))?
        {
            if let Some(list) = keys.get_mut(r.get::<_, i32>(0) as usize) {
                list.push(r.get::<_, String>(1));
            }
        }
        let rows = self.compare_range(&snap, b, &keys, false).await?;
        Ok((keys, rows))
    }

    /// The cut-over runs under the epoch lock held by this session, so no
    /// other change can slip between the target's fence and the commit.
    pub(super) async fn cut_over(&mut self) -> Result<(), Stop> {
        self.step(
            "cutting_over",
            "holding writes, fencing the source, applying the last changes",
        )
        .await?;
        self.catalog
            .execute("SELECT pg_advisory_lock($1)", &[&epochs::EPOCH_LOCK])
            .await
            .map_err(|e| stop(format!("taking the epoch lock: {e}")))?;
        let r = self.cut_over_locked().await;
        let _ = self
            .catalog
            .execute("SELECT pg_advisory_unlock($1)", &[&epochs::EPOCH_LOCK])
            .await;
        r
    }

    async fn cut_over_locked(&mut self) -> Result<(), Stop> {
        let p = self.m.partition;
        let (source, target) = (self.source, self.target);
        // Connected before writes are held: the pause is the work alone.
        let mut a = self.source().await?;
        let mut b = self.target().await?;
        let (mut keys, checked) = self.pre_validate(&mut a, &b).await?;
        // B's fence admits the partition before writes are held (nobody
        // routes there until the commit; a direct write there now would
        // fail validation).
        {
            let nodes = self.shared.routing.peek().nodes().to_vec();
            let cur = epochs::latest(&*self.catalog, &nodes)
                .await
                .map_err(stop)?
                .ok_or_else(|| stop("catalog is empty"))?;
            let ps = moved(&cur, p, source, target)?;
            let planned =
                RoutingTable::new(cur.epoch() + 1, ps, nodes).map_err(|e| stop(e.to_string()))?;
            let name = &self.shared.pools[target].target.name;
            rebuild_fence(&b, name, target, &planned, &self.tables)
                .await
                .map_err(stop)?;
        }
        let held = Instant::now();
        self.change_epoch("cut-over: writes held", |ps| {
            let x = ps
                .iter_mut()
                .find(|x| x.id == p)
                .ok_or("partition vanished")?;
            x.state = PartitionState::CuttingOver;
            Ok(())
        })
        .await?;
        let mut phases = vec![("hold", held.elapsed())];
        let mark = Instant::now();
        self.fence(&a, self.source).await?;
        phases.push(("fence", mark.elapsed()));
        crate::sharding::fault("exit_in_cut_over");
        let mark = Instant::now();
        let mut last_keys = 0;
        loop {
            let consumed = self.recopy(&a, &mut b).await?;
            if consumed.is_empty() {
                break;
            }
            last_keys += consumed.len();
            for (t, k) in consumed {
                if let Some(list) = keys.get_mut(t) {
                    list.push(k);
                }
            }
        }
        phases.push(("last changes", mark.elapsed()));
        let mark = Instant::now();
        // Everything else was compared before the hold: only the keys the
        // change log named since.
        let rows = checked + self.compare_range(&a, &b, &keys, true).await?;
        phases.push(("validate", mark.elapsed()));
        let mark = Instant::now();
        let next = {
            let tx = epoch_locked(&mut *self.catalog).await?;
            let nodes = self.shared.routing.peek().nodes().to_vec();
            let cur = epochs::latest(&tx, &nodes)
                .await
                .map_err(stop)?
                .ok_or_else(|| stop("catalog is empty"))?;
            let ps = moved(&cur, p, source, target)?;
            let next = epochs::change(
                &tx,
                &nodes,
                &format!("migration {}: partition {p} moved", self.m.id),
                |x| {
                    *x = ps;
                    Ok(())
                },
            )
            .await
            .map_err(stop)?;
            journal::step(
                &tx,
                self.m.id,
                "cleaning_up",
                &format!("cut over at epoch {}: {rows} rows validated", next.epoch()),
            )
            .await
            .map_err(stop)?;
            tx.commit()
                .await
                .map_err(|e| stop(format!("committing the cut-over: {e}")))?;
            next
        };
        let pause = held.elapsed();
        crate::catalog::follow::adopt(self.shared, next);
        phases.push(("commit", mark.elapsed()));
        let pause_ms = pause.as_secs_f64() * 1e3;
        let breakdown: Vec<String> = phases
            .iter()
            .map(|(what, d)| format!("{what} {:.1} ms", d.as_secs_f64() * 1e3))
            .collect();
        let _ = journal::line(
            &*self.catalog,
            self.id(),
            "cut_over",
            &format!(
                "writes held {pause_ms:.1} ms ({}; {last_keys} changed keys re-copied)",
                breakdown.join(", ")
            ),
        )
        .await;
        self.shared
            .metrics
            .migration_pause
            .observe(pause.as_secs_f64());
        let _ = journal::set_pause(&*self.catalog, self.id(), pause_ms).await;
        info!(migration = self.id(), pause_ms, rows, "cut over");
        Ok(())
    }

    /// Rebuilds `node`'s fence from the latest table (under the epoch lock).
    async fn fence(&mut self, c: &Client, node: NodeId) -> Result<(), Stop> {
        let nodes = self.shared.routing.peek().nodes().to_vec();
        let tx = epoch_locked(&mut *self.catalog).await?;
        let cur = epochs::latest(&tx, &nodes)
            .await
            .map_err(stop)?
            .ok_or_else(|| stop("catalog is empty"))?;
        let name = &self.shared.pools[node].target.name;
        rebuild_fence(c, name, node, &cur, &self.tables)
            .await
            .map_err(stop)?;
        tx.commit().await.map_err(|e| stop(e.to_string()))
    }
}

/// `cur`'s partitions with `p` placed on `target`, its old home `source`
/// still to be cleaned.
fn moved(
    cur: &RoutingTable,
    p: crate::ring::PartitionId,
    source: NodeId,
    target: NodeId,
) -> Result<Vec<crate::ring::Partition>, Stop> {
    let mut ps = cur.partitions().to_vec();
    let x = ps
        .iter_mut()
        .find(|x| x.id == p)
        .ok_or_else(|| stop("partition vanished"))?;
    x.node = target;
    x.state = PartitionState::Cleaning;
    x.target = Some(source);
    Ok(ps)
}

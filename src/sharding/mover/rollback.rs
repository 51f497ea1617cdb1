//! Undoing a move that did not reach its commit, and what an earlier
//! rollback could not undo.

use super::*;

impl Move<'_> {
    /// Undoes everything before the cut-over commit: A's change log and
    /// fence, B's copy, and the partition's state in the routing table.
    pub async fn roll_back(&mut self, reason: &str) {
        warn!(
            migration = self.id(),
            reason, "migration aborted; rolling back"
        );
        let mut notes = Vec::new();
        let (lo, hi) = (self.m.lo, self.m.hi);
        match self.source().await {
            Ok(a) => {
                for t in &self.tables {
                    if let Err(e) = a
                        .batch_execute(&triggers::drop_change_log(t, self.id()))
                        .await
                    {
                        notes.push(format!(
                            "change log on {} not dropped: {e}",
                            self.name(self.source)
                        ));
                    }
                }
                let _ = a
                    .execute(
                        "DELETE FROM shardcast.changes WHERE migration = $1",
                        &[&self.id()],
                    )
                    .await;
            }
            Err(s) => notes.push(format!(
                "{} (its change-log trigger stays until it is back)",
                s.reason
            )),
        }
        let p = self.m.partition;
        let nodes = self.shared.routing.peek().nodes().to_vec();
        let restored = async {
            let tx = self
                .catalog
                .transaction()
                .await
                .map_err(|e| e.to_string())?;
            epochs::lock(&tx).await?;
            let cur = epochs::latest(&tx, &nodes)
                .await?
                .ok_or("catalog is empty")?;
            let mut ps = cur.partitions().to_vec();
            if let Some(x) = ps.iter_mut().find(|x| x.id == p) {
                x.state = PartitionState::Serving;
                x.target = None;
            }
            let planned = RoutingTable::new(cur.epoch() + 1, ps.clone(), nodes.clone())
                .map_err(|e| e.to_string())?;
            let mut fence_notes = Vec::new();
            for node in [self.source, self.target] {
                if let Err(e) =
                    rebuild_fence_if_present(self.shared, node, &planned, &self.tables).await
                {
                    fence_notes.push(e);
                }
            }
            let next = epochs::change(
                &tx,
                &nodes,
                &format!("migration {}: rolled back", self.m.id),
                |x| {
                    *x = ps;
                    Ok(())
                },
            )
            .await?;
            tx.commit().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((next, fence_notes))
        }
        .await;
        match restored {
            Ok((next, fence_notes)) => {
                notes.extend(fence_notes);
                crate::catalog::follow::adopt(self.shared, next);
            }
            Err(e) => notes.push(format!("routing not restored: {e}")),
        }
        match self.target().await {
            Ok(b) => {
                for t in &self.tables {
                    if let Err(e) = b
                        .execute(
                            &format!("DELETE FROM {} WHERE {}", t.name(), t.in_range(lo, hi)),
                            &[],
                        )
                        .await
                    {
                        notes.push(format!(
                            "copy on {} not deleted: {e}",
                            self.name(self.target)
                        ));
                    }
                }
            }
            Err(s) => notes.push(format!(
                "{} (its partial copy is deleted by the next move there)",
                s.reason
            )),
        }
        let full = if notes.is_empty() {
            reason.to_string()
        } else {
            format!("{reason}; rollback: {}", notes.join("; "))
        };
        if let Err(e) = journal::finish(&*self.catalog, self.id(), "aborted", Some(&full)).await {
            warn!(migration = self.id(), error = %e, "could not journal the abort");
        }
    }

    /// Change-log triggers of migrations that ended while this node was
    /// unreachable (their rollback could not drop them) are dropped now.
    pub(super) async fn drop_stale_change_logs(&self, a: &Client) -> Result<(), Stop> {
        let rows = a
            .query(
                "SELECT DISTINCT substring(tgname FROM 'shardcast_log_m([0-9]+)')::int8 FROM pg_trigger WHERE tgname LIKE 'shardcast_log_m%'",
                &[],
            )
            .await
            .map_err(self.err_at(self.source))?;
        for r in rows {
            let id: i64 = r.get(0);
            let finished = match journal::get(&*self.catalog, id).await.map_err(stop)? {
                Some(m) => m.finished(),
                None => true,
            };
            if !finished || id == self.id() {
                continue;
            }
            for t in &self.tables {
                a.batch_execute(&triggers::drop_change_log(t, id))
                    .await
                    .map_err(self.err_at(self.source))?;
            }
            a.execute("DELETE FROM shardcast.changes WHERE migration = $1", &[&id])
                .await
                .map_err(self.err_at(self.source))?;
            let _ = journal::line(
                &*self.catalog,
                self.id(),
                "capturing",
                &format!("dropped the change log left by migration {id}"),
            )
            .await;
        }
        Ok(())
    }
}

//! The lake tables the pipelines write, as a table format with a log (Delta) declares them:
//! each pipeline's table (partitioned by `window_date`) and `late_events` (by `pipeline` and
//! `window_date`).

use super::spec::Emit;
use super::{LATE_TABLE, Pipelines, late_schema};
use crate::sink::delta::{Kind, TableDecl};

impl Pipelines {
    /// Each pipeline's table and the late table; `emit = "updates"` tables replace a window's
    /// rows with each revision (and so write only each window's latest revision).
    pub fn table_decls(&mut self) -> Vec<TableDecl> {
        let mut out = Vec::new();
        for (q, table) in self.queries.iter().zip(&mut self.tables) {
            let kind = match q.spec.emit {
                Emit::Updates => {
                    table.keep_latest_revisions();
                    Kind::ReplaceWindows
                }
                Emit::Final => Kind::Append,
            };
            out.push(TableDecl {
                root: q.spec.name.clone(),
                schema: q.output.clone(),
                partitions: vec!["window_date".into()],
                kind,
                source: q.spec.file.display().to_string(),
            });
        }
        if !self.queries.is_empty() {
            out.push(TableDecl {
                root: LATE_TABLE.into(),
                schema: late_schema(),
                partitions: vec!["pipeline".into(), "window_date".into()],
                kind: Kind::Append,
                source: "the late-events table".into(),
            });
        }
        out
    }

    /// A backfill: every pipeline writes only the windows before its `live_from` (the live
    /// run writes the rest); a pipeline without one writes nothing.
    pub fn backfill_only(&mut self) {
        for ((q, t), l) in self.queries.iter().zip(&mut self.tables).zip(&mut self.late) {
            let before = q.spec.live_from.unwrap_or(i64::MIN);
            t.keep_windows(i64::MIN, before);
            l.keep_windows(i64::MIN, before);
        }
    }

    /// Marks the pipeline writing table `name` failed before it runs (its table cannot take
    /// its rows); rows it had waiting are dropped with it. Logged with the reason.
    pub fn fail_table(&mut self, name: &str, why: &str) {
        for (q, table) in self.queries.iter_mut().zip(&mut self.tables) {
            if q.spec.name == name {
                tracing::error!(pipeline = %name, file = %q.spec.file.display(), error = %why, "Pipeline failed at start.");
                q.failed = Some(why.to_string());
                *table = crate::sink::table::TableBuffer::new(table.prefix().to_string(), table.schema().clone(), 0);
            }
        }
    }
}

//! Moving over from new-api: its `midjourneys` rows and its Midjourney channels, copied into a
//! store with their ids.
//!
//! Ids are kept, so every `user_id` and `channel_id` of an imported task names the user and
//! channel imported with it, and the dashboards' task ids stay what they were. An import runs
//! in two steps:
//! 1. **Plan** ([`plan_channels`], [`plan_tasks`]): what is left to copy, and every conflict
//!    with rows already in the store (an id in use by a row that no import of this source
//!    wrote). Planning writes nothing; `--dry-run` stops here.
//! 2. **Run** ([`import_channels`], [`import_tasks`]), only when no step has a conflict. Before
//!    copying, the ids are claimed for the source (`mj_import_claims`); task batches are then
//!    written in id order, one transaction each, through [`TaskStore::insert_with_ids`].
//!
//! The claims make it idempotent and resumable: a rerun skips what its claims already hold,
//! and an import killed mid-way continues after the highest task id of its claim present in
//! the store (batches commit in id order, so everything below it is there).
//!
//! [`TaskStore::insert_with_ids`]: crate::TaskStore::insert_with_ids

mod source;

use std::sync::Arc;

pub use source::{
    MIDJOURNEY_CHANNEL_TYPES, NewApiSource, SourceChannel, SourceTaskStats, SourceUser,
};

use crate::channel::Channel;
use crate::model::Task;
use crate::store::{ChannelStore, ClaimEntity, ImportStore, StoreError, TaskStore};
use crate::text::{LONG_TEXT_MAX_BYTES, SHORT_TEXT_MAX_CHARS};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the source failed.
    #[error("reading the new-api database failed: {0}")]
    Source(#[from] sqlx::Error),
    /// The source lacks a table new-api always has.
    #[error("the source has no readable `{table}` table (is it new-api's database?): {source}")]
    MissingTable {
        /// The table.
        table: &'static str,
        /// The database's answer.
        source: sqlx::Error,
    },
    /// The source location is not a file path or a supported URL.
    #[error(
        "unsupported source (expected a SQLite file path, sqlite:, postgres:// or mysql://): {0}"
    )]
    UnsupportedSource(String),
    /// The source file does not exist.
    #[error("no such new-api database file: {0}")]
    NoSuchFile(String),
    /// Writing the store failed.
    #[error("writing the store failed: {0}")]
    Store(#[from] StoreError),
}

/// A row of the source that cannot be imported as it is because the store already holds a
/// different row under its id (or name). Conflicts are reported, never merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// What kind of row.
    pub entity: ClaimEntity,
    /// The source id (the first of a task range).
    pub source_id: i64,
    /// What is in the way, for the operator.
    pub reason: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.entity.as_str(),
            self.source_id,
            self.reason
        )
    }
}

/// The Midjourney channels left to import.
#[derive(Debug, Clone, Default)]
pub struct ChannelPlan {
    /// Channels to insert, each with whether its id is claimed already (an interrupted run).
    pub to_import: Vec<(Channel, bool)>,
    /// Channels an earlier run imported.
    pub already_imported: usize,
    /// Channels of other types in the source, which are not imported.
    pub other_types: u64,
    /// Imported channels that have no base URL: imported disabled.
    pub without_base_url: Vec<i64>,
    /// Ids in use by channels of ours.
    pub conflicts: Vec<Conflict>,
}

/// What of `midjourneys` is left to import.
#[derive(Debug, Clone, Default)]
pub struct TaskPlan {
    /// Id ranges `(after_id, through_id]` still to copy: the unfinished part of earlier claims,
    /// then the new ids.
    pub segments: Vec<(i64, i64)>,
    /// The new range `first..=last` this run claims, if the source has ids past every claim.
    pub new_claim: Option<(i64, i64)>,
    /// Rows to copy.
    pub to_import: u64,
    /// Rows of the source that earlier runs copied.
    pub already_imported: u64,
    /// Our tasks in the way of the new range.
    pub conflicts: Vec<Conflict>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskImportReport {
    /// Rows copied.
    pub imported: u64,
    /// Text values changed so that every backend can store them (NUL replaced by U+FFFD,
    /// over-long values cut to the column's size).
    pub adjusted_values: u64,
    /// Time spent writing batches into the store.
    pub writing: std::time::Duration,
    /// Time the writer waited for the source to deliver the next batch.
    pub waiting_for_source: std::time::Duration,
}

/// Compares the source's Midjourney channels with the store's.
pub async fn plan_channels(
    source: &NewApiSource,
    channels: &dyn ChannelStore,
    imports: &dyn ImportStore,
) -> Result<ChannelPlan, ImportError> {
    let claimed = claimed_ids(imports, source.fingerprint(), ClaimEntity::Channel).await?;
    let mut plan = ChannelPlan {
        other_types: source.other_channel_count().await?,
        ..ChannelPlan::default()
    };
    for row in source.midjourney_channels().await? {
        let is_claimed = claimed.binary_search(&row.id).is_ok();
        match channels.get_channel(row.id).await? {
            Some(_) if is_claimed => plan.already_imported += 1,
            Some(ours) => plan.conflicts.push(Conflict {
                entity: ClaimEntity::Channel,
                source_id: row.id,
                reason: format!(
                    "new-api channel {:?} has id {}, which our channel {:?} ({}) already uses",
                    row.name, row.id, ours.name, ours.base_url
                ),
            }),
            None => {
                let channel = channel_from_source(&row);
                if channel.base_url.is_empty() {
                    plan.without_base_url.push(row.id);
                }
                plan.to_import.push((channel, is_claimed));
            }
        }
    }
    Ok(plan)
}

/// Inserts the planned channels, claiming each id first.
pub async fn import_channels(
    source: &NewApiSource,
    plan: &ChannelPlan,
    imports: &dyn ImportStore,
) -> Result<usize, ImportError> {
    for (channel, claimed) in &plan.to_import {
        if !claimed {
            imports
                .add_import_claim(
                    source.fingerprint(),
                    ClaimEntity::Channel,
                    channel.id,
                    channel.id,
                )
                .await?;
        }
        imports.insert_channel_with_id(channel).await?;
    }
    Ok(plan.to_import.len())
}

/// Our channel for a new-api one: enabled only when new-api had it enabled (status 1) and it
/// has a base URL; created time in milliseconds.
pub fn channel_from_source(row: &SourceChannel) -> Channel {
    let base_url = row.base_url.trim().trim_end_matches('/').to_owned();
    Channel {
        id: row.id,
        name: fit(row.name.trim(), TextLimit::Short).0,
        enabled: row.status == 1 && !base_url.is_empty(),
        base_url,
        secret: row.key.trim().to_owned(),
        created_at: row.created_time.saturating_mul(1000),
    }
}

/// The ids `source` has claimed of `entity`, sorted.
pub async fn claimed_ids(
    imports: &dyn ImportStore,
    source: &str,
    entity: ClaimEntity,
) -> Result<Vec<i64>, StoreError> {
    let mut ids: Vec<i64> = imports
        .import_claims(source, entity)
        .await?
        .into_iter()
        .map(|claim| claim.first_id)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Works out which task ids are left to copy, and whether our own tasks are in the way.
pub async fn plan_tasks(
    source: &NewApiSource,
    imports: &dyn ImportStore,
) -> Result<TaskPlan, ImportError> {
    let stats = source.task_stats().await?;
    let mut plan = TaskPlan::default();
    let claims = imports
        .import_claims(source.fingerprint(), ClaimEntity::Task)
        .await?;
    let mut covered_through = None;
    for claim in &claims {
        // Batches commit in id order: everything up to the highest id present is done.
        let span = imports.task_id_span(claim.first_id, claim.last_id).await?;
        let resume_after = span.max_id.unwrap_or(claim.first_id - 1);
        let remaining = source.count_tasks(resume_after, claim.last_id).await?;
        let in_claim = source
            .count_tasks(claim.first_id - 1, claim.last_id)
            .await?;
        plan.already_imported += in_claim.saturating_sub(remaining);
        if remaining > 0 {
            plan.segments.push((resume_after, claim.last_id));
            plan.to_import += remaining;
        }
        covered_through =
            Some(covered_through.map_or(claim.last_id, |c: i64| c.max(claim.last_id)));
    }
    let (Some(min_id), Some(max_id)) = (stats.min_id, stats.max_id) else {
        return Ok(plan);
    };
    let first = covered_through.map_or(min_id, |c| (c + 1).max(min_id));
    if first > max_id {
        return Ok(plan);
    }
    let span = imports.task_id_span(first, max_id).await?;
    if span.count > 0 {
        plan.conflicts.push(Conflict {
            entity: ClaimEntity::Task,
            source_id: first,
            reason: format!(
                "{} of our tasks (ids {} to {}) already use ids in new-api's range {first} to {max_id}",
                span.count,
                span.min_id.unwrap_or(first),
                span.max_id.unwrap_or(max_id),
            ),
        });
        return Ok(plan);
    }
    let new_rows = source.count_tasks(first - 1, max_id).await?;
    plan.new_claim = Some((first, max_id));
    plan.segments.push((first - 1, max_id));
    plan.to_import += new_rows;
    Ok(plan)
}

/// Copies the planned task ranges in batches of `batch` rows, one transaction each, reading the
/// next batch while the current one is written. `progress` is called with the number of rows
/// copied so far after every batch.
pub async fn import_tasks(
    source: &NewApiSource,
    plan: &TaskPlan,
    tasks: Arc<dyn TaskStore>,
    imports: &dyn ImportStore,
    batch: u32,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<TaskImportReport, ImportError> {
    if let Some((first, last)) = plan.new_claim {
        imports
            .add_import_claim(source.fingerprint(), ClaimEntity::Task, first, last)
            .await?;
    }
    let batch = batch.max(1);
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Vec<Task>, ImportError>>(2);
    let reader_source = source.clone();
    let segments = plan.segments.clone();
    // The reader runs ahead by up to two batches, so reading the source and writing the store
    // overlap instead of taking turns.
    let reader = tokio::spawn(async move {
        for (after, through) in segments {
            let mut cursor = after;
            loop {
                let rows = match reader_source.tasks_after(cursor, through, batch).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                };
                let Some(last) = rows.last() else { break };
                cursor = last.id;
                let full = rows.len() == batch as usize;
                if sender.send(Ok(rows)).await.is_err() {
                    return;
                }
                if !full {
                    break;
                }
            }
        }
    });
    let mut report = TaskImportReport::default();
    let result = async {
        loop {
            let waited = std::time::Instant::now();
            let Some(rows) = receiver.recv().await else {
                break;
            };
            report.waiting_for_source += waited.elapsed();
            let mut rows = rows?;
            let writing = std::time::Instant::now();
            for task in &mut rows {
                report.adjusted_values += fit_task(task);
            }
            report.imported += tasks.insert_with_ids(&rows).await?;
            report.writing += writing.elapsed();
            progress(report.imported);
        }
        Ok::<_, ImportError>(())
    }
    .await;
    // Dropping the receiver stops the reader at its next send.
    drop(receiver);
    let _ = reader.await;
    result?;
    Ok(report)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextLimit {
    Short,
    Long,
}

/// `value` as every backend can store it, and whether it had to change: NUL (which
/// PostgreSQL refuses) becomes U+FFFD, and a value longer than its column on MariaDB is cut at
/// a character boundary.
fn fit(value: &str, limit: TextLimit) -> (String, bool) {
    let mut changed = false;
    let mut text = if value.contains('\0') {
        changed = true;
        value.replace('\0', "\u{FFFD}")
    } else {
        value.to_owned()
    };
    match limit {
        TextLimit::Short if text.len() > SHORT_TEXT_MAX_CHARS => {
            if let Some((cut, _)) = text.char_indices().nth(SHORT_TEXT_MAX_CHARS) {
                text.truncate(cut);
                changed = true;
            }
        }
        TextLimit::Long if text.len() > LONG_TEXT_MAX_BYTES => {
            let mut cut = LONG_TEXT_MAX_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            changed = true;
        }
        _ => {}
    }
    (text, changed)
}

/// Fits every text of `task` ([`fit`]); returns how many values changed. Free for the usual
/// row: nothing is copied unless a value needs it.
fn fit_task(task: &mut Task) -> u64 {
    fn needs(value: &str, limit: TextLimit) -> bool {
        value.contains('\0')
            || match limit {
                TextLimit::Short => value.len() > SHORT_TEXT_MAX_CHARS,
                TextLimit::Long => value.len() > LONG_TEXT_MAX_BYTES,
            }
    }
    let mut changed = 0;
    let mut apply = |value: &mut String, limit: TextLimit| {
        if needs(value, limit) {
            let (fitted, did) = fit(value, limit);
            if did {
                *value = fitted;
                changed += 1;
            }
        }
    };
    apply(&mut task.mj_id, TextLimit::Short);
    let fields = &mut task.fields;
    for value in [
        &mut fields.prompt,
        &mut fields.prompt_en,
        &mut fields.description,
        &mut fields.state,
        &mut fields.image_url,
        &mut fields.video_url,
        &mut fields.video_urls,
        &mut fields.fail_reason,
        &mut fields.buttons,
        &mut fields.properties,
    ] {
        apply(value, TextLimit::Long);
    }
    let mut action = task.action.as_str().to_owned();
    apply(&mut action, TextLimit::Short);
    if action != task.action.as_str() {
        task.action = action.into();
    }
    let mut status = task.status.as_str().to_owned();
    apply(&mut status, TextLimit::Short);
    if status != task.status.as_str() {
        task.status = status.into();
    }
    let mut progress = task.progress.as_str().to_owned();
    apply(&mut progress, TextLimit::Long);
    if progress != task.progress.as_str() {
        task.progress = progress.into();
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_fitted_for_every_backend() {
        assert_eq!(
            fit("a\0b", TextLimit::Long),
            ("a\u{FFFD}b".to_owned(), true)
        );
        assert_eq!(fit("龍", TextLimit::Short), ("龍".to_owned(), false));
        let long = "龍".repeat(200);
        let (cut, changed) = fit(&long, TextLimit::Short);
        assert!(changed);
        assert_eq!(cut.chars().count(), SHORT_TEXT_MAX_CHARS);
    }

    #[test]
    fn channels_keep_state_and_need_a_base_url() {
        let row = SourceChannel {
            id: 4,
            channel_type: 2,
            name: " mj ".into(),
            base_url: "http://mj.example/".into(),
            key: " secret\n".into(),
            status: 1,
            created_time: 1_700_000_000,
        };
        let channel = channel_from_source(&row);
        assert_eq!(channel.base_url, "http://mj.example");
        assert_eq!(channel.secret, "secret");
        assert_eq!(channel.name, "mj");
        assert!(channel.enabled);
        assert_eq!(channel.created_at, 1_700_000_000_000);
        let disabled = SourceChannel {
            status: 3,
            ..row.clone()
        };
        assert!(!channel_from_source(&disabled).enabled);
        let no_url = SourceChannel {
            base_url: String::new(),
            ..row
        };
        assert!(!channel_from_source(&no_url).enabled);
    }
}

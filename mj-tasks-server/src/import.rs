//! `import --from <new-api database>`: new-api's users (this module: they are the server's),
//! then its Midjourney channels and tasks (through [`mj_tasks::import`]).
//!
//! Users keep their ids, names, roles, statuses, quotas and access tokens: the token is stored
//! only as its digest, like every token here, so a dashboard keeps working with the token it
//! has. A user without a token is imported without one (`user token` issues one); a user
//! new-api soft-deleted is imported disabled and without a token, because its tasks still name
//! it. Every run plans first and writes nothing when anything conflicts.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use mj_tasks::SqlStore;
use mj_tasks::bulk::BulkLoader;
use mj_tasks::import::{
    ChannelPlan, Conflict, NewApiSource, SourceUser, TaskPlan, claimed_ids, import_channels,
    import_tasks, plan_channels, plan_tasks,
};
use mj_tasks::store::{ClaimEntity, ImportStore};

use crate::cli::CliError;
use crate::users::{ImportedUser, UserStore, hash_token};

/// new-api's `users.status` of an enabled user; anything else is imported as disabled (2).
const STATUS_ENABLED: i64 = 1;
const STATUS_DISABLED: i64 = 2;

/// The users left to import.
#[derive(Debug, Clone, Default)]
pub struct UserPlan {
    /// Users to insert, each with whether its id is claimed already (an interrupted run).
    pub to_import: Vec<(ImportedUser, bool)>,
    /// Users an earlier run imported.
    pub already_imported: usize,
    /// Users to import that have no access token.
    pub without_token: usize,
    /// Users new-api soft-deleted: imported disabled, without a token.
    pub deleted: usize,
    /// Ids or names in use by users of ours.
    pub conflicts: Vec<Conflict>,
}

/// Our user for a new-api one.
pub fn user_from_source(row: &SourceUser) -> ImportedUser {
    let deleted = row.deleted != 0;
    let token = row.access_token.trim();
    ImportedUser {
        id: row.id,
        username: row.username.trim().to_owned(),
        role: row.role,
        status: if row.status == STATUS_ENABLED && !deleted {
            STATUS_ENABLED
        } else {
            STATUS_DISABLED
        },
        quota: row.quota,
        token_hash: (!token.is_empty() && !deleted).then(|| hash_token(token)),
    }
}

/// Compares new-api's users with ours: one read of each side.
pub async fn plan_users(
    source: &NewApiSource,
    users: &dyn UserStore,
    imports: &dyn ImportStore,
) -> Result<UserPlan, CliError> {
    let claimed = claimed_ids(imports, source.fingerprint(), ClaimEntity::User).await?;
    let ours = users.list_users().await?;
    let by_id: HashMap<i64, &crate::users::User> = ours.iter().map(|u| (u.id, u)).collect();
    let by_name: HashMap<&str, &crate::users::User> =
        ours.iter().map(|u| (u.username.as_str(), u)).collect();
    let mut plan = UserPlan::default();
    for row in source.users().await.map_err(CliError::Import)? {
        let user = user_from_source(&row);
        let is_claimed = claimed.binary_search(&row.id).is_ok();
        let conflict = |reason: String| Conflict {
            entity: ClaimEntity::User,
            source_id: row.id,
            reason,
        };
        if let Some(existing) = by_id.get(&row.id) {
            if is_claimed {
                plan.already_imported += 1;
            } else {
                plan.conflicts.push(conflict(format!(
                    "new-api user {:?} has id {}, which our user {:?} already uses",
                    user.username, row.id, existing.username
                )));
            }
            continue;
        }
        if let Err(error) = mj_tasks::text::check_short("username", &user.username) {
            plan.conflicts
                .push(conflict(format!("its username cannot be stored: {error}")));
            continue;
        }
        if user.username.is_empty() {
            plan.conflicts
                .push(conflict("it has no username".to_owned()));
            continue;
        }
        if let Some(existing) = by_name.get(user.username.as_str()) {
            plan.conflicts.push(conflict(format!(
                "the username {:?} is taken by our user id {}",
                user.username, existing.id
            )));
            continue;
        }
        if row.deleted != 0 {
            plan.deleted += 1;
        } else if user.token_hash.is_none() {
            plan.without_token += 1;
        }
        plan.to_import.push((user, is_claimed));
    }
    Ok(plan)
}

/// Inserts the planned users, claiming each id first.
pub async fn import_users(
    source: &NewApiSource,
    plan: &UserPlan,
    users: &dyn UserStore,
    imports: &dyn ImportStore,
) -> Result<usize, CliError> {
    for (user, claimed) in &plan.to_import {
        if !claimed {
            imports
                .add_import_claim(source.fingerprint(), ClaimEntity::User, user.id, user.id)
                .await?;
        }
        users.insert_user_with_id(user).await?;
    }
    Ok(plan.to_import.len())
}

/// What the command prints before it writes.
fn describe_plan(
    out: &mut impl Write,
    users: &UserPlan,
    channels: &ChannelPlan,
    tasks: &TaskPlan,
) -> std::io::Result<()> {
    writeln!(
        out,
        "users:    {} to import ({} without an access token, {} deleted in new-api: disabled), {} already imported",
        users.to_import.len(),
        users.without_token,
        users.deleted,
        users.already_imported
    )?;
    writeln!(
        out,
        "channels: {} to import ({} without a base URL: disabled), {} already imported, {} of other types skipped",
        channels.to_import.len(),
        channels.without_base_url.len(),
        channels.already_imported,
        channels.other_types
    )?;
    writeln!(
        out,
        "tasks:    {} to import, {} already imported",
        tasks.to_import, tasks.already_imported
    )
}

/// A progress bar on stderr when it is a terminal (rows/s and ETA), nothing otherwise.
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tasks ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Runs `import`: plans, reports, and unless `dry_run` or a conflict stops it, copies.
///
/// The tasks are written through a [`BulkLoader`] on `target_url` (the database of `store`):
/// `store` is closed once the users and channels are in, so that on SQLite the loader has the
/// file to itself.
pub async fn run(
    store: &SqlStore,
    user_store: &dyn UserStore,
    target_url: &str,
    from: &str,
    batch: u32,
    dry_run: bool,
) -> Result<(), CliError> {
    let started = Instant::now();
    let source = NewApiSource::open(from).await.map_err(CliError::Import)?;
    let target = Target {
        store,
        users: user_store,
        url: target_url,
    };
    let result = run_on(&target, &source, from, batch, dry_run, started).await;
    source.close().await;
    result
}

/// Where an import writes.
struct Target<'a> {
    store: &'a SqlStore,
    users: &'a dyn UserStore,
    url: &'a str,
}

async fn run_on(
    target: &Target<'_>,
    source: &NewApiSource,
    from: &str,
    batch: u32,
    dry_run: bool,
    started: Instant,
) -> Result<(), CliError> {
    let (store, user_store) = (target.store, target.users);
    let imports = store.imports();
    let users = plan_users(source, user_store, imports.as_ref()).await?;
    let channels = plan_channels(source, store.channels().as_ref(), imports.as_ref())
        .await
        .map_err(CliError::Import)?;
    let tasks = plan_tasks(source, imports.as_ref())
        .await
        .map_err(CliError::Import)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "importing from {} ({:?}, source {})",
        mj_tasks::store::redact_url(from),
        source.backend(),
        source.fingerprint()
    )?;
    describe_plan(&mut out, &users, &channels, &tasks)?;
    let conflicts: Vec<&Conflict> = users
        .conflicts
        .iter()
        .chain(&channels.conflicts)
        .chain(&tasks.conflicts)
        .collect();
    if !conflicts.is_empty() {
        let mut err = std::io::stderr().lock();
        for conflict in &conflicts {
            writeln!(err, "conflict: {conflict}")?;
        }
        return Err(CliError::ImportConflicts(conflicts.len()));
    }
    if dry_run {
        writeln!(out, "dry run: nothing was written")?;
        return Ok(());
    }
    drop(out);
    let imported_users = import_users(source, &users, user_store, imports.as_ref()).await?;
    let imported_channels = import_channels(source, &channels, imports.as_ref())
        .await
        .map_err(CliError::Import)?;
    drop(imports);
    store.close().await;
    let loader = BulkLoader::connect(target.url).await?;
    let bar = progress_bar(tasks.to_import);
    let copy_started = Instant::now();
    let report = import_tasks(
        source,
        &tasks,
        loader.store().tasks(),
        loader.store().imports().as_ref(),
        batch,
        &|done| bar.set_position(done),
    )
    .await
    .map_err(CliError::Import);
    bar.finish_and_clear();
    // Back to the normal journal, and fresh planner statistics after the bulk load.
    loader.finish().await?;
    let report = report?;
    let copy_secs = copy_started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "imported {imported_users} users, {imported_channels} channels and {} tasks in {:.1} s ({:.0} tasks/s)",
        report.imported,
        started.elapsed().as_secs_f64(),
        report.imported as f64 / copy_secs.max(1e-9)
    )?;
    writeln!(
        out,
        "copy: {:.1} s writing, {:.1} s waiting for the source",
        report.writing.as_secs_f64(),
        report.waiting_for_source.as_secs_f64()
    )?;
    if report.adjusted_values > 0 {
        writeln!(
            out,
            "adjusted {} text values no backend can store as they were (NUL replaced by U+FFFD, over-long values cut)",
            report.adjusted_values
        )?;
    }
    Ok(())
}

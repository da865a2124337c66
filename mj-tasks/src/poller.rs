//! The background poller: brings unfinished tasks up to date from their channels, fails the ones
//! that can no longer finish, and refunds failures exactly once.
//!
//! One round:
//! 0. release the quota reservations that outlived their submit (journal rows older than
//!    [`PollerConfig::reservation_timeout`], left by a crash or a database outage);
//! 1. read the first batch of unfinished tasks (`list_unfinished`, on the `(finished, id)`
//!    index, so finished rows are never read); none: the round is over (an idle round is one
//!    index probe and writes nothing);
//! 2. where several instances share a database, take or renew the lease (`mj_leases`), or skip
//!    the round: exactly one instance polls at a time, and a dead holder's lease expires after
//!    about two intervals; then walk the rest in bounded batches;
//! 3. fail at once the tasks with no `mj_id` or whose channel is gone or disabled;
//! 4. ask every channel concurrently (one worker task each, fed through a bounded queue) with
//!    `list-by-condition` in chunks,
//!    matching answers by id, so every row sharing a `(channel, mj_id)` is updated;
//! 5. decide each task with the pure functions [`merge_upstream`] and [`decide`], and write only
//!    changed tasks with compare-and-swap ([`PollStore::write_outcome`]), which also refunds a
//!    failure in the same transaction.
//!
//! Each channel has its own worker for the round, fed through a bounded queue. The batch reader
//! waits for a full queue at most `slow_channel_wait` (2 s) once per channel and round; after
//! that the channel counts as slow, and its tasks that do not fit in its queue are deferred to
//! the next round ([`RoundStats::deferred`]) rather than holding up the others. A channel that
//! errors or times out is also put in backoff at once. The lease
//! compares the instances' wall clocks (keep them NTP-synced): skew only shifts the takeover
//! time, and compare-and-swap keeps every write correct even when two instances overlap.
//!
//! A channel that errors (5xx, garbage, timeout) leaves its tasks untouched and is retried on a
//! later round with exponential backoff; tasks past the deadline (measured from **our**
//! `submit_time`) are failed whatever the upstream says or fails to say.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::channel::Channel;
use crate::model::{Progress, Task, TaskStatus, now_millis};
use crate::store::{
    Backend, ChannelStore, PollStore, ReservationStore, StoreError, TaskStore, WriteOutcome,
};
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamTask};

/// Changed tasks written per transaction.
const WRITE_CHUNK: usize = 100;

/// The lease name in `mj_leases` the poller uses.
pub const LEASE_NAME: &str = "mj_poller";

/// `fail_reason` of a task that has no upstream id.
pub const REASON_NO_MJ_ID: &str = "The task has no upstream id (the submit returned none).";
/// `fail_reason` of a task whose channel no longer exists.
pub const REASON_CHANNEL_GONE: &str = "The task's channel no longer exists.";
/// `fail_reason` of a task whose channel is disabled.
pub const REASON_CHANNEL_DISABLED: &str = "The task's channel is disabled.";
/// `fail_reason` of a task that passed the task timeout.
pub const REASON_TIMEOUT: &str = "The task did not finish within the task timeout.";
/// `fail_reason` of an upstream failure that gave no reason.
pub const REASON_UPSTREAM_FAILURE: &str = "The upstream reported a failure.";

/// Poller settings.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    /// Time between rounds (default 15 s).
    pub interval: Duration,
    /// Deadline after our submit time after which an unfinished task is failed (default 1 h).
    pub task_timeout: Duration,
    /// Tasks read from the database at a time (default 1000).
    pub batch_size: u32,
    /// Ids per `list-by-condition` call (default 100).
    pub chunk_size: usize,
    /// Timeout of each upstream call (default 10 s).
    pub upstream_timeout: Duration,
    /// Longest time the batch reader waits for one channel's full queue before it marks the
    /// channel slow for the round and defers its remaining tasks (default 2 s).
    pub slow_channel_wait: Duration,
    /// Channel workers writing at the same time (default 16). SQLite has one writer: set 1
    /// there, so workers queue here instead of sleeping in SQLite's busy handler.
    pub write_concurrency: usize,
    /// Longest pause of a failing channel (default 5 min).
    pub max_backoff: Duration,
    /// Poll only while holding the database lease (for several instances on one PostgreSQL or
    /// MariaDB database). Off on SQLite, where one process polls.
    pub use_lease: bool,
    /// This instance's lease holder name (default: random).
    pub holder: String,
    /// Age after which a journaled quota reservation is released as a leftover (default 60 s).
    /// Set it to the relay's upstream timeout: no live submit holds a reservation longer.
    pub reservation_timeout: Duration,
}

impl PollerConfig {
    /// The defaults, adjusted to the database behind the stores. SQLite is one process with one
    /// writer: no lease (nobody else polls that file) and one writing worker at a time, so
    /// workers queue in the poller instead of sleeping in SQLite's busy handler. PostgreSQL and
    /// MariaDB may be shared by several instances: poll only while holding the lease.
    pub fn for_backend(backend: Backend) -> Self {
        let shared = backend != Backend::Sqlite;
        Self {
            use_lease: shared,
            write_concurrency: if shared { 16 } else { 1 },
            ..Self::default()
        }
    }
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            task_timeout: Duration::from_secs(3600),
            batch_size: 1000,
            chunk_size: 100,
            upstream_timeout: Duration::from_secs(10),
            write_concurrency: 16,
            slow_channel_wait: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            use_lease: false,
            holder: random_holder(),
            reservation_timeout: Duration::from_secs(60),
        }
    }
}

impl PollerConfig {
    /// How long a lease lasts: two intervals (at least 2 s), renewed every round and between
    /// batches, so a dead holder is replaced within about two intervals.
    pub fn lease_ttl(&self) -> Duration {
        (self.interval * 2).max(Duration::from_secs(2))
    }
}

fn random_holder() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("poller-{}-{:016x}", std::process::id(), hasher.finish())
}

/// The stores the poller works on.
#[derive(Clone)]
pub struct PollerDeps {
    /// Unfinished tasks are read here.
    pub tasks: Arc<dyn TaskStore>,
    /// Channels are read here once per round.
    pub channels: Arc<dyn ChannelStore>,
    /// Outcomes are written (and refunded) here; the lease lives here.
    pub store: Arc<dyn PollStore>,
    /// The reservation journal, whose leftovers each round releases.
    pub reservations: Arc<dyn ReservationStore>,
}

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// `false` when another instance holds the lease (nothing was done); `true` for an idle
    /// round (nothing to do).
    pub ran: bool,
    /// Unfinished tasks read.
    pub scanned: u64,
    /// Tasks asked about upstream.
    pub asked: u64,
    /// Changed tasks written.
    pub written: u64,
    /// Writes lost to a concurrent writer (retried next round).
    pub lost: u64,
    /// Tasks failed by this round.
    pub failed: u64,
    /// Refunds made by this round.
    pub refunded: u64,
    /// Leftover quota reservations released by this round.
    pub released: u64,
    /// Channels whose calls failed or that were skipped for backoff.
    pub channel_errors: u64,
    /// Tasks left for the next round because their channel's worker was still busy with
    /// earlier batches (a slow channel never holds up the others).
    pub deferred: u64,
    /// Time spent in database calls (summed over concurrent calls).
    pub db_time: Duration,
}

impl RoundStats {
    fn absorb(&mut self, other: &Self) {
        self.scanned += other.scanned;
        self.asked += other.asked;
        self.written += other.written;
        self.lost += other.lost;
        self.failed += other.failed;
        self.refunded += other.refunded;
        self.released += other.released;
        self.channel_errors += other.channel_errors;
        self.deferred += other.deferred;
        self.db_time += other.db_time;
    }
}

/// `task` marked failed: status `FAILURE`, progress `100%`, `reason` (kept if the upstream gave
/// one already), finish time now when unknown. Submit time and charge are untouched.
pub fn fail(task: &Task, reason: &str, now_ms: i64) -> Task {
    let mut failed = task.clone();
    failed.status = TaskStatus::Failure;
    failed.progress = Progress::complete();
    if failed.fail_reason.trim().is_empty() {
        failed.fail_reason = reason.to_owned();
    }
    if failed.finish_time <= 0 {
        failed.finish_time = now_ms;
    }
    failed
}

/// Why a task is failed without asking the upstream, if it is: no `mj_id`, channel gone or
/// disabled. `channel` is the task's channel as currently registered.
pub fn precheck(task: &Task, channel: Option<&Channel>) -> Option<&'static str> {
    if task.mj_id.trim().is_empty() {
        return Some(REASON_NO_MJ_ID);
    }
    match channel {
        None => Some(REASON_CHANNEL_GONE),
        Some(channel) if !channel.enabled => Some(REASON_CHANNEL_DISABLED),
        Some(_) => None,
    }
}

/// `task` updated with what the upstream reports. Only reported (non-null) values are copied;
/// our `submit_time`, owner, action and charge are never touched, and a zero or null upstream
/// time never erases a known one. A terminal status sets progress to `100%`; `FAILURE` always
/// carries a reason.
pub fn merge_upstream(task: &Task, upstream: &UpstreamTask) -> Task {
    let mut merged = task.clone();
    let copy = |target: &mut String, value: &Option<String>| {
        if let Some(value) = value {
            target.clone_from(value);
        }
    };
    if let Some(prompt) = upstream.prompt.as_ref().filter(|p| !p.trim().is_empty()) {
        merged.prompt.clone_from(prompt);
    }
    copy(&mut merged.prompt_en, &upstream.prompt_en);
    copy(&mut merged.description, &upstream.description);
    copy(&mut merged.state, &upstream.state);
    copy(&mut merged.image_url, &upstream.image_url);
    copy(&mut merged.video_url, &upstream.video_url);
    copy(&mut merged.fail_reason, &upstream.fail_reason);
    copy(&mut merged.buttons, &upstream.buttons);
    copy(&mut merged.properties, &upstream.properties);
    if let Some(start) = upstream.start_time {
        merged.start_time = start;
    }
    if let Some(finish) = upstream.finish_time {
        merged.finish_time = finish;
    }
    if let Some(status) = &upstream.status {
        merged.status = status.clone();
    }
    if let Some(progress) = upstream
        .progress
        .as_ref()
        .filter(|p| !p.as_str().is_empty())
    {
        merged.progress = progress.clone();
    }
    if merged.status.is_finished() {
        merged.progress = Progress::complete();
    }
    if merged.status == TaskStatus::Failure && merged.fail_reason.trim().is_empty() {
        merged.fail_reason = REASON_UPSTREAM_FAILURE.to_owned();
    }
    merged
}

/// What the upstream said about one task this round.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// The channel answered and listed the task.
    Found(&'a UpstreamTask),
    /// The channel answered and left the task out (unknown, expired, forgotten).
    Missing,
    /// The channel could not be asked (error, timeout, backoff).
    Unavailable,
}

/// The new state of an unfinished task given the upstream's answer, or `None` to leave it as is.
///
/// A terminal upstream status wins; otherwise a task past the deadline (`timeout_ms` after our
/// submit time) is failed, whether the upstream still lists it, forgot it or is down; otherwise
/// the task takes the upstream's values when they differ.
pub fn decide(task: &Task, answer: Answer<'_>, now_ms: i64, timeout_ms: i64) -> Option<Task> {
    let timed_out = now_ms.saturating_sub(task.submit_time) > timeout_ms;
    let next = match answer {
        Answer::Found(upstream) => {
            let merged = merge_upstream(task, upstream);
            if !merged.status.is_finished() && timed_out {
                fail(&merged, REASON_TIMEOUT, now_ms)
            } else {
                merged
            }
        }
        Answer::Missing | Answer::Unavailable if timed_out => fail(task, REASON_TIMEOUT, now_ms),
        Answer::Missing | Answer::Unavailable => return None,
    };
    (next != *task).then_some(next)
}

/// Per-channel backoff after upstream errors.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

struct Inner {
    deps: PollerDeps,
    config: PollerConfig,
    client: UpstreamClient,
    backoff: Mutex<HashMap<i64, Backoff>>,
    writers: tokio::sync::Semaphore,
}

/// The poller. Run rounds yourself with [`Poller::run_round`], or start the loop with
/// [`Poller::spawn`].
#[derive(Clone)]
pub struct Poller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Poller {
    /// A poller over `deps` with `config`.
    pub fn new(deps: PollerDeps, config: PollerConfig) -> Result<Self, UpstreamError> {
        let client = UpstreamClient::new(config.upstream_timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                deps,
                client,
                backoff: Mutex::new(HashMap::new()),
                writers: tokio::sync::Semaphore::new(config.write_concurrency.max(1)),
                config,
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &PollerConfig {
        &self.inner.config
    }

    async fn hold_lease(&self) -> Result<bool, StoreError> {
        let config = &self.inner.config;
        if !config.use_lease {
            return Ok(true);
        }
        let ttl = i64::try_from(config.lease_ttl().as_millis()).unwrap_or(i64::MAX);
        self.inner
            .deps
            .store
            .try_lease(LEASE_NAME, &config.holder, now_millis(), ttl)
            .await
    }

    /// Runs one round now (see the module documentation).
    ///
    /// Leftover reservations are released first, then the first batch is read before the lease
    /// is touched: an idle round (no leftover, no unfinished task) is one probe of the journal's
    /// `created_at` index and one of the `(finished, id)` index, and writes nothing. Reading
    /// without the lease is harmless, since every write is compare-and-swapped.
    pub async fn run_round(&self) -> Result<RoundStats, StoreError> {
        let mut stats = RoundStats::default();
        let batch_size = self.inner.config.batch_size;
        let started = Instant::now();
        stats.released = self.release_leftovers().await?;
        let mut batch = self.inner.deps.tasks.list_unfinished(0, batch_size).await?;
        stats.db_time += started.elapsed();
        if batch.is_empty() {
            stats.ran = true;
            return Ok(stats);
        }
        if !self.hold_lease().await? {
            return Ok(RoundStats {
                released: stats.released,
                ..RoundStats::default()
            });
        }
        stats.ran = true;
        let started = Instant::now();
        let channels: HashMap<i64, Channel> = self
            .inner
            .deps
            .channels
            .list_channels()
            .await?
            .into_iter()
            .map(|channel| (channel.id, channel))
            .collect();
        stats.db_time += started.elapsed();
        let mut workers = ChannelWorkers::new(self.clone(), channels);
        while let Some(last) = batch.last() {
            let after_id = last.id;
            let full = batch.len() >= batch_size as usize;
            let immediate = workers.dispatch(batch, &mut stats).await;
            let written = self.write_all(immediate).await?;
            stats.absorb(&written);
            if !full {
                break;
            }
            // A long round renews the lease as it goes; losing it ends the round.
            if !self.hold_lease().await? {
                tracing::warn!("poller lease lost during a round; stopping the round");
                break;
            }
            let started = Instant::now();
            batch = self
                .inner
                .deps
                .tasks
                .list_unfinished(after_id, batch_size)
                .await?;
            stats.db_time += started.elapsed();
        }
        workers.finish(&mut stats).await?;
        Ok(stats)
    }

    /// Releases the reservations older than the reservation timeout, in bounded batches. Needs
    /// no lease: each release deletes its journal row first, so two instances never release the
    /// same one.
    async fn release_leftovers(&self) -> Result<u64, StoreError> {
        let timeout =
            i64::try_from(self.inner.config.reservation_timeout.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_millis().saturating_sub(timeout);
        let limit = self.inner.config.batch_size.max(1);
        let mut released = 0;
        loop {
            let batch = self
                .inner
                .deps
                .reservations
                .release_expired(cutoff, limit)
                .await?;
            released += batch;
            if batch < u64::from(limit) {
                return Ok(released);
            }
        }
    }

    fn in_backoff(&self, channel_id: i64) -> bool {
        let backoff = self
            .inner
            .backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        backoff
            .get(&channel_id)
            .and_then(|b| b.until)
            .is_some_and(|until| Instant::now() < until)
    }

    fn record_channel(&self, channel_id: i64, ok: bool) -> Duration {
        let mut backoff = self
            .inner
            .backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ok {
            backoff.remove(&channel_id);
            return Duration::ZERO;
        }
        let entry = backoff.entry(channel_id).or_default();
        entry.failures = entry.failures.saturating_add(1);
        // 1st failure: retried next round; then 2, 4, 8... intervals, capped.
        let interval = self.inner.config.interval;
        let factor = 1u32 << entry.failures.saturating_sub(1).min(16);
        let pause = (interval * factor)
            .saturating_sub(interval / 2)
            .min(self.inner.config.max_backoff);
        entry.until = Some(Instant::now() + pause);
        pause
    }

    async fn poll_channel(
        &self,
        channel: Channel,
        tasks: Vec<Task>,
    ) -> Result<RoundStats, StoreError> {
        let mut stats = RoundStats::default();
        let mut ids: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for task in &tasks {
            if seen.insert(task.mj_id.as_str()) {
                ids.push(task.mj_id.clone());
            }
        }
        let mut answers: HashMap<String, UpstreamTask> = HashMap::new();
        let mut available = !self.in_backoff(channel.id);
        if !available {
            stats.channel_errors += 1;
        }
        if available {
            for chunk in ids.chunks(self.inner.config.chunk_size.max(1)) {
                stats.asked += chunk.len() as u64;
                match self.inner.client.list_by_condition(&channel, chunk).await {
                    Ok(found) => {
                        for task in found {
                            answers.insert(task.id.clone(), task);
                        }
                    }
                    Err(error) => {
                        let pause = self.record_channel(channel.id, false);
                        tracing::warn!(
                            channel = channel.id,
                            error = %error,
                            retry_in_ms = pause.as_millis() as u64,
                            "poller: channel failed; its tasks stay as they are"
                        );
                        stats.channel_errors += 1;
                        available = false;
                        break;
                    }
                }
            }
            if available {
                self.record_channel(channel.id, true);
            }
        }
        let now = now_millis();
        let timeout = i64::try_from(self.inner.config.task_timeout.as_millis()).unwrap_or(i64::MAX);
        let updates: Vec<Task> = tasks
            .iter()
            .filter_map(|task| {
                let answer = match (available, answers.get(&task.mj_id)) {
                    (false, _) => Answer::Unavailable,
                    (true, Some(upstream)) => Answer::Found(upstream),
                    (true, None) => Answer::Missing,
                };
                decide(task, answer, now, timeout)
            })
            .collect();
        let written = self.write_all(updates).await?;
        stats.absorb(&written);
        Ok(stats)
    }

    async fn write_all(&self, updates: Vec<Task>) -> Result<RoundStats, StoreError> {
        let mut stats = RoundStats::default();
        // One transaction per chunk: one commit (fsync) per WRITE_CHUNK rows, not per row.
        for chunk in updates.chunks(WRITE_CHUNK) {
            // Never closed: acquire fails only after `close`, which nothing calls.
            let _permit = self.inner.writers.acquire().await.ok();
            let started = Instant::now();
            let outcomes = self.inner.deps.store.write_outcomes(chunk).await;
            stats.db_time += started.elapsed();
            for (task, outcome) in chunk.iter().zip(outcomes?) {
                match outcome {
                    WriteOutcome::Lost => {
                        tracing::debug!(
                            task = task.id,
                            "poller: concurrent update; retried next round"
                        );
                        stats.lost += 1;
                    }
                    WriteOutcome::Written { refunded } => {
                        stats.written += 1;
                        if task.status == TaskStatus::Failure {
                            stats.failed += 1;
                        }
                        if refunded {
                            stats.refunded += 1;
                        }
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Starts the loop on the current tokio runtime: a round every interval (the first at
    /// once) until [`PollerHandle::stop`]. Round errors are logged and the loop goes on.
    pub fn spawn(self) -> PollerHandle {
        let (stop, mut stopped) = watch::channel(false);
        let poller = self;
        let join = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(poller.inner.config.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => break,
                }
                let round = tokio::select! {
                    round = poller.run_round() => round,
                    _ = stopped.changed() => break,
                };
                match round {
                    Ok(stats) if stats.ran && (stats.written > 0 || stats.channel_errors > 0) => {
                        tracing::info!(?stats, "poll round");
                    }
                    Ok(stats) => tracing::debug!(?stats, "poll round"),
                    Err(error) => {
                        tracing::warn!(error = ?error, "poll round failed; retrying next round")
                    }
                }
            }
            if poller.inner.config.use_lease {
                let config = &poller.inner.config;
                if let Err(error) = poller
                    .inner
                    .deps
                    .store
                    .release_lease(LEASE_NAME, &config.holder)
                    .await
                {
                    tracing::warn!(error = ?error, "could not release the poller lease");
                }
            }
        });
        PollerHandle { stop, join }
    }
}

/// Groups of tasks a channel worker may have queued before the reader moves on without it.
const CHANNEL_QUEUE: usize = 4;

/// One worker per channel for the length of a round, fed through a bounded queue. The reader
/// waits for a full queue at most `slow_channel_wait` once per channel and round; after that the
/// channel counts as slow and its tasks are queued only where there is room, the rest deferred
/// to the next round, so a slow or dead channel never holds up the others for longer.
struct ChannelWorkers {
    poller: Poller,
    channels: HashMap<i64, Channel>,
    queues: HashMap<i64, tokio::sync::mpsc::Sender<Vec<Task>>>,
    slow: HashSet<i64>,
    running: tokio::task::JoinSet<Result<RoundStats, StoreError>>,
}

impl ChannelWorkers {
    fn new(poller: Poller, channels: HashMap<i64, Channel>) -> Self {
        Self {
            poller,
            channels,
            queues: HashMap::new(),
            slow: HashSet::new(),
            running: tokio::task::JoinSet::new(),
        }
    }

    /// Hands a batch to the channel workers; returns the tasks to fail at once (no `mj_id`,
    /// channel gone or disabled).
    async fn dispatch(&mut self, batch: Vec<Task>, stats: &mut RoundStats) -> Vec<Task> {
        let now = now_millis();
        stats.scanned += batch.len() as u64;
        let mut immediate = Vec::new();
        let mut by_channel: HashMap<i64, Vec<Task>> = HashMap::new();
        for task in batch {
            match precheck(&task, self.channels.get(&task.channel_id)) {
                Some(reason) => immediate.push(fail(&task, reason, now)),
                None => by_channel.entry(task.channel_id).or_default().push(task),
            }
        }
        for (channel_id, tasks) in by_channel {
            let slow = self.slow.contains(&channel_id);
            let wait = self.poller.inner.config.slow_channel_wait;
            let Some(queue) = self.queue(channel_id) else {
                continue;
            };
            // Backpressure for channels that keep up; a channel whose queue stays full longer
            // than `slow_channel_wait` is marked slow, and for the rest of the round its tasks
            // are only queued where there is room.
            let sent = if slow {
                queue.try_send(tasks).map_err(|error| match error {
                    TrySendError::Full(tasks) | TrySendError::Closed(tasks) => (tasks, false),
                })
            } else {
                queue
                    .send_timeout(tasks, wait)
                    .await
                    .map_err(|error| match error {
                        SendTimeoutError::Timeout(tasks) => (tasks, true),
                        SendTimeoutError::Closed(tasks) => (tasks, false),
                    })
            };
            if let Err((tasks, now_slow)) = sent {
                if now_slow {
                    tracing::warn!(
                        channel = channel_id,
                        "poller: channel is slow; its remaining tasks wait for the next round"
                    );
                    self.slow.insert(channel_id);
                }
                stats.deferred += tasks.len() as u64;
            }
        }
        immediate
    }

    fn queue(&mut self, channel_id: i64) -> Option<&tokio::sync::mpsc::Sender<Vec<Task>>> {
        if !self.queues.contains_key(&channel_id) {
            let channel = self.channels.get(&channel_id)?.clone();
            let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<Task>>(CHANNEL_QUEUE);
            let poller = self.poller.clone();
            self.running.spawn(async move {
                let mut stats = RoundStats::default();
                while let Some(tasks) = receiver.recv().await {
                    let done = poller.poll_channel(channel.clone(), tasks).await?;
                    stats.absorb(&done);
                }
                Ok(stats)
            });
            self.queues.insert(channel_id, sender);
        }
        self.queues.get(&channel_id)
    }

    /// Closes the queues and waits for every worker; the first database error, if any.
    async fn finish(mut self, stats: &mut RoundStats) -> Result<(), StoreError> {
        self.queues.clear();
        let mut first_error = None;
        while let Some(joined) = self.running.join_next().await {
            match joined {
                Ok(Ok(channel_stats)) => stats.absorb(&channel_stats),
                Ok(Err(error)) => {
                    tracing::warn!(error = ?error, "poller: database error while writing");
                    first_error.get_or_insert(error);
                }
                Err(error) => tracing::error!(%error, "poller: channel worker panicked"),
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A running poller loop. Dropping the handle without [`PollerHandle::stop`] also ends the loop
/// (at its next await point), without waiting for it.
#[derive(Debug)]
pub struct PollerHandle {
    stop: watch::Sender<bool>,
    join: JoinHandle<()>,
}

impl PollerHandle {
    /// Stops the loop: a round in progress is abandoned at its next await point (every write is
    /// its own transaction, so nothing is left half done), and the lease is released.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.join.await {
            tracing::error!(%error, "poller task ended abnormally");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::{MockChannelStore, MockPollStore, MockReservationStore, MockTaskStore};
    use crate::{NewTask, TaskAction, TaskStatus};

    /// A journal with nothing left behind: each round asks once.
    fn no_leftovers() -> Arc<dyn ReservationStore> {
        let mut reservations = MockReservationStore::new();
        reservations
            .expect_release_expired()
            .returning(|_, _| Ok(0));
        Arc::new(reservations)
    }

    const NOW: i64 = 1_715_240_000_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn shared_databases_poll_under_the_lease_and_sqlite_alone() {
        let sqlite = PollerConfig::for_backend(Backend::Sqlite);
        assert!(!sqlite.use_lease);
        assert_eq!(sqlite.write_concurrency, 1);
        for shared in [Backend::Postgres, Backend::MySql] {
            let config = PollerConfig::for_backend(shared);
            assert!(config.use_lease, "{shared:?}");
            assert_eq!(config.write_concurrency, 16, "{shared:?}");
        }
    }

    fn task() -> Task {
        Task {
            id: 7,
            version: 4,
            fields: NewTask {
                code: 1,
                user_id: 3,
                action: TaskAction::Imagine,
                mj_id: "1715240000123456".into(),
                prompt: "cat".into(),
                submit_time: NOW - 60_000,
                start_time: NOW - 50_000,
                status: TaskStatus::InProgress,
                progress: Progress::new("10%"),
                channel_id: 2,
                quota: 500,
                buttons: "[]".into(),
                properties: "{}".into(),
                ..NewTask::default()
            },
        }
    }

    fn upstream(status: &str) -> UpstreamTask {
        UpstreamTask {
            id: "1715240000123456".into(),
            status: Some(TaskStatus::parse(status)),
            ..UpstreamTask::default()
        }
    }

    fn channel(enabled: bool) -> Channel {
        Channel {
            id: 2,
            name: "c".into(),
            base_url: "http://127.0.0.1:9".into(),
            secret: "s".into(),
            enabled,
            created_at: 0,
        }
    }

    #[test]
    fn prechecks() {
        let mut no_id = task();
        no_id.mj_id = " ".into();
        assert_eq!(
            precheck(&no_id, Some(&channel(true))),
            Some(REASON_NO_MJ_ID)
        );
        assert_eq!(precheck(&task(), None), Some(REASON_CHANNEL_GONE));
        assert_eq!(
            precheck(&task(), Some(&channel(false))),
            Some(REASON_CHANNEL_DISABLED)
        );
        assert_eq!(precheck(&task(), Some(&channel(true))), None);
    }

    #[test]
    fn merge_never_erases_known_values() {
        let mut up = upstream("IN_PROGRESS");
        up.submit_time = Some(1);
        up.start_time = None; // null or 0 upstream
        up.progress = Some(Progress::new(""));
        up.image_url = Some("https://cdn/preview.webp".into());
        let merged = merge_upstream(&task(), &up);
        assert_eq!(merged.submit_time, task().submit_time);
        assert_eq!(merged.start_time, task().start_time);
        assert_eq!(merged.progress.as_str(), "10%");
        assert_eq!(merged.image_url, "https://cdn/preview.webp");
        assert_eq!(
            (merged.user_id, merged.quota, merged.action.clone()),
            (3, 500, TaskAction::Imagine)
        );
    }

    #[test]
    fn upstream_failure_is_terminal_with_a_reason() {
        let mut up = upstream("FAILURE");
        up.progress = Some(Progress::new(""));
        let next = decide(&task(), Answer::Found(&up), NOW, HOUR).unwrap();
        assert_eq!(next.status, TaskStatus::Failure);
        assert_eq!(next.progress.as_str(), "100%");
        assert_eq!(next.fail_reason, REASON_UPSTREAM_FAILURE);
        up.fail_reason = Some("[Banned prompt] x".into());
        let next = decide(&task(), Answer::Found(&up), NOW, HOUR).unwrap();
        assert_eq!(next.fail_reason, "[Banned prompt] x");
    }

    #[test]
    fn unchanged_tasks_are_not_written() {
        let mut up = upstream("IN_PROGRESS");
        up.progress = Some(Progress::new("10%"));
        assert_eq!(decide(&task(), Answer::Found(&up), NOW, HOUR), None);
        assert_eq!(decide(&task(), Answer::Missing, NOW, HOUR), None);
        assert_eq!(decide(&task(), Answer::Unavailable, NOW, HOUR), None);
    }

    #[test]
    fn unknown_status_and_free_text_progress_keep_polling() {
        let mut up = upstream("QUEUED");
        up.progress = Some(Progress::new("waiting"));
        let next = decide(&task(), Answer::Found(&up), NOW, HOUR).unwrap();
        assert!(!next.is_finished());
        assert_eq!(next.progress.as_str(), "waiting");
    }

    #[test]
    fn deadline_from_our_submit_time_whatever_the_upstream_says() {
        let mut old = task();
        old.submit_time = NOW - HOUR - 1;
        for answer in [
            Answer::Missing,
            Answer::Unavailable,
            Answer::Found(&upstream("IN_PROGRESS")),
        ] {
            let next = decide(&old, answer, NOW, HOUR).unwrap();
            assert_eq!(next.status, TaskStatus::Failure, "{answer:?}");
            assert_eq!(next.fail_reason, REASON_TIMEOUT);
            assert_eq!(next.finish_time, NOW);
            assert_eq!(next.submit_time, old.submit_time);
        }
        // A late success still wins over the deadline.
        let mut done = upstream("SUCCESS");
        done.image_url = Some("https://cdn/x.png".into());
        let next = decide(&old, Answer::Found(&done), NOW, HOUR).unwrap();
        assert_eq!(
            (next.status.clone(), next.progress.as_str()),
            (TaskStatus::Success, "100%")
        );
        // Exactly at the deadline: not yet.
        let mut edge = task();
        edge.submit_time = NOW - HOUR;
        assert_eq!(decide(&edge, Answer::Missing, NOW, HOUR), None);
    }

    /// A round with mocked stores: the task without an upstream id is failed through the poll
    /// store (no upstream call: the channel is unreachable on purpose), the healthy channel's
    /// task is left alone when the channel errors, and nothing is written for it.
    #[tokio::test]
    async fn round_with_mocked_stores() {
        let mut no_id = task();
        no_id.id = 1;
        no_id.mj_id = String::new();
        no_id.submit_time = now_millis();
        let mut fresh = task();
        fresh.id = 2;
        fresh.submit_time = now_millis();
        let batch = vec![no_id.clone(), fresh];

        let mut tasks = MockTaskStore::new();
        tasks
            .expect_list_unfinished()
            .withf(|after, _| *after == 0)
            .returning(move |_, _| Ok(batch.clone()));
        let mut channels = MockChannelStore::new();
        channels
            .expect_list_channels()
            .returning(|| Ok(vec![channel(true)]));
        let mut store = MockPollStore::new();
        store
            .expect_write_outcomes()
            .times(1)
            .withf(|tasks| {
                tasks.len() == 1
                    && tasks[0].id == 1
                    && tasks[0].status == TaskStatus::Failure
                    && tasks[0].fail_reason == REASON_NO_MJ_ID
                    && tasks[0].version == 4
            })
            .returning(|_| Ok(vec![WriteOutcome::Written { refunded: true }]));
        let poller = Poller::new(
            PollerDeps {
                tasks: Arc::new(tasks),
                channels: Arc::new(channels),
                store: Arc::new(store),
                reservations: no_leftovers(),
            },
            PollerConfig {
                upstream_timeout: Duration::from_millis(500),
                ..PollerConfig::default()
            },
        )
        .unwrap();
        let stats = poller.run_round().await.unwrap();
        assert_eq!(
            (
                stats.scanned,
                stats.failed,
                stats.refunded,
                stats.channel_errors
            ),
            (2, 1, 1, 1)
        );
        // The failing channel is now backed off: the next round does not call it.
        assert!(poller.in_backoff(2));
    }

    #[tokio::test]
    async fn lease_gates_the_round() {
        let mut store = MockPollStore::new();
        store.expect_try_lease().returning(|_, _, _, _| Ok(false));
        let mut tasks = MockTaskStore::new();
        tasks
            .expect_list_unfinished()
            .times(1)
            .returning(|_, _| Ok(vec![task()]));
        let poller = Poller::new(
            PollerDeps {
                tasks: Arc::new(tasks),
                channels: Arc::new(MockChannelStore::new()),
                store: Arc::new(store),
                reservations: no_leftovers(),
            },
            PollerConfig {
                use_lease: true,
                ..PollerConfig::default()
            },
        )
        .unwrap();
        // No store call beyond the lease: the mocks would panic on any.
        assert_eq!(poller.run_round().await.unwrap(), RoundStats::default());
    }

    #[tokio::test]
    async fn idle_round_is_one_read_and_no_lease() {
        let mut tasks = MockTaskStore::new();
        tasks
            .expect_list_unfinished()
            .times(1)
            .returning(|_, _| Ok(Vec::new()));
        let poller = Poller::new(
            PollerDeps {
                tasks: Arc::new(tasks),
                channels: Arc::new(MockChannelStore::new()),
                store: Arc::new(MockPollStore::new()),
                reservations: no_leftovers(),
            },
            PollerConfig {
                use_lease: true,
                ..PollerConfig::default()
            },
        )
        .unwrap();
        let stats = poller.run_round().await.unwrap();
        assert!(stats.ran);
        assert_eq!(stats.scanned, 0);
    }

    #[test]
    fn lease_ttl_is_two_intervals() {
        let config = PollerConfig::default();
        assert_eq!(config.lease_ttl(), Duration::from_secs(30));
    }
}

//! The submit workflow of a midjourney-proxy compatible relay, as a library: what the bundled
//! server's `/mj/...` routes call, and what a gateway embeds to relay tasks without it.
//!
//! [`Relay::submit`] does the whole workflow for one caller: it parses and validates the body
//! ([`SubmitRequest`]), finds the origin task of an action (the caller's own, finished) or picks
//! a channel ([`ChannelChooser`]), reserves the price ([`PriceTable`]) through the reservation
//! journal, calls the upstream, and either records the task with its charge or releases the
//! reservation. Each step's failure is a [`SubmitOutcome`] variant, so the caller only maps
//! outcomes to its own answers. The reservation is journaled before the upstream is called, so
//! a crash or a database outage at any point loses nothing: see
//! [`crate::store::reservations`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use mj_tasks::billing::SqlQuotaLedger;
//! use mj_tasks::relay::{Relay, SubmitOutcome};
//! use mj_tasks::{PriceTable, SubmitKind, UpstreamClient};
//!
//! let store = mj_tasks::connect("sqlite://gateway.db").await?;
//! let ledger = Arc::new(SqlQuotaLedger::new("users")?); // your (id, quota) table
//! let upstream = UpstreamClient::new(std::time::Duration::from_secs(60))?;
//! let relay = Relay::new(&store, ledger, upstream, PriceTable::default());
//! match relay.submit(42, SubmitKind::Imagine, br#"{"prompt": "a red fox"}"#).await? {
//!     SubmitOutcome::Accepted { task, answer } => println!("{} -> {}", task.id, answer.code),
//!     other => println!("not accepted: {other:?}"),
//! }
//! # Ok(()) }
//! ```

mod answer;
mod request;

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

pub use answer::RelayTask;
pub use request::{
    ActionRequest, BlendRequest, ChangeRequest, DescribeRequest, ImagineRequest, InvalidRequest,
    ListByConditionRequest, MAX_LIST_IDS, ModalRequest, ShortenRequest, SimpleChangeRequest,
    SubmitPlan, SubmitRequest, action_of_custom_id, parse_simple_change,
};

use crate::billing::{PriceTable, QuotaLedger};
use crate::channel::{Channel, ChannelChooser, RandomChannel};
use crate::image::{ImagePresenter, StoredImageUrl};
use crate::model::{NewTask, Progress, Task, TaskAction, TaskStatus, now_millis};
use crate::store::{
    ChannelStore, Reservation, ReservationStore, SqlReservationStore, SqlStore, StoreError,
    TaskStore,
};
use crate::text::check_short;
use crate::upstream::{SubmitKind, SubmitResult, UpstreamClient, UpstreamError, codes};

/// How a submit ended. Everything but [`SubmitOutcome::Accepted`] left the caller's quota as it
/// was.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// The upstream accepted: the task is recorded with its charge.
    Accepted {
        /// The recorded task.
        task: Box<Task>,
        /// The upstream's answer for the client: code 22 and 21 normalised ([`client_code`]),
        /// every image address in it shown through the presenter.
        answer: SubmitResult,
    },
    /// The upstream refused the task (queue full, banned prompt, ...): its answer as given.
    Rejected {
        /// The upstream's answer.
        answer: SubmitResult,
    },
    /// The body is invalid, or the origin task does not allow this action.
    Invalid(InvalidRequest),
    /// The origin task is not one of the caller's tasks.
    OriginNotFound,
    /// The caller's balance does not cover the price.
    InsufficientQuota {
        /// What the action costs.
        price: i64,
    },
    /// No enabled channel to send a new task to.
    NoChannel,
    /// The origin task's channel is gone or disabled.
    OriginChannelDisabled,
    /// The upstream did not answer within the client's timeout.
    UpstreamTimedOut,
    /// The upstream could not be reached or answered something unreadable.
    UpstreamUnavailable(UpstreamError),
}

/// The code a client sees for an accepted submit: 22 (queued) and 21 (existed) become 1, except
/// 21 on inpaint and custom zoom, where plus uses it for "modal needed" (as new-api does).
pub fn client_code(code: i64, action: &TaskAction) -> i64 {
    match code {
        codes::EXISTED if matches!(action, TaskAction::Inpaint | TaskAction::CustomZoom) => code,
        codes::EXISTED | codes::IN_QUEUE => codes::SUCCESS,
        other => other,
    }
}

/// The submit workflow over the stores, a ledger, an upstream client and a price table. Cheap
/// to clone.
#[derive(Clone)]
pub struct Relay {
    tasks: Arc<dyn TaskStore>,
    channels: Arc<dyn ChannelStore>,
    reservations: Arc<dyn ReservationStore>,
    upstream: UpstreamClient,
    prices: PriceTable,
    chooser: Arc<dyn ChannelChooser>,
    presenter: Arc<dyn ImagePresenter>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("prices", &self.prices)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay of `store`, reserving through `ledger` (which must share the store's
    /// database), submitting with `upstream` (its timeout is the submit timeout) at `prices`.
    /// Channels are chosen at random ([`RandomChannel`]) and image addresses shown as stored
    /// ([`StoredImageUrl`]) until set otherwise.
    pub fn new(
        store: &SqlStore,
        ledger: Arc<dyn QuotaLedger>,
        upstream: UpstreamClient,
        prices: PriceTable,
    ) -> Self {
        let reservations = Arc::new(SqlReservationStore::new(store.clone(), ledger));
        Self::from_parts(
            store.tasks(),
            store.channels(),
            reservations,
            upstream,
            prices,
        )
    }

    /// A relay over stores of your own (mocks in tests, for one).
    pub fn from_parts(
        tasks: Arc<dyn TaskStore>,
        channels: Arc<dyn ChannelStore>,
        reservations: Arc<dyn ReservationStore>,
        upstream: UpstreamClient,
        prices: PriceTable,
    ) -> Self {
        Self {
            tasks,
            channels,
            reservations,
            upstream,
            prices,
            chooser: Arc::new(RandomChannel),
            presenter: Arc::new(StoredImageUrl),
        }
    }

    /// Chooses channels for new tasks with `chooser` (a gateway's own balancing).
    pub fn with_channel_chooser(mut self, chooser: Arc<dyn ChannelChooser>) -> Self {
        self.chooser = chooser;
        self
    }

    /// Shows image addresses through `presenter` (forwarded and signed, for one).
    pub fn with_image_presenter(mut self, presenter: Arc<dyn ImagePresenter>) -> Self {
        self.presenter = presenter;
        self
    }

    /// The price table.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// Parses `body` for `kind` and submits it for `user_id` (see the module documentation).
    /// `Err` only when the database fails; the reservation is then released, or left to the
    /// poller when the database cannot release it either.
    pub async fn submit(
        &self,
        user_id: i64,
        kind: SubmitKind,
        body: &[u8],
    ) -> Result<SubmitOutcome, StoreError> {
        match SubmitRequest::parse(kind, body) {
            Ok(request) => self.submit_request(user_id, &request).await,
            Err(invalid) => Ok(SubmitOutcome::Invalid(invalid)),
        }
    }

    /// Submits an already parsed request for `user_id`.
    pub async fn submit_request(
        &self,
        user_id: i64,
        request: &SubmitRequest,
    ) -> Result<SubmitOutcome, StoreError> {
        let mut plan = match request.plan() {
            Ok(plan) => plan,
            Err(invalid) => return Ok(SubmitOutcome::Invalid(invalid)),
        };
        let channel = match &plan.origin {
            Some(origin) => {
                let Some(task) = self.tasks.find_by_mj_id(origin, Some(user_id)).await? else {
                    return Ok(SubmitOutcome::OriginNotFound);
                };
                let allowed = match request.kind() {
                    SubmitKind::Modal => !task.is_finished() || task.status == TaskStatus::Success,
                    _ => task.status == TaskStatus::Success,
                };
                if !allowed {
                    return Ok(SubmitOutcome::Invalid(InvalidRequest {
                        field: Some("taskId"),
                        message: "The origin task is not in a state that allows this action."
                            .to_owned(),
                    }));
                }
                if plan.prompt.is_empty() {
                    plan.prompt.clone_from(&task.prompt);
                }
                match self.channels.get_channel(task.channel_id).await? {
                    Some(channel) if channel.enabled => channel,
                    _ => return Ok(SubmitOutcome::OriginChannelDisabled),
                }
            }
            None => {
                let enabled: Vec<Channel> = self
                    .channels
                    .list_channels()
                    .await?
                    .into_iter()
                    .filter(|channel| channel.enabled)
                    .collect();
                match self.chooser.choose(&enabled) {
                    Some(channel) => channel.clone(),
                    None => return Ok(SubmitOutcome::NoChannel),
                }
            }
        };

        let price = self.prices.price(&plan.action);
        let Some(reservation) = self.reservations.reserve(user_id, price).await? else {
            return Ok(SubmitOutcome::InsufficientQuota { price });
        };
        let body = request.to_upstream_json();
        let answer = match self.upstream.submit(&channel, request.kind(), &body).await {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(channel = channel.id, %error, "submit failed upstream");
                self.release(&reservation).await;
                return Ok(if error.is_timeout() {
                    SubmitOutcome::UpstreamTimedOut
                } else {
                    SubmitOutcome::UpstreamUnavailable(error)
                });
            }
        };
        let mj_id = match answer.is_accepted().then(|| answer.task_id()).flatten() {
            Some(mj_id) if check_short("result", mj_id).is_ok() => mj_id.to_owned(),
            Some(_) => {
                self.release(&reservation).await;
                return Ok(SubmitOutcome::UpstreamUnavailable(
                    UpstreamError::InvalidBody("an unstorable task id"),
                ));
            }
            None => {
                // Rejected: nothing to poll, nothing charged; the upstream's answer as given.
                self.release(&reservation).await;
                return Ok(SubmitOutcome::Rejected { answer });
            }
        };
        self.record(user_id, channel.id, plan, mj_id, answer, &reservation)
            .await
    }

    /// Records an accepted submit: the task and its charge, and the client's answer.
    async fn record(
        &self,
        user_id: i64,
        channel_id: i64,
        plan: SubmitPlan,
        mj_id: String,
        mut answer: SubmitResult,
        reservation: &Reservation,
    ) -> Result<SubmitOutcome, StoreError> {
        // A legacy "task exists" answer carries the existing image: kept on our row (so the
        // presenter can forward it), never passed through raw.
        let existing_image = match answer.properties.get("imageUrl") {
            Some(Value::String(url)) => storable(url),
            _ => String::new(),
        };
        let task = NewTask {
            code: codes::SUCCESS,
            user_id,
            action: plan.action.clone(),
            mj_id,
            prompt: plan.prompt,
            description: storable(&answer.description),
            state: plan.state,
            submit_time: now_millis(),
            image_url: existing_image,
            status: TaskStatus::NotStart,
            progress: Progress::zero(),
            channel_id,
            buttons: "[]".to_owned(),
            properties: "{}".to_owned(),
            ..NewTask::default()
        };
        let settled = match self.reservations.settle(reservation, &task).await {
            Ok(settled) => settled,
            Err(error) => {
                self.release(reservation).await;
                return Err(error);
            }
        };
        if !settled.charged {
            tracing::warn!(
                task = settled.task.id,
                "submit settled after its reservation was released: recorded uncharged"
            );
        }
        if answer.properties.contains_key("imageUrl") {
            let shown = self.presenter.present(&settled.task);
            answer
                .properties
                .insert("imageUrl".to_owned(), Value::String(shown));
        }
        answer.code = client_code(answer.code, &plan.action);
        Ok(SubmitOutcome::Accepted {
            task: Box::new(settled.task),
            answer,
        })
    }

    /// Gives a reservation back; a failure is logged, and the poller releases the journal row
    /// once it is older than the upstream timeout.
    async fn release(&self, reservation: &Reservation) {
        if let Err(error) = self.reservations.release(reservation).await {
            tracing::error!(
                reservation = reservation.id,
                user_id = reservation.user_id,
                error = ?error,
                "could not release a quota reservation now; the poller releases it later"
            );
        }
    }

    /// The caller's task with upstream id `mj_id`, as clients see it; `None` when there is none
    /// (also for an id no backend could store).
    pub async fn fetch(&self, user_id: i64, mj_id: &str) -> Result<Option<RelayTask>, StoreError> {
        if check_short("id", mj_id).is_err() {
            return Ok(None);
        }
        let task = self.tasks.find_by_mj_id(mj_id, Some(user_id)).await?;
        Ok(task.map(|task| RelayTask::new(&task, self.presenter.as_ref())))
    }

    /// The caller's tasks among `ids`, each once, in no particular order; unknown ids (and ids
    /// no backend could store) are left out.
    pub async fn list_by_condition(
        &self,
        user_id: i64,
        ids: &[String],
    ) -> Result<Vec<RelayTask>, StoreError> {
        let mut seen = HashSet::new();
        let mut items = Vec::new();
        for id in ids {
            if !seen.insert(id.as_str()) || check_short("ids", id).is_err() {
                continue;
            }
            if let Some(task) = self.tasks.find_by_mj_id(id, Some(user_id)).await? {
                items.push(RelayTask::new(&task, self.presenter.as_ref()));
            }
        }
        Ok(items)
    }
}

/// Upstream text made storable on every backend (PostgreSQL refuses NUL).
fn storable(text: &str) -> String {
    text.replace('\0', "")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_are_normalised_structurally() {
        assert_eq!(client_code(22, &TaskAction::Imagine), 1);
        assert_eq!(client_code(21, &TaskAction::Upscale), 1);
        assert_eq!(client_code(21, &TaskAction::Inpaint), 21);
        assert_eq!(client_code(21, &TaskAction::CustomZoom), 21);
        assert_eq!(client_code(1, &TaskAction::Imagine), 1);
        assert_eq!(client_code(24, &TaskAction::Imagine), 24);
    }
}

//! Exact totals without counting rows: `mj_task_counts`.
//!
//! For a few sets of filter dimensions ([`COUNT_SETS`]: everything; by channel, status, action,
//! channel and status; by owner, owner and status, owner and action) the table holds how many
//! tasks each key has per time bucket of `submit_time` (an hour, or a day for the per-owner
//! sets, whose keys are many). Every write that changes what a filter matches adds its deltas
//! in the same transaction ([`Deltas`]). A total then sums the whole buckets inside the range
//! from the counters and counts only the two partial buckets at its edges from the task table,
//! through the same indexes a page uses ([`push_total`]). Queries no set covers (an `mj_id`, or
//! a combination such as owner and channel) are counted from the task table; every one of
//! them is narrow or index-driven.

use std::collections::BTreeMap;

use sqlx::QueryBuilder;

use crate::model::NewTask;
use crate::query::TaskQuery;
use crate::store::dialect::Dialect;
use crate::store::sql::{FilterValues, Value, push_value, push_where};

const BY_USER: u8 = 1;
const BY_CHANNEL: u8 = 2;
const BY_STATUS: u8 = 4;
const BY_ACTION: u8 = 8;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// A set of filter dimensions that totals are kept for, and the width of its time buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CountSet {
    dims: u8,
    bucket_ms: i64,
}

/// The kept sets; the migrations backfill exactly these (`dims` and bucket width must match).
const COUNT_SETS: [CountSet; 8] = [
    CountSet {
        dims: 0,
        bucket_ms: HOUR_MS,
    },
    CountSet {
        dims: BY_CHANNEL,
        bucket_ms: HOUR_MS,
    },
    CountSet {
        dims: BY_STATUS,
        bucket_ms: HOUR_MS,
    },
    CountSet {
        dims: BY_ACTION,
        bucket_ms: HOUR_MS,
    },
    CountSet {
        dims: BY_CHANNEL | BY_STATUS,
        bucket_ms: HOUR_MS,
    },
    CountSet {
        dims: BY_USER,
        bucket_ms: DAY_MS,
    },
    CountSet {
        dims: BY_USER | BY_STATUS,
        bucket_ms: DAY_MS,
    },
    CountSet {
        dims: BY_USER | BY_ACTION,
        bucket_ms: DAY_MS,
    },
];

/// One counter row's key. Dimensions outside the set hold `0` / `""`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CounterKey {
    dims: u8,
    user_id: i64,
    channel_id: i64,
    status: String,
    action: String,
    bucket: i64,
}

impl CountSet {
    fn has(&self, dimension: u8) -> bool {
        self.dims & dimension != 0
    }

    fn key(&self, task: &NewTask) -> CounterKey {
        let text = |dimension, value: &str| {
            if self.has(dimension) {
                value.to_owned()
            } else {
                String::new()
            }
        };
        CounterKey {
            dims: self.dims,
            user_id: if self.has(BY_USER) { task.user_id } else { 0 },
            channel_id: if self.has(BY_CHANNEL) {
                task.channel_id
            } else {
                0
            },
            status: text(BY_STATUS, task.status.as_str()),
            action: text(BY_ACTION, task.action.as_str()),
            bucket: task.submit_time.div_euclid(self.bucket_ms),
        }
    }

    /// The set that answers `query` exactly, if any.
    fn for_query(query: &TaskQuery) -> Option<Self> {
        if query.mj_id.is_some() {
            return None;
        }
        let dims = [
            (query.owner.is_some(), BY_USER),
            (query.channel_id.is_some(), BY_CHANNEL),
            (query.status.is_some(), BY_STATUS),
            (query.action.is_some(), BY_ACTION),
        ]
        .into_iter()
        .filter(|(given, _)| *given)
        .fold(0, |dims, (_, dimension)| dims | dimension);
        COUNT_SETS.into_iter().find(|set| set.dims == dims)
    }
}

/// Counter changes of one transaction, in key order (so that concurrent writers lock counter
/// rows in the same order and cannot deadlock).
#[derive(Debug, Default)]
pub(crate) struct Deltas(BTreeMap<CounterKey, i64>);

impl Deltas {
    /// Counts `task` in (`+1`) or out (`-1`) of every set.
    pub(crate) fn add(&mut self, task: &NewTask, delta: i64) {
        for set in COUNT_SETS {
            *self.0.entry(set.key(task)).or_default() += delta;
        }
    }

    /// `old` becomes `new`: nothing when no counted dimension changed.
    pub(crate) fn replace(&mut self, old: &NewTask, new: &NewTask) {
        self.add(old, -1);
        self.add(new, 1);
    }

    /// The upserts that apply these changes (none when everything cancelled out), at most
    /// [`INSERT_CHUNK`](crate::store::sql::INSERT_CHUNK) rows each.
    pub(crate) fn statements<D: Dialect>(&self) -> Vec<QueryBuilder<D>> {
        let changes: Vec<_> = self.0.iter().filter(|(_, delta)| **delta != 0).collect();
        changes
            .chunks(crate::store::sql::INSERT_CHUNK)
            .map(|chunk| {
                let mut builder = QueryBuilder::new(
                    "INSERT INTO mj_task_counts \
                     (dims, user_id, channel_id, status, action, bucket, tasks) VALUES ",
                );
                for (n, (key, delta)) in chunk.iter().enumerate() {
                    builder.push(if n == 0 { "(" } else { ", (" });
                    D::bind_int(&mut builder, i64::from(key.dims));
                    builder.push(", ");
                    D::bind_int(&mut builder, key.user_id);
                    builder.push(", ");
                    D::bind_int(&mut builder, key.channel_id);
                    builder.push(", ");
                    D::bind_text(&mut builder, &key.status);
                    builder.push(", ");
                    D::bind_text(&mut builder, &key.action);
                    builder.push(", ");
                    D::bind_int(&mut builder, key.bucket);
                    builder.push(", ");
                    D::bind_int(&mut builder, **delta);
                    builder.push(")");
                }
                builder.push(D::ADD_TO_EXISTING_COUNT);
                builder
            })
            .collect()
    }
}

/// The whole buckets of a range, and its partial edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    /// First and last whole bucket (`None` = unbounded on that side).
    first_bucket: Option<i64>,
    last_bucket: Option<i64>,
    /// Inclusive time ranges left over below the first and above the last whole bucket.
    lower_edge: Option<(i64, i64)>,
    upper_edge: Option<(i64, i64)>,
}

/// Splits `[from, to]` into whole buckets of `width` and partial edges; `None` when no bucket
/// is whole (the range is then counted as it is: it spans less than two buckets).
fn split(from: Option<i64>, to: Option<i64>, width: i64) -> Option<Split> {
    let (width128, mut split) = (
        i128::from(width),
        Split {
            first_bucket: None,
            last_bucket: None,
            lower_edge: None,
            upper_edge: None,
        },
    );
    let narrow = |value: i128| i64::try_from(value).ok();
    if let Some(from) = from.map(i128::from) {
        let first = from.div_euclid(width128) + i128::from(from.rem_euclid(width128) != 0);
        let start = first * width128;
        split.first_bucket = Some(narrow(first)?);
        if from < start {
            split.lower_edge = Some((narrow(from)?, narrow(start - 1)?));
        }
    }
    if let Some(to) = to.map(i128::from) {
        let last = (to + 1).div_euclid(width128) - 1;
        let end = (last + 1) * width128;
        split.last_bucket = Some(narrow(last)?);
        if end <= to {
            split.upper_edge = Some((narrow(end)?, narrow(to)?));
        }
    }
    match (split.first_bucket, split.last_bucket) {
        (Some(first), Some(last)) if first > last => None,
        _ => Some(split),
    }
}

/// Appends a scalar expression that is the exact total of `query` (see the module docs).
pub(crate) fn push_total<D: Dialect>(
    builder: &mut QueryBuilder<D>,
    query: &TaskQuery,
    values: FilterValues,
) {
    let counted = CountSet::for_query(query).and_then(|set| {
        Some((
            set,
            split(query.submitted_from, query.submitted_to, set.bucket_ms)?,
        ))
    });
    let Some((set, split)) = counted else {
        builder.push("(SELECT COUNT(*) FROM midjourneys");
        push_where(builder, query, None, values);
        builder.push(")");
        return;
    };
    builder
        .push("CAST((SELECT COALESCE(SUM(tasks), 0) FROM mj_task_counts WHERE dims = ")
        .push(set.dims);
    let key = [
        (" AND user_id = ", Value::Int(query.owner.unwrap_or(0))),
        (
            " AND channel_id = ",
            Value::Int(query.channel_id.unwrap_or(0)),
        ),
        (
            " AND status = ",
            Value::Text(query.status.as_ref().map_or("", |s| s.as_str())),
        ),
        (
            " AND action = ",
            Value::Text(query.action.as_ref().map_or("", |a| a.as_str())),
        ),
    ];
    for (column, value) in key {
        builder.push(column);
        push_value(builder, values, value);
    }
    let buckets = [
        (" AND bucket >= ", split.first_bucket),
        (" AND bucket <= ", split.last_bucket),
    ];
    for (condition, bucket) in buckets {
        if let Some(bucket) = bucket {
            builder.push(condition);
            push_value(builder, values, Value::Int(bucket));
        }
    }
    builder.push(")");
    for (from, to) in [split.lower_edge, split.upper_edge].into_iter().flatten() {
        let edge = query.clone().submitted_between(Some(from), Some(to));
        builder.push(" + (SELECT COUNT(*) FROM midjourneys");
        push_where(builder, &edge, None, values);
        builder.push(")");
    }
    builder.push(" AS ").push(D::INTEGER_TYPE).push(")");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_into_whole_buckets_and_edges() {
        let hour = HOUR_MS;
        // 00:30 .. 03:14:59.999 → whole hours 1 and 2, edges 00:30-00:59 and 03:00-03:14.
        let split = split(Some(hour / 2), Some(3 * hour + hour / 4 - 1), hour).unwrap();
        assert_eq!((split.first_bucket, split.last_bucket), (Some(1), Some(2)));
        assert_eq!(split.lower_edge, Some((hour / 2, hour - 1)));
        assert_eq!(split.upper_edge, Some((3 * hour, 3 * hour + hour / 4 - 1)));
        // Aligned bounds leave no edges; open bounds leave the buckets open.
        let aligned = super::split(Some(hour), Some(3 * hour - 1), hour).unwrap();
        assert_eq!((aligned.lower_edge, aligned.upper_edge), (None, None));
        assert_eq!(
            (aligned.first_bucket, aligned.last_bucket),
            (Some(1), Some(2))
        );
        let open = super::split(None, None, hour).unwrap();
        assert_eq!((open.first_bucket, open.last_bucket), (None, None));
        // Inside one bucket, or across one boundary: no whole bucket, count it all.
        assert_eq!(super::split(Some(10), Some(20), hour), None);
        assert_eq!(super::split(Some(hour - 1), Some(hour + 1), hour), None);
        // Extreme bounds neither overflow nor panic.
        assert!(super::split(Some(i64::MIN), Some(i64::MAX), hour).is_some());
        let negative = super::split(Some(-hour - 1), Some(-1), hour).unwrap();
        assert_eq!(
            (negative.first_bucket, negative.last_bucket),
            (Some(-1), Some(-1))
        );
        assert_eq!(negative.lower_edge, Some((-hour - 1, -hour - 1)));
    }

    #[test]
    fn each_filter_combination_finds_its_set() {
        let user = TaskQuery::owned_by(3);
        assert_eq!(CountSet::for_query(&user).map(|s| s.dims), Some(BY_USER));
        let both = TaskQuery::all()
            .with_channel(1)
            .with_status(crate::TaskStatus::Success);
        assert_eq!(
            CountSet::for_query(&both).map(|s| s.dims),
            Some(BY_CHANNEL | BY_STATUS)
        );
        assert_eq!(CountSet::for_query(&user.clone().with_channel(1)), None);
        assert_eq!(CountSet::for_query(&user.with_mj_id("x")), None);
    }
}

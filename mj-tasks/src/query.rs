//! Query filters and pagination, and the parsing of raw query strings into them.
//!
//! The rules live here rather than in an HTTP layer so that every gateway embedding the crate
//! reads `?p=2&page_size=50&start_timestamp=...` the same way.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{Task, TaskAction, TaskStatus};
use crate::text::can_match_short;

/// Which tasks a list covers, by owner and by column filters. Every filter is optional and they
/// combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only tasks of this user (`None` = every user, for administrators).
    pub owner: Option<i64>,
    /// Exact upstream task id.
    pub mj_id: Option<String>,
    /// `submit_time >= value` (ms, inclusive).
    pub submitted_from: Option<i64>,
    /// `submit_time <= value` (ms, inclusive).
    pub submitted_to: Option<i64>,
    /// Only tasks of this upstream channel.
    pub channel_id: Option<i64>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this action.
    pub action: Option<TaskAction>,
}

impl TaskQuery {
    /// Every task of every user.
    pub fn all() -> Self {
        Self::default()
    }

    /// Every task of one user.
    ///
    /// # Examples
    ///
    /// ```
    /// use mj_tasks::TaskQuery;
    /// let query = TaskQuery::owned_by(7).submitted_between(Some(1_700_000_000_000), None);
    /// assert_eq!(query.owner, Some(7));
    /// ```
    pub fn owned_by(user_id: i64) -> Self {
        Self {
            owner: Some(user_id),
            ..Self::default()
        }
    }

    /// Restricts to one upstream task id.
    pub fn with_mj_id(mut self, mj_id: impl Into<String>) -> Self {
        self.mj_id = Some(mj_id.into());
        self
    }

    /// Restricts to one channel.
    pub fn with_channel(mut self, channel_id: i64) -> Self {
        self.channel_id = Some(channel_id);
        self
    }

    /// Restricts `submit_time` to an inclusive range (ms); `None` leaves that side open.
    pub fn submitted_between(mut self, from: Option<i64>, to: Option<i64>) -> Self {
        self.submitted_from = from;
        self.submitted_to = to;
        self
    }

    /// Restricts to one status (exact match on the stored value).
    pub fn with_status(mut self, status: TaskStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Restricts to one action (exact match on the stored value).
    pub fn with_action(mut self, action: TaskAction) -> Self {
        self.action = Some(action);
        self
    }

    /// Whether the bounds cannot match anything (`from > to`), so no query needs to run.
    pub fn is_empty_range(&self) -> bool {
        matches!((self.submitted_from, self.submitted_to), (Some(from), Some(to)) if from > to)
    }

    /// Whether no stored task can match, so no query needs to run: the bounds are empty, or a
    /// text filter holds a value no short column stores (NUL, which PostgreSQL refuses, or
    /// more than [`SHORT_TEXT_MAX_CHARS`](crate::text::SHORT_TEXT_MAX_CHARS) characters). Stores
    /// answer such a query without the database, so it matches nothing on every backend.
    ///
    /// ```
    /// use mj_tasks::TaskQuery;
    /// assert!(TaskQuery::all().with_mj_id("a\0b").matches_nothing());
    /// assert!(!TaskQuery::all().with_mj_id("1715240000123456").matches_nothing());
    /// ```
    pub fn matches_nothing(&self) -> bool {
        let text_filters = [
            self.mj_id.as_deref(),
            self.status.as_ref().map(TaskStatus::as_str),
            self.action.as_ref().map(TaskAction::as_str),
        ];
        self.is_empty_range()
            || text_filters
                .into_iter()
                .flatten()
                .any(|value| !can_match_short(value))
    }

    /// Whether a time bound is set.
    pub fn has_range(&self) -> bool {
        self.submitted_from.is_some() || self.submitted_to.is_some()
    }

    /// A digest of every filter, so that a cursor made for one list is refused by another.
    fn fingerprint(&self, hasher: &mut Sha256) {
        fn int(hasher: &mut Sha256, value: Option<i64>) {
            match value {
                Some(value) => {
                    hasher.update([1]);
                    hasher.update(value.to_be_bytes());
                }
                None => hasher.update([0]),
            }
        }
        fn text(hasher: &mut Sha256, value: Option<&str>) {
            match value {
                Some(value) => {
                    hasher.update([1]);
                    hasher.update((value.len() as u64).to_be_bytes());
                    hasher.update(value.as_bytes());
                }
                None => hasher.update([0]),
            }
        }
        int(hasher, self.owner);
        int(hasher, self.channel_id);
        int(hasher, self.submitted_from);
        int(hasher, self.submitted_to);
        text(hasher, self.mj_id.as_deref());
        text(hasher, self.status.as_ref().map(TaskStatus::as_str));
        text(hasher, self.action.as_ref().map(TaskAction::as_str));
    }
}

/// Where a cursor walk stands: the last item of the page before, and the number of the page
/// the cursor leads to. The next page holds the tasks with `id < last_id`, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorPosition {
    /// The id of the last item of the previous page.
    pub last_id: i64,
    /// Its `submit_time`: range pages start their index walk there.
    pub last_submit_time: i64,
    /// The 1-based number of the page this cursor leads to.
    pub page: u64,
}

impl CursorPosition {
    /// The position after `last`, the final item of page `page`.
    pub fn after(last: &Task, page: u64) -> Self {
        Self {
            last_id: last.id,
            last_submit_time: last.submit_time,
            page: page.saturating_add(1).min(PageRequest::MAX_PAGE),
        }
    }

    const BODY_LEN: usize = 24;
    const DIGEST_LEN: usize = 8;

    /// The opaque `next_cursor` string of this position in the list of `query`: hex of the
    /// position and a digest binding it to the query's filters.
    ///
    /// ```
    /// use mj_tasks::query::CursorPosition;
    /// use mj_tasks::TaskQuery;
    /// let position = CursorPosition { last_id: 42, last_submit_time: 1_700_000_000_000, page: 3 };
    /// let cursor = position.encode(&TaskQuery::owned_by(7));
    /// assert_eq!(CursorPosition::decode(&cursor, &TaskQuery::owned_by(7)), Ok(position));
    /// assert!(CursorPosition::decode(&cursor, &TaskQuery::owned_by(8)).is_err());
    /// ```
    pub fn encode(&self, query: &TaskQuery) -> String {
        let body = self.body();
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(&Self::digest(&body, query));
        hex::encode(bytes)
    }

    /// Reads a cursor made by [`Self::encode`] for the same filters; anything else (not hex,
    /// wrong length, altered, made for other filters) is a [`QueryError`] naming `cursor`.
    pub fn decode(cursor: &str, query: &TaskQuery) -> Result<Self, QueryError> {
        let invalid = || QueryError::new("cursor", "must be a next_cursor of this same list");
        let bytes = hex::decode(cursor).map_err(|_| invalid())?;
        if bytes.len() != Self::BODY_LEN + Self::DIGEST_LEN {
            return Err(invalid());
        }
        let (body, digest) = bytes.split_at(Self::BODY_LEN);
        let body: [u8; Self::BODY_LEN] = body.try_into().map_err(|_| invalid())?;
        if Self::digest(&body, query).as_slice() != digest {
            return Err(invalid());
        }
        let word = |n: usize| {
            let mut buffer = [0; 8];
            buffer.copy_from_slice(&body[n * 8..n * 8 + 8]);
            buffer
        };
        let page = u64::from_be_bytes(word(2));
        if !(2..=PageRequest::MAX_PAGE).contains(&page) {
            return Err(invalid());
        }
        Ok(Self {
            last_id: i64::from_be_bytes(word(0)),
            last_submit_time: i64::from_be_bytes(word(1)),
            page,
        })
    }

    fn body(&self) -> [u8; Self::BODY_LEN] {
        let mut body = [0; Self::BODY_LEN];
        body[..8].copy_from_slice(&self.last_id.to_be_bytes());
        body[8..16].copy_from_slice(&self.last_submit_time.to_be_bytes());
        body[16..].copy_from_slice(&self.page.to_be_bytes());
        body
    }

    fn digest(body: &[u8; Self::BODY_LEN], query: &TaskQuery) -> [u8; Self::DIGEST_LEN] {
        let mut hasher = Sha256::new();
        hasher.update(b"mj-tasks list cursor v1\0");
        hasher.update(body);
        query.fingerprint(&mut hasher);
        let mut digest = [0; Self::DIGEST_LEN];
        digest.copy_from_slice(&hasher.finalize()[..Self::DIGEST_LEN]);
        digest
    }
}

/// A validated page request: 1-based page number and a page size in `1..=MAX_PAGE_SIZE`, and
/// optionally a cursor position, which replaces the page number's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    page: u64,
    page_size: u32,
    after: Option<CursorPosition>,
}

impl PageRequest {
    /// Items per page when none is asked for.
    pub const DEFAULT_PAGE_SIZE: u32 = 20;
    /// The largest page size served; larger requests are capped.
    pub const MAX_PAGE_SIZE: u32 = 100;
    /// The largest page number kept; beyond it every page is past the end anyway, and capping
    /// keeps `offset` inside an `i64` for every database.
    pub const MAX_PAGE: u64 = (i64::MAX as u64) / (Self::MAX_PAGE_SIZE as u64) / 2;

    /// Applies the contract's rules: page `<= 0` reads as 1, size `0` as the default, size above
    /// the cap as the cap; a negative size is an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use mj_tasks::PageRequest;
    /// let page = PageRequest::new(0, 500).unwrap();
    /// assert_eq!((page.page(), page.page_size()), (1, 100));
    /// assert!(PageRequest::new(1, -1).is_err());
    /// ```
    pub fn new(page: i64, page_size: i64) -> Result<Self, QueryError> {
        if page_size < 0 {
            return Err(QueryError::new("page_size", "must not be negative"));
        }
        let page_size = match page_size {
            0 => Self::DEFAULT_PAGE_SIZE,
            n => n.min(i64::from(Self::MAX_PAGE_SIZE)) as u32,
        };
        let page = (page.max(1) as u64).min(Self::MAX_PAGE);
        Ok(Self {
            page,
            page_size,
            after: None,
        })
    }

    /// The first page with the default size.
    pub fn first() -> Self {
        Self {
            page: 1,
            page_size: Self::DEFAULT_PAGE_SIZE,
            after: None,
        }
    }

    /// The page after a cursor position (keyset pagination): the page number becomes the
    /// cursor's and the offset is gone.
    pub fn after(self, position: CursorPosition) -> Self {
        Self {
            page: position.page,
            after: Some(position),
            ..self
        }
    }

    /// The cursor position this page starts after, if it was asked for by cursor.
    pub fn cursor(&self) -> Option<CursorPosition> {
        self.after
    }

    /// The 1-based page number.
    pub fn page(&self) -> u64 {
        self.page
    }

    /// Items per page.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Rows to skip: `(page - 1) * page_size`, or 0 after a cursor (the cursor's bound does
    /// the skipping).
    pub fn offset(&self) -> u64 {
        if self.after.is_some() {
            return 0;
        }
        (self.page - 1) * u64::from(self.page_size)
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self::first()
    }
}

/// One page of results with the exact number of matching items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// The items of this page, newest first.
    pub items: Vec<T>,
    /// How many items match the query in all.
    pub total: u64,
    /// The effective page number.
    pub page: u64,
    /// The effective page size.
    pub page_size: u32,
    /// The opaque cursor of the page after this one (pass it as `cursor`), or `None` on the
    /// last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// An empty page (past the end) that still reports `total`.
    pub fn empty(request: PageRequest, total: u64) -> Self {
        Self {
            items: Vec::new(),
            total,
            page: request.page(),
            page_size: request.page_size(),
            next_cursor: None,
        }
    }

    /// Converts every item, keeping the page metadata.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            total: self.total,
            page: self.page,
            page_size: self.page_size,
            next_cursor: self.next_cursor,
        }
    }

    /// Converts every item by reference, keeping the page metadata.
    pub fn map_ref<'a, U>(&'a self, f: impl FnMut(&'a T) -> U) -> Page<U> {
        Page {
            items: self.items.iter().map(f).collect(),
            total: self.total,
            page: self.page,
            page_size: self.page_size,
            next_cursor: self.next_cursor.clone(),
        }
    }
}

impl Page<Task> {
    /// The page of `request` from `rows`, which the store read with one row more than the page
    /// holds: that extra row only tells that a next page exists, and `next_cursor` then points
    /// after the page's last item.
    pub fn from_rows(
        query: &TaskQuery,
        request: PageRequest,
        total: u64,
        mut rows: Vec<Task>,
    ) -> Self {
        let page_size = request.page_size() as usize;
        let has_next = rows.len() > page_size;
        rows.truncate(page_size);
        let next_cursor = match rows.last() {
            Some(last) if has_next => {
                Some(CursorPosition::after(last, request.page()).encode(query))
            }
            _ => None,
        };
        Self {
            items: rows,
            total,
            page: request.page(),
            page_size: request.page_size(),
            next_cursor,
        }
    }
}

/// A query parameter that could not be read; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid query parameter `{parameter}`: {reason}")]
pub struct QueryError {
    /// The offending parameter.
    pub parameter: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl QueryError {
    fn new(parameter: &'static str, reason: &'static str) -> Self {
        Self { parameter, reason }
    }
}

/// Who is listing: decides the owner scope and which parameters count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A user listing their own tasks; `channel_id` and `user_id` are ignored.
    Owner(i64),
    /// An administrator listing every task; `channel_id` and `user_id` filter.
    Admin,
}

/// Time bounds below this are read as seconds and multiplied by 1000 (10^11 ms is 1973; 10^11 s
/// is year 5138, so the two ranges cannot be confused for real submit times).
pub const SECONDS_THRESHOLD: i64 = 100_000_000_000;

/// Normalises a time bound to milliseconds: values below [`SECONDS_THRESHOLD`] are seconds.
///
/// ```
/// use mj_tasks::query::normalize_millis;
/// assert_eq!(normalize_millis(1_640_908_800), 1_640_908_800_000);
/// assert_eq!(normalize_millis(1_640_908_800_123), 1_640_908_800_123);
/// ```
pub fn normalize_millis(value: i64) -> i64 {
    if value < SECONDS_THRESHOLD {
        value.saturating_mul(1000)
    } else {
        value
    }
}

/// Parses a raw query string (`p=2&page_size=50&mj_id=...`) into the filters and page of a task
/// list, with the contract's rules:
///
/// - `p`: 1-based, `<= 0` reads as 1; `page_size` (aliases `ps`, `size`): 0 = default 20, capped
///   at 100, negative is an error;
/// - `mj_id`, `status`, `action`: exact match on the stored value (an unknown value matches
///   nothing); `channel_id` and `user_id` (integers) only for [`Audience::Admin`];
/// - `start_timestamp` / `end_timestamp`: inclusive bounds on `submit_time`, seconds or ms;
/// - `cursor`: a [`Page::next_cursor`] of the same filters; the page after it is read instead
///   of page `p` (whose number is then ignored);
/// - an empty value means "not given"; unknown parameters are ignored; the first occurrence of a
///   repeated parameter wins; a value that is not of its type is a [`QueryError`] naming it.
///
/// # Examples
///
/// ```
/// use mj_tasks::{parse_list_query, Audience};
/// let (query, page) = parse_list_query("p=2&ps=5&start_timestamp=1640908800", Audience::Owner(7)).unwrap();
/// assert_eq!(query.owner, Some(7));
/// assert_eq!(query.submitted_from, Some(1_640_908_800_000));
/// assert_eq!((page.page(), page.page_size()), (2, 5));
/// assert_eq!(parse_list_query("p=abc", Audience::Admin).unwrap_err().parameter, "p");
/// ```
pub fn parse_list_query(
    raw_query: &str,
    audience: Audience,
) -> Result<(TaskQuery, PageRequest), QueryError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    let get = |name: &str| -> Option<&str> {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim())
            .filter(|value| !value.is_empty())
    };

    let page = get("p").map(|v| parse_page_number(v, "p")).transpose()?;
    let (size_name, size_text) = ["page_size", "ps", "size"]
        .into_iter()
        .find_map(|name| get(name).map(|value| (name, value)))
        .unwrap_or(("page_size", "0"));
    let page_size = parse_integer(size_text, size_name)?;
    if page_size < 0 {
        return Err(QueryError::new(size_name, "must not be negative"));
    }
    let page = PageRequest::new(page.unwrap_or(1), page_size)?;

    let mut query = TaskQuery {
        owner: match audience {
            Audience::Owner(user_id) => Some(user_id),
            Audience::Admin => None,
        },
        mj_id: get("mj_id").map(str::to_owned),
        submitted_from: get("start_timestamp")
            .map(|v| parse_integer(v, "start_timestamp").map(normalize_millis))
            .transpose()?,
        submitted_to: get("end_timestamp")
            .map(|v| parse_integer(v, "end_timestamp").map(normalize_millis))
            .transpose()?,
        status: get("status").map(TaskStatus::parse),
        action: get("action").map(TaskAction::parse),
        channel_id: None,
    };
    if audience == Audience::Admin {
        query.channel_id = get("channel_id")
            .map(|v| parse_integer(v, "channel_id"))
            .transpose()?;
        query.owner = get("user_id")
            .map(|v| parse_integer(v, "user_id"))
            .transpose()?;
    }
    let page = match get("cursor") {
        Some(cursor) => page.after(CursorPosition::decode(cursor, &query)?),
        None => page,
    };
    Ok((query, page))
}

fn parse_integer(text: &str, parameter: &'static str) -> Result<i64, QueryError> {
    text.parse()
        .map_err(|_| QueryError::new(parameter, "must be an integer"))
}

/// A page number too large for `i64` is still a page number (past the end), not an error.
fn parse_page_number(text: &str, parameter: &'static str) -> Result<i64, QueryError> {
    match text.parse::<i64>() {
        Ok(value) => Ok(value),
        Err(_) => {
            let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                Ok(if text.starts_with('-') { 1 } else { i64::MAX })
            } else {
                Err(QueryError::new(parameter, "must be an integer"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(raw: &str) -> Result<(TaskQuery, PageRequest), QueryError> {
        parse_list_query(raw, Audience::Admin)
    }

    #[test]
    fn defaults() {
        let (query, page) = parse("").unwrap_or_default();
        assert_eq!(query, TaskQuery::all());
        assert_eq!((page.page(), page.page_size()), (1, 20));
    }

    #[test]
    fn page_rules() {
        let page = |raw| parse(raw).map(|(_, page)| (page.page(), page.page_size()));
        assert_eq!(page("p=0"), Ok((1, 20)));
        assert_eq!(page("p=-3&page_size=0"), Ok((1, 20)));
        assert_eq!(page("page_size=101"), Ok((1, 100)));
        assert_eq!(page("size=7"), Ok((1, 7)));
        assert_eq!(page("ps=9&size=7"), Ok((1, 9)));
        assert_eq!(page("page_size=&ps=9"), Ok((1, 9)));
        assert_eq!(
            page("p=99999999999999999999999").map(|p| p.0),
            Ok(PageRequest::MAX_PAGE)
        );
        assert_eq!(page("page_size=-1").unwrap_err().parameter, "page_size");
        assert_eq!(page("ps=-1").unwrap_err().parameter, "ps");
        assert_eq!(page("p=abc").unwrap_err().parameter, "p");
        assert_eq!(page("p=1.5").unwrap_err().parameter, "p");
        assert_eq!(page("page_size=lots").unwrap_err().parameter, "page_size");
    }

    #[test]
    fn filters() {
        let (query, _) = parse("mj_id=abc&start_timestamp=1640908800&end_timestamp=1640995200123&channel_id=3&status=SUCCESS&action=IMAGINE&junk=1")
            .unwrap_or_default();
        assert_eq!(query.mj_id.as_deref(), Some("abc"));
        assert_eq!(query.submitted_from, Some(1_640_908_800_000));
        assert_eq!(query.submitted_to, Some(1_640_995_200_123));
        assert_eq!(query.channel_id, Some(3));
        assert_eq!(query.status, Some(TaskStatus::Success));
        assert_eq!(query.action, Some(TaskAction::Imagine));
    }

    #[test]
    fn bad_values_name_the_parameter() {
        assert_eq!(
            parse("end_timestamp=NaN").unwrap_err().parameter,
            "end_timestamp"
        );
        assert_eq!(
            parse("start_timestamp=1e9").unwrap_err().parameter,
            "start_timestamp"
        );
        assert_eq!(parse("channel_id=x").unwrap_err().parameter, "channel_id");
        let err = parse("end_timestamp=NaN").unwrap_err().to_string();
        assert!(err.contains("end_timestamp"), "{err}");
    }

    #[test]
    fn owner_scope_ignores_channel() {
        let (query, _) = parse_list_query("channel_id=oops&mj_id=%E7%8C%AB", Audience::Owner(4))
            .unwrap_or_default();
        assert_eq!(query.owner, Some(4));
        assert_eq!(query.channel_id, None);
        assert_eq!(query.mj_id.as_deref(), Some("猫"));
    }

    #[test]
    fn admin_filters_by_user_and_owner_cannot() {
        let (query, _) = parse("user_id=12&status=IN_PROGRESS").unwrap_or_default();
        assert_eq!(query.owner, Some(12));
        assert_eq!(query.status, Some(TaskStatus::InProgress));
        assert_eq!(parse("user_id=abc").unwrap_err().parameter, "user_id");
        let (own, _) =
            parse_list_query("user_id=12&action=UPSCALE", Audience::Owner(4)).unwrap_or_default();
        assert_eq!(own.owner, Some(4));
        assert_eq!(own.action, Some(TaskAction::Upscale));
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_lists() {
        let query = TaskQuery::owned_by(4).with_status(TaskStatus::Success);
        let position = CursorPosition {
            last_id: 1234,
            last_submit_time: 1_700_000_000_000,
            page: 2,
        };
        let cursor = position.encode(&query);
        let raw = format!("status=SUCCESS&p=9&page_size=5&cursor={cursor}");
        let (parsed, page) = parse_list_query(&raw, Audience::Owner(4)).unwrap();
        assert_eq!(parsed, query);
        assert_eq!(page.cursor(), Some(position));
        assert_eq!((page.page(), page.page_size(), page.offset()), (2, 5, 0));
        // Same cursor, other filters or another owner: refused, naming `cursor`.
        for (raw, audience) in [
            (
                format!("status=FAILURE&cursor={cursor}"),
                Audience::Owner(4),
            ),
            (
                format!("status=SUCCESS&cursor={cursor}"),
                Audience::Owner(5),
            ),
            (format!("status=SUCCESS&cursor={cursor}"), Audience::Admin),
        ] {
            let error = parse_list_query(&raw, audience).unwrap_err();
            assert_eq!(error.parameter, "cursor", "{raw}");
        }
        // Malformed or tampered.
        let mut tampered = cursor.clone().into_bytes();
        tampered[10] = if tampered[10] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        for bad in ["zz", "00", &cursor[..cursor.len() - 2], &tampered, "%00"] {
            let raw = format!("status=SUCCESS&cursor={bad}");
            let error = parse_list_query(&raw, Audience::Owner(4)).unwrap_err();
            assert_eq!(error.parameter, "cursor", "{bad}");
        }
        // An empty cursor is no cursor.
        let (_, page) = parse_list_query("cursor=&p=3", Audience::Owner(4)).unwrap();
        assert_eq!((page.cursor(), page.page()), (None, 3));
    }

    #[test]
    fn unstorable_text_filters_match_nothing() {
        let long = "x".repeat(crate::text::SHORT_TEXT_MAX_CHARS + 1);
        for raw in [
            "mj_id=%00".to_owned(),
            "status=SUC%00CESS".to_owned(),
            "action=%00".to_owned(),
            format!("mj_id={long}"),
        ] {
            let (query, _) = parse(&raw).unwrap();
            assert!(query.matches_nothing(), "{raw}");
        }
        let (query, _) = parse("mj_id=abc&status=SUCCESS&action=IMAGINE").unwrap();
        assert!(!query.matches_nothing());
    }

    #[test]
    fn empty_range_detected() {
        assert!(
            TaskQuery::all()
                .submitted_between(Some(5), Some(4))
                .is_empty_range()
        );
        assert!(
            !TaskQuery::all()
                .submitted_between(Some(5), Some(5))
                .is_empty_range()
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_page_is_valid(raw in ".{0,200}") {
            if let Ok((_, page)) = parse_list_query(&raw, Audience::Admin) {
                prop_assert!(page.page() >= 1 && page.page() <= PageRequest::MAX_PAGE);
                prop_assert!(page.page_size() >= 1 && page.page_size() <= PageRequest::MAX_PAGE_SIZE);
                prop_assert!(i64::try_from(page.offset()).is_ok());
            }
        }
    }
}

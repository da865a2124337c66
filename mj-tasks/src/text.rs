//! Text that every backend can store, checked where it enters.
//!
//! The three engines disagree on what a text column accepts: PostgreSQL refuses NUL (U+0000) in
//! `TEXT`, MariaDB and SQLite store it; MariaDB's `VARCHAR(191)` columns (ids, actions,
//! statuses, names) refuse longer values in strict mode while SQLite and PostgreSQL take them.
//! Checking once, before anything is charged, sent upstream or written, gives the same answer
//! on every backend: a client's mistake naming the field, never a database error.

/// The longest value, in characters, of the short text columns (`mj_id`, `action`, `status`,
/// user and channel names): MariaDB's `VARCHAR(191)`, the longest utf8mb4 key it indexes.
pub const SHORT_TEXT_MAX_CHARS: usize = 191;

/// The longest value, in bytes, of the long text columns (`prompt`, `state`, `description`,
/// ...): MariaDB's `MEDIUMTEXT` holds 16 MiB less one byte.
pub const LONG_TEXT_MAX_BYTES: usize = 16 * 1024 * 1024 - 1;

/// Why a text cannot be stored. The message names the field, so it can be shown to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The text holds a NUL character, which PostgreSQL cannot store.
    #[error("{field} must not contain NUL characters")]
    Nul {
        /// The parameter or body field, as the client spelled it.
        field: &'static str,
    },
    /// The text is longer than its column holds on every backend.
    #[error("{field} is too long (at most {max} {unit})")]
    TooLong {
        /// The parameter or body field, as the client spelled it.
        field: &'static str,
        /// The limit.
        max: usize,
        /// What the limit counts: `"characters"` or `"bytes"`.
        unit: &'static str,
    },
}

impl TextError {
    /// The parameter or body field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Nul { field } | Self::TooLong { field, .. } => field,
        }
    }
}

/// Checks a value for a short column (ids, actions, statuses, names): no NUL, at most
/// [`SHORT_TEXT_MAX_CHARS`] characters.
///
/// # Examples
///
/// ```
/// use mj_tasks::text::{check_short, TextError};
/// assert!(check_short("mj_id", "1715240000123456").is_ok());
/// assert_eq!(check_short("mj_id", "a\0b"), Err(TextError::Nul { field: "mj_id" }));
/// ```
pub fn check_short(field: &'static str, value: &str) -> Result<(), TextError> {
    check_nul(field, value)?;
    // Counting characters is only needed once the bytes could exceed the limit.
    if value.len() > SHORT_TEXT_MAX_CHARS && value.chars().count() > SHORT_TEXT_MAX_CHARS {
        return Err(TextError::TooLong {
            field,
            max: SHORT_TEXT_MAX_CHARS,
            unit: "characters",
        });
    }
    Ok(())
}

/// Checks a value for a long column (prompts, state, base64 images): no NUL, at most
/// [`LONG_TEXT_MAX_BYTES`] bytes.
///
/// # Examples
///
/// ```
/// use mj_tasks::text::check_long;
/// assert!(check_long("prompt", "a red fox, 雪の中で").is_ok());
/// assert!(check_long("prompt", "\u{0}").is_err());
/// ```
pub fn check_long(field: &'static str, value: &str) -> Result<(), TextError> {
    check_nul(field, value)?;
    if value.len() > LONG_TEXT_MAX_BYTES {
        return Err(TextError::TooLong {
            field,
            max: LONG_TEXT_MAX_BYTES,
            unit: "bytes",
        });
    }
    Ok(())
}

/// Whether a lookup value (an `mj_id` filter, an id in list-by-condition) can match a stored
/// short value at all. A lookup that cannot match simply finds nothing: callers skip the
/// database instead of sending it a value one backend would refuse.
///
/// # Examples
///
/// ```
/// use mj_tasks::text::can_match_short;
/// assert!(can_match_short("1715240000123456"));
/// assert!(!can_match_short("\0"));
/// ```
pub fn can_match_short(value: &str) -> bool {
    check_short("lookup", value).is_ok()
}

fn check_nul(field: &'static str, value: &str) -> Result<(), TextError> {
    if value.contains('\0') {
        Err(TextError::Nul { field })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_counts_characters_not_bytes() {
        let cjk = "雪".repeat(SHORT_TEXT_MAX_CHARS);
        assert!(cjk.len() > SHORT_TEXT_MAX_CHARS);
        assert_eq!(check_short("name", &cjk), Ok(()));
        let longer = format!("{cjk}a");
        assert_eq!(
            check_short("name", &longer),
            Err(TextError::TooLong {
                field: "name",
                max: SHORT_TEXT_MAX_CHARS,
                unit: "characters"
            })
        );
    }

    #[test]
    fn nul_anywhere_is_refused_and_named() {
        for value in ["\0", "a\0", "\0a", "a\0b"] {
            let error = check_long("state", value).unwrap_err();
            assert_eq!(error.field(), "state");
            assert_eq!(error.to_string(), "state must not contain NUL characters");
        }
    }

    #[test]
    fn long_text_limit_is_in_bytes() {
        let at_limit = "a".repeat(LONG_TEXT_MAX_BYTES);
        assert_eq!(check_long("prompt", &at_limit), Ok(()));
        let over = format!("{at_limit}a");
        assert!(matches!(
            check_long("prompt", &over),
            Err(TextError::TooLong { unit: "bytes", .. })
        ));
    }

    #[test]
    fn lookups_that_cannot_match() {
        assert!(can_match_short(""));
        assert!(!can_match_short(&"x".repeat(SHORT_TEXT_MAX_CHARS + 1)));
        assert!(!can_match_short("abc\0"));
    }
}

//! Signed, owner-bound image URLs.
//!
//! A forwarded image URL is `{base}/mj/image/{mj_id}?u={owner}&e={expiry}&s={signature}`:
//!
//! - `u`: the id of the task's owner (decimal);
//! - `e`: the expiry as Unix seconds, `0` for a URL that never expires;
//! - `s`: the HMAC-SHA256 (64 lowercase hex digits, the full 256 bits) of a length-prefixed
//!   encoding of `(owner, mj_id, expiry)` under the signing key.
//!
//! Verification needs nothing but the key: it happens before any database lookup, the
//! comparison is constant time ([`hmac::Mac::verify_slice`]), and the lookup then uses both the
//! owner and the `mj_id`, so a URL opens exactly one user's task. Unknown query parameters (for
//! example a cache-busting `rand`) are ignored.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::model::Task;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation: a MAC made for anything else under the same key never verifies here.
const CONTEXT: &[u8] = b"mj-tasks/image-url/v1";

/// The longest an expiry is rounded up, in seconds: URLs handed out within the same hour are
/// identical, so browsers and CDNs can cache them.
const EXPIRY_GRANULARITY_SECS: u64 = 3600;

/// The shortest signing key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// Signs and verifies image URLs. Its `Debug` never shows the key.
///
/// # Examples
///
/// ```
/// use mj_tasks::image::ImageUrlSigner;
///
/// let signer = ImageUrlSigner::new(b"a key of at least sixteen bytes".to_vec(), 3600).unwrap();
/// let url = signer.url_for("https://gw.example", 7, "1715240000123456", 1_700_000_000);
/// let query = url.split_once('?').unwrap().1;
/// let verified = signer.verify("1715240000123456", query, 1_700_000_100).unwrap();
/// assert_eq!(verified.owner, 7);
/// ```
#[derive(Clone)]
pub struct ImageUrlSigner {
    key: Vec<u8>,
    ttl_secs: u64,
}

impl fmt::Debug for ImageUrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageUrlSigner")
            .field("key", &"<redacted>")
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// What a valid signature vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedImage {
    /// The owner the URL was issued for: look the task up with this owner and the `mj_id`.
    pub owner: i64,
    /// Expiry in Unix seconds, `None` for a URL that never expires.
    pub expires_at: Option<u64>,
}

/// Why a signature was refused (HTTP 403 for every variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// `u`, `e` or `s` is missing.
    #[error("the image URL is not signed")]
    Missing,
    /// A parameter is repeated or not of the expected form.
    #[error("the image URL signature is malformed")]
    Malformed,
    /// The signature does not match (forged, truncated, other owner or other task).
    #[error("the image URL signature is invalid")]
    Invalid,
    /// The signature is authentic but its expiry has passed.
    #[error("the image URL has expired")]
    Expired,
}

/// A signing key that is too short to be safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the image signing key must be at least {MIN_KEY_LEN} bytes")]
pub struct WeakKeyError;

impl ImageUrlSigner {
    /// A signer with `key` (at least [`MIN_KEY_LEN`] bytes) whose URLs live `ttl_secs` seconds
    /// (`0`: they never expire).
    ///
    /// # Examples
    ///
    /// ```
    /// use mj_tasks::image::ImageUrlSigner;
    /// assert!(ImageUrlSigner::new(b"short".to_vec(), 60).is_err());
    /// assert!(ImageUrlSigner::new(vec![7; 32], 0).is_ok());
    /// ```
    pub fn new(key: Vec<u8>, ttl_secs: u64) -> Result<Self, WeakKeyError> {
        if key.len() < MIN_KEY_LEN {
            return Err(WeakKeyError);
        }
        Ok(Self { key, ttl_secs })
    }

    /// How long issued URLs live, in seconds (`0`: forever).
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// The expiry a URL issued at `now` (Unix seconds) carries: `now + ttl`, rounded up to the
    /// next multiple of `min(ttl, 1 h)` so that URLs issued close together are identical; `0`
    /// when URLs never expire.
    pub fn expiry_for(&self, now: i64) -> u64 {
        if self.ttl_secs == 0 {
            return 0;
        }
        let now = u64::try_from(now).unwrap_or(0);
        let step = self.ttl_secs.min(EXPIRY_GRANULARITY_SECS);
        let target = now.saturating_add(self.ttl_secs);
        target.div_ceil(step).saturating_mul(step).max(1)
    }

    /// The signed URL of `mj_id`'s image for `owner`, issued at `now` (Unix seconds). `base` is
    /// the public server address (a trailing `/` is ignored).
    pub fn url_for(&self, base: &str, owner: i64, mj_id: &str, now: i64) -> String {
        let expiry = self.expiry_for(now);
        let signature = hex::encode(self.mac(owner, mj_id, expiry));
        format!(
            "{}/mj/image/{}?u={owner}&e={expiry}&s={signature}",
            base.trim_end_matches('/'),
            encode_path_segment(mj_id)
        )
    }

    /// The `image_url` to show for `task` when forwarding is on: `""` when the task has no image,
    /// the signed URL otherwise. The one function dashboard lists and relay answers share.
    pub fn present(&self, task: &Task, base: &str, now: i64) -> String {
        if task.image_url.trim().is_empty() {
            return String::new();
        }
        self.url_for(base, task.user_id, &task.mj_id, now)
    }

    /// Checks the signature in `query` (the raw query string, without `?`) for `mj_id` at `now`
    /// (Unix seconds). Touches no database: call it before any lookup.
    pub fn verify(
        &self,
        mj_id: &str,
        query: &str,
        now: i64,
    ) -> Result<VerifiedImage, SignatureError> {
        let (mut owner, mut expiry, mut signature) = (None, None, None);
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "u" => &mut owner,
                "e" => &mut expiry,
                "s" => &mut signature,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(SignatureError::Malformed);
            }
        }
        let (Some(owner), Some(expiry), Some(signature)) = (owner, expiry, signature) else {
            return Err(SignatureError::Missing);
        };
        let owner: i64 = parse_decimal(&owner).ok_or(SignatureError::Malformed)?;
        let expiry: u64 = parse_decimal(&expiry).ok_or(SignatureError::Malformed)?;
        let tag = unhex(&signature).ok_or(SignatureError::Malformed)?;
        if tag.len() != 32 {
            // A truncated tag is refused outright: `verify_slice` would also refuse it, but a
            // short tag must never be mistaken for a shorter MAC scheme.
            return Err(SignatureError::Invalid);
        }
        self.keyed(owner, mj_id, expiry)
            .verify_slice(&tag)
            .map_err(|_| SignatureError::Invalid)?;
        // Expiry is checked only once the signature is known to be ours.
        if expiry != 0 && u64::try_from(now).unwrap_or(0) > expiry {
            return Err(SignatureError::Expired);
        }
        Ok(VerifiedImage {
            owner,
            expires_at: (expiry != 0).then_some(expiry),
        })
    }

    fn keyed(&self, owner: i64, mj_id: &str, expiry: u64) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail; the fallback keeps the
        // signature of a function that must not panic.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => <HmacSha256 as KeyInit>::new(&Default::default()),
        };
        // Length-prefixed fields: no two different triples encode to the same bytes.
        mac.update(&(CONTEXT.len() as u64).to_be_bytes());
        mac.update(CONTEXT);
        mac.update(&owner.to_be_bytes());
        mac.update(&(mj_id.len() as u64).to_be_bytes());
        mac.update(mj_id.as_bytes());
        mac.update(&expiry.to_be_bytes());
        mac
    }

    fn mac(&self, owner: i64, mj_id: &str, expiry: u64) -> Vec<u8> {
        self.keyed(owner, mj_id, expiry)
            .finalize()
            .into_bytes()
            .to_vec()
    }
}

/// Strict decimal: ASCII digits with an optional leading `-`, no `+`, spaces or leading zeros,
/// so that one value has exactly one spelling.
fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical || text == "-0" {
        return None;
    }
    text.parse().ok()
}

/// Lowercase hex only (one spelling per signature).
fn unhex(text: &str) -> Option<Vec<u8>> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded path segment; `None` for a bad escape or invalid UTF-8.
pub fn decode_path_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let pair = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(pair, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn signer(ttl: u64) -> ImageUrlSigner {
        ImageUrlSigner::new(b"0123456789abcdef0123456789abcdef".to_vec(), ttl).unwrap()
    }

    fn query(url: &str) -> &str {
        url.split_once('?').unwrap().1
    }

    #[test]
    fn format_is_documented() {
        let url = signer(0).url_for("http://gw/", 42, "17152", 1000);
        let (path, q) = url.split_once('?').unwrap();
        assert_eq!(path, "http://gw/mj/image/17152");
        let parts: Vec<_> = q.split('&').collect();
        assert_eq!(parts[0], "u=42");
        assert_eq!(parts[1], "e=0");
        assert!(parts[2].starts_with("s=") && parts[2].len() == 66);
    }

    #[test]
    fn expiry_rounds_up_and_expires() {
        let s = signer(30 * 86400);
        let e = s.expiry_for(1_000_000);
        assert!((1_000_000 + 30 * 86400..1_000_000 + 30 * 86400 + 3600).contains(&e));
        assert_eq!(s.expiry_for(1_000_001), e, "stable within the hour");
        let url = s.url_for("http://gw", 1, "m", 1_000_000);
        assert!(
            s.verify("m", query(&url), i64::try_from(e).unwrap())
                .is_ok()
        );
        assert_eq!(
            s.verify("m", query(&url), i64::try_from(e).unwrap() + 1),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn refusals() {
        let s = signer(60);
        let url = s.url_for("http://gw", 1, "m", 100);
        let q = query(&url);
        assert_eq!(s.verify("m", "", 100), Err(SignatureError::Missing));
        assert_eq!(s.verify("m", "u=1&e=0", 100), Err(SignatureError::Missing));
        assert_eq!(
            s.verify("m", &format!("{q}&u=1"), 100),
            Err(SignatureError::Malformed)
        );
        let other_owner = q.replacen("u=1", "u=2", 1);
        assert_eq!(
            s.verify("m", &other_owner, 100),
            Err(SignatureError::Invalid)
        );
        assert_eq!(s.verify("n", q, 100), Err(SignatureError::Invalid));
        let truncated = &q[..q.len() - 2];
        assert_eq!(s.verify("m", truncated, 100), Err(SignatureError::Invalid));
        let padded = q.replacen("u=1", "u=01", 1);
        assert_eq!(s.verify("m", &padded, 100), Err(SignatureError::Malformed));
        let upper = format!("{}{}", &q[..q.len() - 64], q[q.len() - 64..].to_uppercase());
        assert_eq!(s.verify("m", &upper, 100), Err(SignatureError::Malformed));
        let other_key = ImageUrlSigner::new(vec![1; 32], 60).unwrap();
        assert_eq!(other_key.verify("m", q, 100), Err(SignatureError::Invalid));
        // Extra parameters are ignored.
        assert!(s.verify("m", &format!("{q}&rand=123"), 100).is_ok());
    }

    #[test]
    fn debug_is_redacted() {
        let text = format!("{:?}", signer(5));
        assert!(!text.contains("0123456789abcdef"));
        assert!(text.contains("redacted"));
    }

    #[test]
    fn path_segments_round_trip() {
        for id in ["1715240000123456", "a b/c?d%e", "猫"] {
            let encoded = encode_path_segment(id);
            assert!(!encoded.contains(['/', '?', ' ']));
            assert_eq!(decode_path_segment(&encoded).as_deref(), Some(id));
        }
        assert_eq!(decode_path_segment("%zz"), None);
        assert_eq!(decode_path_segment("%4"), None);
    }

    proptest! {
        #[test]
        fn round_trip(owner in any::<i64>(), mj_id in ".{0,40}", now in 0i64..4_000_000_000, ttl in 0u64..10_000_000) {
            let s = signer(ttl);
            let url = s.url_for("https://gw.example", owner, &mj_id, now);
            let (path, q) = url.split_once('?').unwrap();
            let segment = path.rsplit('/').next().unwrap();
            prop_assert_eq!(decode_path_segment(segment).unwrap(), mj_id.clone());
            let verified = s.verify(&mj_id, q, now).unwrap();
            prop_assert_eq!(verified.owner, owner);
        }

        #[test]
        fn any_tamper_is_refused(owner in any::<i64>(), mj_id in "[0-9a-z]{1,20}", index in 0usize..200, byte in any::<u8>()) {
            let s = signer(0);
            let url = s.url_for("https://gw.example", owner, &mj_id, 0);
            let q = query(&url).as_bytes().to_vec();
            let index = index % q.len();
            prop_assume!(q[index] != byte);
            let mut tampered = q.clone();
            tampered[index] = byte;
            if let Ok(text) = String::from_utf8(tampered) {
                prop_assert!(s.verify(&mj_id, &text, 0).is_err(), "accepted {}", text);
            }
        }

        #[test]
        fn other_mj_id_is_refused(owner in any::<i64>(), a in "[0-9]{1,20}", b in "[0-9]{1,20}") {
            prop_assume!(a != b);
            let s = signer(0);
            let url = s.url_for("https://gw.example", owner, &a, 0);
            prop_assert_eq!(s.verify(&b, query(&url), 0), Err(SignatureError::Invalid));
        }
    }
}

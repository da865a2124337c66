//! The upstream side of the image proxy: an HTTP client that is safe to point at URLs an
//! upstream handed us.
//!
//! - **SSRF**: only `http` and `https`; every address the client connects to is checked
//!   ([`is_public_ip`]): host names go through a resolver that drops loopback, private,
//!   link-local, multicast and unspecified addresses (so a name that resolves to `127.0.0.1`,
//!   or re-resolves there later, is never connected to), IP literals are checked before the
//!   request, and every redirect (at most [`FetchConfig::max_redirects`]) is checked again.
//!   `allow_private` turns the address checks off (tests, upstreams on a private network).
//! - **Bounds**: a connect timeout and a total timeout (headers and body), and a size cap
//!   enforced while the body streams (a declared `Content-Length` over the cap is refused
//!   before any byte is sent).
//! - **Headers**: only [`REQUEST_HEADERS`] go upstream (conditional and range requests) and
//!   only [`RESPONSE_HEADERS`] come back.
//! - **Errors**: [`ImageFetchError`] maps to 502 (or 504 on timeout) with a generic message; an
//!   upstream's error body is never read.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{self, HeaderMap, HeaderName};
use reqwest::{Method, StatusCode, Url};

/// Request headers passed on to the upstream.
pub const REQUEST_HEADERS: [HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

/// Response headers passed back from the upstream.
pub const RESPONSE_HEADERS: [HeaderName; 9] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::CONTENT_ENCODING,
    header::EXPIRES,
];

/// Limits of the fetcher.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Time to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Time for the whole exchange, headers and body.
    pub timeout: Duration,
    /// Largest body passed on, in bytes.
    pub max_bytes: u64,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Allow loopback, private, link-local, ... upstream addresses.
    pub allow_private: bool,
    /// Exact `address:port` pairs exempt from the address rules while `allow_private` is off
    /// (for example one midjourney-proxy on the operator's own network). Applies to IP-literal
    /// URLs and redirects; host names are always resolved to public addresses only.
    pub private_allowlist: Vec<SocketAddr>,
}

impl Default for FetchConfig {
    /// 5 s to connect, 60 s in all, 50 MiB, 3 redirects, public addresses only.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            max_bytes: 50 * 1024 * 1024,
            max_redirects: 3,
            allow_private: false,
            private_allowlist: Vec::new(),
        }
    }
}

/// Why an image could not be fetched. [`Self::http_status`] and [`Self::public_message`] are
/// what a client may see; the variants' sources are for logs.
#[derive(Debug, thiserror::Error)]
pub enum ImageFetchError {
    /// The stored URL is not an absolute `http`/`https` URL.
    #[error("the image URL is not an http(s) URL")]
    InvalidUrl,
    /// The upstream address is not allowed (SSRF rules).
    #[error("the image upstream address is not allowed: {0}")]
    Blocked(String),
    /// More redirects than allowed.
    #[error("too many redirects")]
    TooManyRedirects,
    /// The connect or total timeout passed.
    #[error("the image upstream timed out")]
    Timeout,
    /// The upstream answered with a status we do not pass on (its body is not read).
    #[error("the image upstream answered {0}")]
    Status(StatusCode),
    /// The body is larger than the cap.
    #[error("the image is larger than {limit} bytes")]
    TooLarge {
        /// The cap, in bytes.
        limit: u64,
    },
    /// Any other transport failure.
    #[error("the image upstream could not be reached")]
    Transport(#[source] reqwest::Error),
    /// Reading a cached copy failed mid-stream.
    #[error("reading the cached image failed")]
    CacheRead,
    /// The client could not be built (TLS setup).
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

impl ImageFetchError {
    /// The HTTP status to answer with: 504 for a timeout, 502 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Timeout => 504,
            _ => 502,
        }
    }

    /// A message for clients: generic, never upstream text.
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::Timeout => "The image upstream did not answer in time.",
            Self::TooLarge { .. } => "The image is larger than this server forwards.",
            Self::Blocked(_) | Self::InvalidUrl => "The image upstream address is not allowed.",
            _ => "The image upstream failed.",
        }
    }

    fn from_reqwest(error: reqwest::Error) -> Self {
        if let Some(found) = find_cause::<Blocked>(&error) {
            return Self::Blocked(found.0.clone());
        }
        if find_cause::<TooManyRedirects>(&error).is_some() {
            return Self::TooManyRedirects;
        }
        if error.is_timeout()
            || find_cause::<std::io::Error>(&error)
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return Self::Timeout;
        }
        // The URL stays out of logs: upstream links can carry their own access tokens.
        Self::Transport(error.without_url())
    }
}

/// The error our resolver and redirect policy raise, found again in reqwest's source chain.
#[derive(Debug)]
struct Blocked(String);

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Blocked {}

#[derive(Debug)]
struct TooManyRedirects;

impl fmt::Display for TooManyRedirects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many redirects")
    }
}

impl StdError for TooManyRedirects {}

fn find_cause<'e, T: StdError + 'static>(error: &'e (dyn StdError + 'static)) -> Option<&'e T> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// Whether `ip` is an ordinary public unicast address: not loopback, private (RFC 1918, IPv6
/// unique local), link-local, shared (100.64/10), multicast, broadcast, unspecified or
/// documentation. IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64, SIIT, 6to4) are
/// judged by the address inside; Teredo (`2001::/32`) is refused.
///
/// ```
/// use mj_tasks::image::is_public_ip;
/// assert!(is_public_ip("93.184.216.34".parse().unwrap()));
/// for ip in ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:127.0.0.1", "fd00::1",
///            "2002:7f00:1::", "::ffff:0:7f00:1", "2001:0:808:808::1"] {
///     assert!(!is_public_ip(ip.parse().unwrap()), "{ip}");
/// }
/// ```
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    let v4_in = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // Forms that reach an IPv4 address are judged by it: NAT64's well-known prefix
    // 64:ff9b::/96 and SIIT's IPv4-translated ::ffff:0:0:0/96 carry it in the low 32 bits,
    // 6to4 2002::/16 in the 32 bits after the prefix.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return is_public_v4(v4_in(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return is_public_v4(v4_in(segments[1], segments[2]));
    }
    // Teredo 2001::/32 tunnels through a relay to an obfuscated IPv4 address: never an image
    // host, so refused outright.
    if segments[..2] == [0x2001, 0] {
        return false;
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible and other ::/96
}

/// Whether connecting to `addr` is allowed under `config`.
fn address_allowed(addr: SocketAddr, allow_private: bool, allowlist: &[SocketAddr]) -> bool {
    allow_private || is_public_ip(addr.ip()) || allowlist.contains(&addr)
}

/// Checks what can be checked on a URL alone: the scheme, and the address if the host is an IP
/// literal (those never reach the resolver).
fn check_url(
    url: &Url,
    allow_private: bool,
    allowlist: &[SocketAddr],
) -> Result<(), ImageFetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ImageFetchError::InvalidUrl);
    }
    let host = url.host_str().ok_or(ImageFetchError::InvalidUrl)?;
    // The URL parser has already normalised IPv4 spellings (`2130706433`, `0x7f.1`) to dotted
    // quads and wraps IPv6 literals in brackets.
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let Ok(ip) = literal.parse::<IpAddr>() else {
        return Ok(()); // a name: checked by the resolver on every connection
    };
    let port = url.port_or_known_default().unwrap_or(0);
    if address_allowed(SocketAddr::new(ip, port), allow_private, allowlist) {
        Ok(())
    } else {
        Err(ImageFetchError::Blocked(format!(
            "{ip} is not a public address"
        )))
    }
}

/// A resolver that keeps only public addresses, so the connector can only ever connect to a
/// checked address (no DNS rebinding between check and connect: the check is on the very
/// addresses handed to the connector).
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|addr| is_public_ip(addr.ip()))
                .collect();
            if public.is_empty() {
                let reason = if addrs.is_empty() {
                    format!("{host} does not resolve")
                } else {
                    format!("{host} resolves only to non-public addresses")
                };
                return Err(Box::new(Blocked(reason)) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The body of a fetched image: chunks as they arrive, ending in an error if the upstream fails
/// or the size cap is crossed mid-stream.
pub type ImageStream = Pin<Box<dyn Stream<Item = Result<Bytes, ImageFetchError>> + Send>>;

/// An upstream answer that may be passed on: 2xx, 304, or 416 to a range request.
pub struct FetchedImage {
    /// Upstream status (200, 206, 304, 416, or another 2xx).
    pub status: StatusCode,
    /// The [`RESPONSE_HEADERS`] the upstream sent.
    pub headers: HeaderMap,
    /// The body (empty for 304 and HEAD).
    pub body: ImageStream,
}

impl fmt::Debug for FetchedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedImage")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// Installs rustls' *ring* crypto provider as the process default unless one is installed.
///
/// reqwest is built with `rustls-no-provider` (to match sqlx's `tls-rustls-ring`), so building
/// any `reqwest::Client` in the process panics until a provider is installed: call this first.
/// [`ImageFetcher::new`] and [`UpstreamClient::new`](crate::UpstreamClient::new) call it too.
pub fn install_crypto_provider() {
    // Err means another provider is already installed, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Fetches upstream images within the SSRF rules and limits of a [`FetchConfig`]. Cheap to
/// clone (one connection pool).
#[derive(Clone)]
pub struct ImageFetcher {
    client: reqwest::Client,
    config: Arc<FetchConfig>,
}

impl fmt::Debug for ImageFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageFetcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ImageFetcher {
    /// A fetcher with these limits. Installs rustls' *ring* provider as the process default if
    /// none is installed yet (reqwest needs one).
    ///
    /// # Examples
    ///
    /// ```
    /// use mj_tasks::image::{FetchConfig, ImageFetcher};
    /// let fetcher = ImageFetcher::new(FetchConfig::default()).unwrap();
    /// ```
    pub fn new(config: FetchConfig) -> Result<Self, ImageFetchError> {
        install_crypto_provider();
        let allow_private = config.allow_private;
        let allowlist = config.private_allowlist.clone();
        let max_redirects = config.max_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(TooManyRedirects);
            }
            match check_url(attempt.url(), allow_private, &allowlist) {
                Ok(()) => attempt.follow(),
                Err(ImageFetchError::Blocked(reason)) => attempt.error(Blocked(reason)),
                Err(_) => attempt.error(Blocked("redirect to a non-http(s) URL".to_owned())),
            }
        });
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(policy)
            .referer(false)
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .user_agent(concat!("mj-tasks-image-proxy/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        let client = builder.build().map_err(ImageFetchError::Client)?;
        Ok(Self {
            client,
            config: Arc::new(config),
        })
    }

    /// The limits in force.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Requests `url` with `method` (GET or HEAD), passing on the [`REQUEST_HEADERS`] found in
    /// `request_headers`. Succeeds with a 2xx, a 304, or a 416 when a range was asked for;
    /// anything else is an error and its body is never read.
    pub async fn fetch(
        &self,
        method: Method,
        url: &str,
        request_headers: &HeaderMap,
    ) -> Result<FetchedImage, ImageFetchError> {
        let url = Url::parse(url.trim()).map_err(|_| ImageFetchError::InvalidUrl)?;
        check_url(
            &url,
            self.config.allow_private,
            &self.config.private_allowlist,
        )?;
        let mut upstream_headers = HeaderMap::new();
        for name in &REQUEST_HEADERS {
            for value in request_headers.get_all(name) {
                upstream_headers.append(name.clone(), value.clone());
            }
        }
        upstream_headers.insert(
            header::ACCEPT,
            header::HeaderValue::from_static("image/*,*/*;q=0.8"),
        );
        let is_range = upstream_headers.contains_key(header::RANGE);
        let response = self
            .client
            .request(method.clone(), url)
            .headers(upstream_headers)
            .send()
            .await
            .map_err(ImageFetchError::from_reqwest)?;
        // Belt and braces: the address actually connected to (the resolver already filtered).
        if let Some(remote) = response.remote_addr()
            && !address_allowed(
                remote,
                self.config.allow_private,
                &self.config.private_allowlist,
            )
        {
            return Err(ImageFetchError::Blocked(format!(
                "connected to non-public {}",
                remote.ip()
            )));
        }
        let status = response.status();
        let passes = status.is_success()
            || status == StatusCode::NOT_MODIFIED
            || (status == StatusCode::RANGE_NOT_SATISFIABLE && is_range);
        if !passes {
            return Err(ImageFetchError::Status(status));
        }
        let limit = self.config.max_bytes;
        if status != StatusCode::NOT_MODIFIED
            && method != Method::HEAD
            && let Some(length) = response.content_length()
            && length > limit
        {
            return Err(ImageFetchError::TooLarge { limit });
        }
        let mut headers = HeaderMap::new();
        for name in &RESPONSE_HEADERS {
            for value in response.headers().get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let body: ImageStream = if method == Method::HEAD || status == StatusCode::NOT_MODIFIED {
            Box::pin(futures_util::stream::empty())
        } else {
            Box::pin(CappedStream {
                inner: Box::pin(response.bytes_stream()),
                seen: 0,
                limit,
                done: false,
            })
        };
        Ok(FetchedImage {
            status,
            headers,
            body,
        })
    }
}

type ReqwestStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Passes chunks on while counting; past the cap it yields [`ImageFetchError::TooLarge`] once
/// and ends (dropping the upstream connection).
struct CappedStream {
    inner: ReqwestStream,
    seen: u64,
    limit: u64,
    done: bool,
}

impl Stream for CappedStream {
    type Item = Result<Bytes, ImageFetchError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                self.done = true;
                Poll::Ready(Some(Err(ImageFetchError::from_reqwest(error))))
            }
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen = self.seen.saturating_add(chunk.len() as u64);
                if self.seen > self.limit {
                    self.done = true;
                    let limit = self.limit;
                    return Poll::Ready(Some(Err(ImageFetchError::TooLarge { limit })));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn address_classes() {
        let blocked = [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "2001:db8::1",
            // 6to4 of 127.0.0.1, 10.0.0.1, 169.254.169.254 and 192.168.0.1.
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:1:1::1",
            // SIIT IPv4-translated 127.0.0.1 and 10.1.2.3.
            "::ffff:0:7f00:1",
            "::ffff:0:a01:203",
            // Teredo, whatever it embeds (here 8.8.8.8 as the server).
            "2001:0:808:808::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ];
        for ip in blocked {
            assert!(!is_public_ip(ip.parse().unwrap()), "{ip} must be blocked");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "::ffff:0:808:808",
            "2001:4860::8888",
        ] {
            assert!(is_public_ip(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn url_checks() {
        let check = |u: &str| check_url(&Url::parse(u).unwrap(), false, &[]);
        assert!(check("https://cdn.discordapp.com/a.png").is_ok());
        assert!(matches!(
            check("ftp://example.com/a.png"),
            Err(ImageFetchError::InvalidUrl)
        ));
        assert!(matches!(
            check("file:///etc/passwd"),
            Err(ImageFetchError::InvalidUrl)
        ));
        for url in [
            "http://127.0.0.1/",
            "http://[::1]:80/",
            "http://169.254.169.254/latest",
            "http://10.0.0.7/",
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            assert!(
                matches!(check(url), Err(ImageFetchError::Blocked(_))),
                "{url}"
            );
        }
        assert!(check_url(&Url::parse("http://127.0.0.1/").unwrap(), true, &[]).is_ok());
        let allow = ["127.0.0.1:8080".parse().unwrap()];
        assert!(
            check_url(
                &Url::parse("http://127.0.0.1:8080/").unwrap(),
                false,
                &allow
            )
            .is_ok()
        );
        assert!(
            check_url(
                &Url::parse("http://127.0.0.1:8081/").unwrap(),
                false,
                &allow
            )
            .is_err()
        );
    }

    #[test]
    fn error_statuses() {
        assert_eq!(ImageFetchError::Timeout.http_status(), 504);
        assert_eq!(
            ImageFetchError::Status(StatusCode::INTERNAL_SERVER_ERROR).http_status(),
            502
        );
        assert_eq!(ImageFetchError::TooLarge { limit: 1 }.http_status(), 502);
    }
}

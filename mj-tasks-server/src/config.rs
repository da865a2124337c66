//! Command line and environment: every setting is a flag and an `MJ_*` variable.

use std::fmt;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::users::Role;

/// `mj-tasks-server`: the Midjourney task module of an AI API gateway.
#[derive(Debug, Parser)]
#[command(name = "mj-tasks-server", version, about)]
pub struct Cli {
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub settings: Settings,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Server settings.
#[derive(Clone, Args)]
pub struct Settings {
    /// Database URL: sqlite://FILE (created if missing), postgres://..., mysql://...
    #[arg(
        long,
        env = "MJ_DATABASE_URL",
        default_value = "sqlite://mj-tasks.db",
        global = true
    )]
    pub database_url: String,
    /// Address to listen on.
    #[arg(long, env = "MJ_BIND", default_value = "127.0.0.1:3000", global = true)]
    pub bind: String,
    /// Public base URL used in forwarded image URLs (default: http://<bind>).
    #[arg(long, env = "MJ_SERVER_ADDRESS", global = true)]
    pub server_address: Option<String>,
    /// Rewrite image URLs to this server's /mj/image/... (true/false).
    #[arg(long, env = "MJ_FORWARD_IMAGES", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set, global = true)]
    pub forward_images: bool,
    /// Seconds between poll rounds of unfinished tasks; 0 turns the poller off.
    #[arg(
        long,
        env = "MJ_POLL_INTERVAL_SECS",
        default_value_t = 15,
        global = true
    )]
    pub poll_interval_secs: u64,
    /// Seconds after our submit time after which an unfinished task is failed.
    #[arg(
        long,
        env = "MJ_TASK_TIMEOUT_SECS",
        default_value_t = 3600,
        global = true
    )]
    pub task_timeout_secs: u64,
    /// Let image forwarding fetch from loopback/private addresses (tests, local upstreams).
    #[arg(long, env = "MJ_ALLOW_PRIVATE_UPSTREAMS", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set, global = true)]
    pub allow_private_upstreams: bool,
    /// Key for signing forwarded image URLs, at least 16 bytes (default: one generated once and
    /// kept in the database, shared by every instance).
    #[arg(long, env = "MJ_SIGNING_KEY", hide_env_values = true, global = true)]
    pub signing_key: Option<String>,
    /// Lifetime of signed image URLs in seconds; 0 = they never expire.
    #[arg(
        long,
        env = "MJ_IMAGE_URL_TTL_SECS",
        default_value_t = 2_592_000,
        global = true
    )]
    pub image_url_ttl_secs: u64,
    /// Seconds to connect to an image upstream.
    #[arg(
        long,
        env = "MJ_IMAGE_CONNECT_TIMEOUT_SECS",
        default_value_t = 5,
        global = true
    )]
    pub image_connect_timeout_secs: u64,
    /// Seconds for a whole image fetch (headers and body).
    #[arg(
        long,
        env = "MJ_IMAGE_TIMEOUT_SECS",
        default_value_t = 60,
        global = true
    )]
    pub image_timeout_secs: u64,
    /// Largest image forwarded, in bytes.
    #[arg(
        long,
        env = "MJ_IMAGE_MAX_BYTES",
        default_value_t = 52_428_800,
        global = true
    )]
    pub image_max_bytes: u64,
    /// Directory of the disk cache of finished images (default: no cache).
    #[arg(long, env = "MJ_IMAGE_CACHE_DIR", global = true)]
    pub image_cache_dir: Option<PathBuf>,
    /// Size budget of the image cache in bytes (least recently used images are evicted).
    #[arg(
        long,
        env = "MJ_IMAGE_CACHE_MAX_BYTES",
        default_value_t = 1_073_741_824,
        global = true
    )]
    pub image_cache_max_bytes: u64,
    /// Quota price overrides per action, e.g. `IMAGINE=50000,UPSCALE=25000,*=50000` (`*`: any
    /// action not listed); unlisted actions keep the defaults of `mj_tasks::PriceTable`.
    #[arg(long, env = "MJ_PRICES", default_value = "", value_parser = parse_prices, global = true)]
    pub prices: mj_tasks::PriceTable,
    /// Timeout of each submit call to an upstream, in seconds.
    #[arg(
        long,
        env = "MJ_UPSTREAM_TIMEOUT_SECS",
        default_value_t = 60,
        global = true
    )]
    pub upstream_timeout_secs: u64,
    /// Milliseconds a user found by access token is remembered. The default 0 reads role and
    /// status on every request, so a `user disable` from the CLI takes effect at once, as the
    /// contract says; a positive value trades that for throughput (changes made through this
    /// server still apply at once, those from another process within this time).
    #[arg(long, env = "MJ_TOKEN_CACHE_MS", default_value_t = 0, global = true)]
    pub token_cache_ms: u64,
    /// Seconds a connection may take to send a request's headers, and may stay idle between
    /// requests, before it is closed (slow or half-open clients cannot pile up).
    #[arg(
        long,
        env = "MJ_HEADER_READ_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub header_read_timeout_secs: u64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT; then the remaining
    /// connections are closed and the process exits.
    #[arg(
        long,
        env = "MJ_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub shutdown_timeout_secs: u64,
    /// Log filter (tracing EnvFilter syntax), e.g. info or mj_tasks_server=debug.
    #[arg(long, env = "MJ_LOG", default_value = "info", global = true)]
    pub log: String,
}

impl Settings {
    /// Settings with every default and the given database URL (for tests and embedding).
    pub fn with_database_url(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            bind: "127.0.0.1:3000".to_owned(),
            server_address: None,
            forward_images: true,
            poll_interval_secs: 15,
            task_timeout_secs: 3600,
            allow_private_upstreams: false,
            signing_key: None,
            image_url_ttl_secs: 2_592_000,
            image_connect_timeout_secs: 5,
            image_timeout_secs: 60,
            image_max_bytes: 52_428_800,
            image_cache_dir: None,
            image_cache_max_bytes: 1_073_741_824,
            prices: mj_tasks::PriceTable::default(),
            upstream_timeout_secs: 60,
            token_cache_ms: 0,
            header_read_timeout_secs: 10,
            shutdown_timeout_secs: 10,
            log: "info".to_owned(),
        }
    }

    /// The public base URL, without a trailing slash.
    pub fn public_base_url(&self) -> String {
        match &self.server_address {
            Some(address) if !address.trim().is_empty() => {
                address.trim().trim_end_matches('/').to_owned()
            }
            _ => format!("http://{}", self.bind),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field(
                "database_url",
                &mj_tasks::store::redact_url(&self.database_url),
            )
            .field("bind", &self.bind)
            .field("server_address", &self.server_address)
            .field("forward_images", &self.forward_images)
            .field("poll_interval_secs", &self.poll_interval_secs)
            .field("task_timeout_secs", &self.task_timeout_secs)
            .field("allow_private_upstreams", &self.allow_private_upstreams)
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(|_| "<redacted>"),
            )
            .field("image_url_ttl_secs", &self.image_url_ttl_secs)
            .field(
                "image_connect_timeout_secs",
                &self.image_connect_timeout_secs,
            )
            .field("image_timeout_secs", &self.image_timeout_secs)
            .field("image_max_bytes", &self.image_max_bytes)
            .field("image_cache_dir", &self.image_cache_dir)
            .field("image_cache_max_bytes", &self.image_cache_max_bytes)
            .field("prices", &self.prices)
            .field("upstream_timeout_secs", &self.upstream_timeout_secs)
            .field("token_cache_ms", &self.token_cache_ms)
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("shutdown_timeout_secs", &self.shutdown_timeout_secs)
            .field("log", &self.log)
            .finish()
    }
}

fn parse_prices(text: &str) -> Result<mj_tasks::PriceTable, mj_tasks::billing::PriceError> {
    mj_tasks::PriceTable::with_overrides(text)
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Manage dashboard users.
    User {
        /// What to do.
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage upstream midjourney-proxy channels.
    Channel {
        /// What to do.
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Fill the store with realistic tasks for demos and benchmarks.
    Seed(SeedArgs),
    /// Move over from new-api: copy its users (tokens kept, hashed), Midjourney channels
    /// (types 2 and 5) and every `midjourneys` row into --database-url, keeping their ids.
    /// Idempotent and resumable: rerun it after an interruption; conflicts stop it before it
    /// writes anything.
    Import {
        /// new-api's database: a SQLite file path or sqlite: URL, postgres://... or mysql://...
        /// (opened read-only).
        #[arg(long)]
        from: String,
        /// Tasks per transaction.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        batch: u32,
        /// Report what would be imported and any conflicts, and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `seed` arguments.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Owner of the tasks (created if missing); with `--light-users`, the heavy user.
    #[arg(long)]
    pub user: String,
    /// How many tasks.
    #[arg(long)]
    pub tasks: u64,
    /// Spread the tasks over channel ids 1..=K.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub channels: u32,
    /// Share the tasks with U more users, `<user>-1` ... `<user>-U` (created if missing),
    /// interleaved in time; 0 gives every task to `--user`.
    #[arg(long, default_value_t = 0)]
    pub light_users: u32,
    /// With `--light-users`: the percentage of the tasks that `--user` owns (0 to 100); the
    /// light users share the rest evenly.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub heavy_share: u8,
}

/// `user ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its access token (last line).
    Add {
        /// Unique user name.
        name: String,
        /// Role.
        #[arg(long, value_enum, default_value = "user")]
        role: Role,
        /// Initial quota.
        #[arg(long, default_value_t = 0)]
        quota: i64,
    },
    /// List users: id, name, role, status, quota.
    List {
        /// Print a JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user (refused at once on every request).
    Disable {
        /// User name.
        name: String,
    },
    /// Enable a user.
    Enable {
        /// User name.
        name: String,
    },
    /// Issue a new access token (the old one stops working) and print it (last line).
    Token {
        /// User name.
        name: String,
    },
    /// Set a user's quota.
    Quota {
        /// User name.
        name: String,
        /// New quota.
        #[arg(allow_negative_numbers = true)]
        quota: i64,
    },
}

/// `channel ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Register an upstream midjourney-proxy and print its id (last line).
    Add {
        /// Name.
        #[arg(long)]
        name: String,
        /// Base URL, e.g. https://mj.example.com.
        #[arg(long)]
        base_url: String,
        /// Its mj-api-secret.
        #[arg(long)]
        secret: String,
    },
    /// List channels (secrets are not shown).
    List,
    /// Disable a channel.
    Disable {
        /// Channel id.
        id: i64,
    },
}

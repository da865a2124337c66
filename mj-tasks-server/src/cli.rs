//! The subcommands: serve, user, channel, seed, import.

use std::io::Write;
use std::sync::Arc;

use mj_tasks::bulk::BulkLoader;
use mj_tasks::synthetic::SyntheticSpec;
use mj_tasks::text::{TextError, can_match_short, check_long, check_short};
use mj_tasks::{NewChannel, NewTask, SqlStore, StoreError};
use tokio::net::TcpListener;

use crate::config::{ChannelCommand, Cli, Command, SeedArgs, UserCommand};
use crate::users::{AccessToken, Role, User, UserStore};
use crate::{App, OpenError, Settings};

/// Why a command failed; printed as `error: ...` with exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The server could not start (image forwarding or the upstream client).
    #[error("{0}")]
    Open(OpenError),
    /// Listening failed.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// A user name that does not exist.
    #[error("no user named {0:?}")]
    UnknownUser(String),
    /// A channel id that does not exist.
    #[error("no channel with id {0}")]
    UnknownChannel(i64),
    /// A user name that is taken.
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    /// A value a command refuses.
    #[error("{0}")]
    Invalid(String),
    /// A value no database can store (too long for its column).
    #[error("{0}")]
    Unstorable(#[from] TextError),
    /// The import failed.
    #[error("{0}")]
    Import(mj_tasks::import::ImportError),
    /// The import found rows in the way (listed before) and wrote nothing.
    #[error("{0} conflicts with rows already in the database (listed above); nothing was imported")]
    ImportConflicts(usize),
}

impl From<OpenError> for CliError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::Store(error) => Self::Store(error),
            other => Self::Open(other),
        }
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::User { command } => user(Accounts::open(&settings).await?, command).await,
        Command::Channel { command } => channel(Accounts::open(&settings).await?, command).await,
        Command::Seed(args) => {
            seed(
                Accounts::open(&settings).await?,
                &settings.database_url,
                args,
            )
            .await
        }
        Command::Import {
            from,
            batch,
            dry_run,
        } => {
            let accounts = Accounts::open(&settings).await?;
            let result = crate::import::run(
                &accounts.store,
                accounts.users.as_ref(),
                &settings.database_url,
                &from,
                batch,
                dry_run,
            )
            .await;
            accounts.store.close().await;
            result
        }
    }
}

/// What the user, channel and seed commands need: the database and its users. Unlike
/// [`App::open`] this opens no image cache, loads no signing key and builds no HTTP client, so
/// managing accounts works even when those settings are broken.
struct Accounts {
    store: SqlStore,
    users: Arc<dyn UserStore>,
}

impl Accounts {
    async fn open(settings: &Settings) -> Result<Self, CliError> {
        let store = mj_tasks::connect(&settings.database_url).await?;
        let users = crate::users::open_user_store(&store).await?;
        Ok(Self { store, users })
    }
}

async fn serve(settings: Settings) -> Result<(), CliError> {
    tracing::info!(settings = ?settings, "starting");
    let address = settings.bind.clone();
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|source| CliError::Bind {
            address: address.clone(),
            source,
        })?;
    let app = App::open(settings).await?;
    match listener.local_addr() {
        Ok(local) => tracing::info!(address = %local, "listening"),
        Err(_) => tracing::info!(address = %address, "listening"),
    }
    crate::serve(app, listener, crate::shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

fn validate_name(name: &str) -> Result<&str, CliError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(CliError::Invalid(
            "a user name must be 1 to 64 characters without control characters".to_owned(),
        ));
    }
    Ok(name)
}

/// A user name to look up: one no database can store names nobody.
fn existing_name(name: &str) -> Result<&str, CliError> {
    if can_match_short(name) {
        Ok(name)
    } else {
        Err(CliError::UnknownUser(name.to_owned()))
    }
}

fn validate_quota(quota: i64) -> Result<i64, CliError> {
    if quota < 0 {
        return Err(CliError::Invalid("quota must not be negative".to_owned()));
    }
    Ok(quota)
}

async fn create_user(
    accounts: &Accounts,
    name: &str,
    role: Role,
    quota: i64,
) -> Result<(User, AccessToken), CliError> {
    let token = AccessToken::generate();
    match accounts
        .users
        .create_user(name, role, quota, &token.hash())
        .await
    {
        Ok(user) => Ok((user, token)),
        Err(StoreError::Conflict(_)) => Err(CliError::UserExists(name.to_owned())),
        Err(error) => Err(error.into()),
    }
}

async fn user(accounts: Accounts, command: UserCommand) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match command {
        UserCommand::Add { name, role, quota } => {
            let name = validate_name(&name)?;
            let (user, token) = create_user(&accounts, name, role, validate_quota(quota)?).await?;
            writeln!(
                out,
                "created user {:?} (id {}, role {})",
                user.username,
                user.id,
                role.name()
            )?;
            writeln!(out, "{}", token.reveal())?;
        }
        UserCommand::List { json } => {
            let users = accounts.users.list_users().await?;
            if json {
                let rows: Vec<_> = users
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "id": u.id, "name": u.username, "role": u.role.name(),
                            "status": status_name(u), "quota": u.quota,
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(rows))?;
            } else {
                writeln!(
                    out,
                    "{:<6} {:<24} {:<6} {:<9} QUOTA",
                    "ID", "NAME", "ROLE", "STATUS"
                )?;
                for u in &users {
                    writeln!(
                        out,
                        "{:<6} {:<24} {:<6} {:<9} {}",
                        u.id,
                        u.username,
                        u.role.name(),
                        status_name(u),
                        u.quota
                    )?;
                }
            }
        }
        UserCommand::Disable { name } => {
            set_enabled(&accounts, &name, false).await?;
            writeln!(out, "disabled user {name:?}")?;
        }
        UserCommand::Enable { name } => {
            set_enabled(&accounts, &name, true).await?;
            writeln!(out, "enabled user {name:?}")?;
        }
        UserCommand::Token { name } => {
            let token = AccessToken::generate();
            let found = accounts
                .users
                .set_token_hash(existing_name(&name)?, &token.hash())
                .await?;
            if !found {
                return Err(CliError::UnknownUser(name));
            }
            writeln!(
                out,
                "new access token for {name:?} (the old one no longer works)"
            )?;
            writeln!(out, "{}", token.reveal())?;
        }
        UserCommand::Quota { name, quota } => {
            let found = accounts
                .users
                .set_quota(existing_name(&name)?, validate_quota(quota)?)
                .await?;
            if !found {
                return Err(CliError::UnknownUser(name));
            }
            writeln!(out, "quota of {name:?} set to {quota}")?;
        }
    }
    accounts.store.close().await;
    Ok(())
}

fn status_name(user: &User) -> &'static str {
    if user.enabled { "enabled" } else { "disabled" }
}

async fn set_enabled(accounts: &Accounts, name: &str, enabled: bool) -> Result<(), CliError> {
    if accounts
        .users
        .set_enabled(existing_name(name)?, enabled)
        .await?
    {
        Ok(())
    } else {
        Err(CliError::UnknownUser(name.to_owned()))
    }
}

async fn channel(accounts: Accounts, command: ChannelCommand) -> Result<(), CliError> {
    let channels = accounts.store.channels();
    let mut out = std::io::stdout().lock();
    match command {
        ChannelCommand::Add {
            name,
            base_url,
            secret,
        } => {
            let base_url = base_url.trim().trim_end_matches('/').to_owned();
            let scheme_ok = base_url.starts_with("http://") || base_url.starts_with("https://");
            if !scheme_ok || base_url.len() <= "https://".len() {
                return Err(CliError::Invalid(format!(
                    "--base-url must be an http:// or https:// URL, got {base_url:?}"
                )));
            }
            let name = name.trim();
            if name.is_empty() {
                return Err(CliError::Invalid("--name must not be empty".to_owned()));
            }
            check_short("--name", name)?;
            check_long("--base-url", &base_url)?;
            check_long("--secret", &secret)?;
            let channel = channels
                .add_channel(&NewChannel {
                    name: name.to_owned(),
                    base_url,
                    secret,
                })
                .await?;
            writeln!(
                out,
                "added channel {:?} ({})",
                channel.name, channel.base_url
            )?;
            writeln!(out, "{}", channel.id)?;
        }
        ChannelCommand::List => {
            writeln!(out, "{:<6} {:<20} {:<9} BASE_URL", "ID", "NAME", "STATUS")?;
            for c in channels.list_channels().await? {
                let status = if c.enabled { "enabled" } else { "disabled" };
                writeln!(
                    out,
                    "{:<6} {:<20} {:<9} {}",
                    c.id, c.name, status, c.base_url
                )?;
            }
        }
        ChannelCommand::Disable { id } => {
            if !channels.set_channel_enabled(id, false).await? {
                return Err(CliError::UnknownChannel(id));
            }
            writeln!(out, "disabled channel {id}")?;
        }
    }
    accounts.store.close().await;
    Ok(())
}

/// Tasks per transaction while seeding: big enough to amortise each commit, small enough that
/// generating the next chunk overlaps inserting this one without holding much memory.
const SEED_CHUNK: u64 = 50_000;

async fn seed(accounts: Accounts, url: &str, args: SeedArgs) -> Result<(), CliError> {
    let name = validate_name(&args.user)?.to_owned();
    let heavy = seed_user(&accounts, &name, true).await?;
    let mut light_users = Vec::with_capacity(args.light_users as usize);
    for index in 1..=args.light_users {
        let light_name = format!("{name}-{index}");
        validate_name(&light_name)?;
        light_users.push(seed_user(&accounts, &light_name, false).await?.id);
    }
    if args.light_users > 0 {
        println!(
            "light users \"{name}-1\" ... \"{name}-{}\" ready (`user token <name>` prints an access token)",
            args.light_users
        );
    }
    let mut spec = SyntheticSpec::single_user(heavy.id, args.tasks, args.channels.max(1));
    if !light_users.is_empty() {
        spec.heavy_share_percent = args.heavy_share;
        spec.light_users = light_users;
    }
    // Seeded tasks are finished: a poller must not go asking upstreams about demo data.
    spec.unfinished_per_mille = 0;
    spec.seed ^= mj_tasks::now_millis() as u64;

    // The loader's own connection, tuned for bulk appends, does the writing.
    accounts.store.close().await;
    let loader = BulkLoader::connect(url).await?;
    let bar = indicatif::ProgressBar::new(args.tasks);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tasks ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    // Generating a chunk costs about as much CPU as inserting it: a blocking thread prepares
    // the next chunk while this one is written.
    let (chunks, mut ready) = tokio::sync::mpsc::channel::<Vec<NewTask>>(1);
    let generator = tokio::task::spawn_blocking(move || {
        let mut from = 0;
        while from < spec.total {
            let to = (from + SEED_CHUNK).min(spec.total);
            if chunks
                .blocking_send((from..to).map(|i| spec.task(i)).collect())
                .is_err()
            {
                return;
            }
            from = to;
        }
    });
    let mut done = 0;
    while let Some(chunk) = ready.recv().await {
        done += loader.load(&chunk).await?;
        bar.set_position(done);
    }
    if generator.await.is_err() {
        return Err(CliError::Invalid("the task generator stopped".to_owned()));
    }
    let inserted_in = started.elapsed();
    bar.set_message("refreshing planner statistics");
    loader.finish().await?;
    bar.finish_and_clear();
    let owners = match args.light_users {
        0 => format!("{name:?} (id {})", heavy.id),
        light => format!(
            "{name:?} (id {}, {} %) and {light} light users",
            heavy.id, args.heavy_share
        ),
    };
    println!(
        "seeded {done} tasks for {owners} in {:.1} s ({:.1} s inserting)",
        started.elapsed().as_secs_f64(),
        inserted_in.as_secs_f64()
    );
    Ok(())
}

/// The user named `name`, created when missing; the heavy user's new token is printed, as
/// `user add` does.
async fn seed_user(accounts: &Accounts, name: &str, show_token: bool) -> Result<User, CliError> {
    if let Some(user) = accounts.users.user_by_name(name).await? {
        return Ok(user);
    }
    let (user, token) = create_user(accounts, name, Role::User, 0).await?;
    if show_token {
        println!("created user {name:?} (id {}); access token:", user.id);
        println!("{}", token.reveal());
    }
    Ok(user)
}

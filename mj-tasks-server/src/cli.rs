//! The subcommands: serve, user, channel, seed, import.

use std::io::Write;

use mj_tasks::synthetic::SyntheticSpec;
use mj_tasks::{NewChannel, StoreError};
use tokio::net::TcpListener;

use crate::config::{ChannelCommand, Cli, Command, UserCommand};
use crate::users::{AccessToken, Role, User};
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
        Command::User { command } => user(App::open(settings).await?, command).await,
        Command::Channel { command } => channel(App::open(settings).await?, command).await,
        Command::Seed {
            user,
            tasks,
            channels,
        } => seed(App::open(settings).await?, &user, tasks, channels).await,
        Command::Import {
            from,
            batch,
            dry_run,
        } => crate::import::run(App::open(settings).await?, &from, batch, dry_run).await,
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

fn validate_quota(quota: i64) -> Result<i64, CliError> {
    if quota < 0 {
        return Err(CliError::Invalid("quota must not be negative".to_owned()));
    }
    Ok(quota)
}

async fn create_user(
    app: &App,
    name: &str,
    role: Role,
    quota: i64,
) -> Result<(User, AccessToken), CliError> {
    let token = AccessToken::generate();
    match app
        .users
        .create_user(name, role, quota, &token.hash())
        .await
    {
        Ok(user) => Ok((user, token)),
        Err(StoreError::Conflict(_)) => Err(CliError::UserExists(name.to_owned())),
        Err(error) => Err(error.into()),
    }
}

async fn user(app: App, command: UserCommand) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match command {
        UserCommand::Add { name, role, quota } => {
            let name = validate_name(&name)?;
            let (user, token) = create_user(&app, name, role, validate_quota(quota)?).await?;
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
            let users = app.users.list_users().await?;
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
            set_enabled(&app, &name, false).await?;
            writeln!(out, "disabled user {name:?}")?;
        }
        UserCommand::Enable { name } => {
            set_enabled(&app, &name, true).await?;
            writeln!(out, "enabled user {name:?}")?;
        }
        UserCommand::Token { name } => {
            let token = AccessToken::generate();
            if !app.users.set_token_hash(&name, &token.hash()).await? {
                return Err(CliError::UnknownUser(name));
            }
            writeln!(
                out,
                "new access token for {name:?} (the old one no longer works)"
            )?;
            writeln!(out, "{}", token.reveal())?;
        }
        UserCommand::Quota { name, quota } => {
            if !app.users.set_quota(&name, validate_quota(quota)?).await? {
                return Err(CliError::UnknownUser(name));
            }
            writeln!(out, "quota of {name:?} set to {quota}")?;
        }
    }
    app.store.close().await;
    Ok(())
}

fn status_name(user: &User) -> &'static str {
    if user.enabled { "enabled" } else { "disabled" }
}

async fn set_enabled(app: &App, name: &str, enabled: bool) -> Result<(), CliError> {
    if app.users.set_enabled(name, enabled).await? {
        Ok(())
    } else {
        Err(CliError::UnknownUser(name.to_owned()))
    }
}

async fn channel(app: App, command: ChannelCommand) -> Result<(), CliError> {
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
            if name.trim().is_empty() {
                return Err(CliError::Invalid("--name must not be empty".to_owned()));
            }
            let channel = app
                .channels
                .add_channel(&NewChannel {
                    name: name.trim().to_owned(),
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
            for c in app.channels.list_channels().await? {
                let status = if c.enabled { "enabled" } else { "disabled" };
                writeln!(
                    out,
                    "{:<6} {:<20} {:<9} {}",
                    c.id, c.name, status, c.base_url
                )?;
            }
        }
        ChannelCommand::Disable { id } => {
            if !app.channels.set_channel_enabled(id, false).await? {
                return Err(CliError::UnknownChannel(id));
            }
            writeln!(out, "disabled channel {id}")?;
        }
    }
    app.store.close().await;
    Ok(())
}

/// Rows per transaction while seeding.
const SEED_BATCH: u64 = 10_000;

async fn seed(app: App, name: &str, total: u64, channels: u32) -> Result<(), CliError> {
    let name = validate_name(name)?;
    let user = match app.users.user_by_name(name).await? {
        Some(user) => user,
        None => {
            let (user, token) = create_user(&app, name, Role::User, 0).await?;
            println!("created user {name:?} (id {}); access token:", user.id);
            println!("{}", token.reveal());
            user
        }
    };
    let mut spec = SyntheticSpec::single_user(user.id, total, channels.max(1));
    // Seeded tasks are finished: a poller must not go asking upstreams about demo data.
    spec.unfinished_per_mille = 0;
    spec.seed ^= mj_tasks::now_millis() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tasks ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let mut done = 0;
    while done < total {
        let batch: Vec<_> = (done..(done + SEED_BATCH).min(total))
            .map(|i| spec.task(i))
            .collect();
        app.tasks.insert_many(&batch).await?;
        done += batch.len() as u64;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    println!(
        "seeded {total} tasks for {name:?} (id {}) in {:.1} s",
        user.id,
        started.elapsed().as_secs_f64()
    );
    app.store.close().await;
    Ok(())
}

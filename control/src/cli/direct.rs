//! The commands that open the database directly instead of calling the REST API: the first
//! API token and the first dashboard user are made this way, before any token exists.

use std::time::Duration;

use anyhow::Context as _;

use super::StoreArgs;
use crate::account::{password, Accounts, SessionPolicy};
use crate::serve;
use crate::store::{self, Actor, MasterKey, Role};

/// `token create`: opens the database directly (so the first token needs no API token).
pub(super) async fn token_create(
    args: &StoreArgs,
    name: &str,
    ttl_days: Option<u64>,
    role: Role,
    json: bool,
) -> anyhow::Result<()> {
    if args.database.is_none() {
        serve::create_data_dir(&args.data_dir)?;
    }
    let url = serve::database_url(&args.data_dir, args.database.as_deref());
    // API tokens are stored as hashes, never sealed, so creating one needs no master key: a
    // throwaway key opens the database without touching any sealed value.
    let store = store::open(&url, MasterKey::generate())
        .await
        .with_context(|| format!("cannot open the store at {url}"))?;
    let ttl = ttl_days.map(|days| Duration::from_secs(days.saturating_mul(86_400)));
    let issued = store
        .create_api_token_with_role(&Actor::Cli, name, ttl, role)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&issued)?);
    } else {
        eprintln!(
            "API token {:?} created; it is shown only once. Use it with:\n  export KOKOA_API_TOKEN=<the line below>",
            issued.token.name
        );
        println!("{}", issued.secret.expose());
    }
    Ok(())
}

/// `user add`: opens the database directly, like `token create`, so the first user needs no
/// API token. The password comes from KOKOA_USER_PASSWORD or one line of standard input.
pub(super) async fn user_add(
    args: &StoreArgs,
    name: &str,
    role: Role,
    json: bool,
) -> anyhow::Result<()> {
    let password = match std::env::var("KOKOA_USER_PASSWORD") {
        Ok(password) if !password.is_empty() => password,
        _ => {
            eprint!(
                "Password for {name} (at least {} characters): ",
                password::MIN_LENGTH
            );
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if args.database.is_none() {
        serve::create_data_dir(&args.data_dir)?;
    }
    let url = serve::database_url(&args.data_dir, args.database.as_deref());
    // Users hold no sealed value until they enrol TOTP (through the running control, which has
    // the real master key), so a throwaway key opens the database here, as for `token create`.
    let store = store::open(&url, MasterKey::generate())
        .await
        .with_context(|| format!("cannot open the store at {url}"))?;
    let accounts = Accounts::new(store, SessionPolicy::default());
    let user = accounts
        .create_user(&Actor::Cli, name, &password, role)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&user)?);
    } else {
        println!(
            "user {} created with role {}; log in to the dashboard and turn on TOTP under Account",
            user.name, user.role
        );
    }
    Ok(())
}

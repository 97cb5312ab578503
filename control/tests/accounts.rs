//! Dashboard accounts on both engines: users and roles, TOTP enrolment and single-use codes,
//! recovery codes, lockout, sessions and their timeouts, API token roles; then the login flow of
//! the accounts service (password, TOTP, throttling) on top.
//!
//! SQLite always; PostgreSQL when `KOKOA_TEST_POSTGRES` is set (skipped with a reason otherwise,
//! failing under `CI=true`), each test in a fresh database.

#[macro_use]
mod engines;

use engines::Db;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kokoa_control::account::throttle::AddressPolicy;
use kokoa_control::account::{totp, Accounts, Client, LoginError, LoginStep, SessionPolicy};
use kokoa_control::store::{
    Actor, Entity, EventQuery, FailureOutcome, LockoutPolicy, NewSession, NewUser, Role,
    SessionStage, StoreError, UserUpdate,
};

both_engines!(
    users_roles_and_the_last_admin,
    totp_steps_are_single_use_and_recovery_codes_too,
    failures_lock_the_account_with_events,
    sessions_time_out_idle_and_absolute_and_are_capped,
    api_tokens_carry_a_role_and_old_ones_are_admin,
    login_with_password_and_totp,
    login_lockout_per_account_and_per_address,
);

fn cli() -> Actor {
    Actor::Cli
}

fn hash(password: &str) -> String {
    kokoa_control::account::password::hash(password).expect("hash")
}

async fn events(db: &Db, action: &str) -> Result<Vec<kokoa_control::store::Event>> {
    Ok(db
        .store
        .list_events(EventQuery {
            limit: Some(1000),
            ..EventQuery::default()
        })
        .await?
        .into_iter()
        .filter(|e| e.action == action)
        .collect())
}

async fn users_roles_and_the_last_admin(db: &Db) -> Result<()> {
    let alice = db
        .store
        .create_user(
            &cli(),
            NewUser {
                name: "alice".into(),
                password_hash: hash("alice password"),
                role: Role::Admin,
            },
        )
        .await?;
    ensure!(alice.role == Role::Admin && !alice.totp_enabled);
    let dup = db
        .store
        .create_user(
            &cli(),
            NewUser {
                name: "alice".into(),
                password_hash: hash("x password"),
                role: Role::Viewer,
            },
        )
        .await;
    ensure!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    let bad = db
        .store
        .create_user(
            &cli(),
            NewUser {
                name: "Bob Smith".into(),
                password_hash: hash("x password"),
                role: Role::Viewer,
            },
        )
        .await;
    ensure!(
        matches!(&bad, Err(StoreError::Invalid { field, .. }) if field == "name"),
        "{bad:?}"
    );
    let plain = db
        .store
        .create_user(
            &cli(),
            NewUser {
                name: "carol".into(),
                password_hash: "plaintext".into(),
                role: Role::Viewer,
            },
        )
        .await;
    ensure!(plain.is_err(), "a non-Argon2id hash is refused");

    // The only admin can be neither demoted nor deleted.
    let demote = db
        .store
        .update_user(
            &cli(),
            alice.id,
            UserUpdate {
                role: Some(Role::Viewer),
                ..UserUpdate::default()
            },
        )
        .await;
    ensure!(
        matches!(demote, Err(StoreError::Conflict { .. })),
        "{demote:?}"
    );
    ensure!(matches!(
        db.store.delete_user(&cli(), alice.id).await,
        Err(StoreError::Conflict { .. })
    ));
    let bob = db
        .store
        .create_user(
            &cli(),
            NewUser {
                name: "bob".into(),
                password_hash: hash("bob password"),
                role: Role::Viewer,
            },
        )
        .await?;
    ensure!(db.store.count_users().await? == 2);
    let bob = db
        .store
        .update_user(
            &cli(),
            bob.id,
            UserUpdate {
                role: Some(Role::Admin),
                ..UserUpdate::default()
            },
        )
        .await?;
    ensure!(bob.role == Role::Admin);
    db.store.delete_user(&cli(), alice.id).await?;
    ensure!(db.store.user_by_name("ALICE").await.is_err());
    ensure!(db.store.user_by_name("BOB").await?.id == bob.id);

    // A password change ends the user's sessions.
    let issued = db
        .store
        .create_session(&cli(), session(bob.id, SessionStage::Active, 3600))
        .await?;
    db.store
        .update_user(
            &cli(),
            bob.id,
            UserUpdate {
                password_hash: Some(hash("new bob password")),
                ..UserUpdate::default()
            },
        )
        .await?;
    ensure!(db
        .store
        .authenticate_session(issued.secret.expose(), Duration::from_secs(60))
        .await
        .is_err());
    ensure!(events(db, "created")
        .await?
        .iter()
        .any(|e| e.entity == Entity::User));
    Ok(())
}

fn session(user: uuid::Uuid, stage: SessionStage, seconds: u64) -> NewSession {
    NewSession {
        user_id: user,
        stage,
        lifetime: Duration::from_secs(seconds),
        address: Some("127.0.0.1".parse().expect("ip")),
        user_agent: Some("test\u{7}agent".into()),
        max_per_user: 3,
    }
}

async fn admin(db: &Db, name: &str) -> Result<kokoa_control::store::User> {
    Ok(db
        .store
        .create_user(
            &cli(),
            NewUser {
                name: name.into(),
                password_hash: hash("a long password"),
                role: Role::Admin,
            },
        )
        .await?)
}

async fn totp_steps_are_single_use_and_recovery_codes_too(db: &Db) -> Result<()> {
    let user = admin(db, "alice").await?;
    // Confirming without a pending secret is refused.
    ensure!(db.store.enable_totp(&cli(), user.id, 5, &[]).await.is_err());
    let secret = totp::new_secret();
    db.store.begin_totp(&cli(), user.id, &secret).await?;
    let secrets = db.store.user_secrets(user.id).await?;
    ensure!(secrets.totp.is_none());
    ensure!(secrets.totp_pending.as_deref().map(|s| s.as_slice()) == Some(secret.as_slice()));
    // Sealed at rest: the raw column does not hold the secret.
    let raw: Option<String> = sqlx::query_scalar("SELECT totp_pending_sealed FROM users")
        .fetch_one(db.sql.pool())
        .await?;
    let raw = raw.context("sealed secret")?;
    ensure!(!raw.contains(&totp::secret_base32(&secret)));

    let codes = totp::new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| totp::recovery_hash(c)).collect();
    let user = db.store.enable_totp(&cli(), user.id, 100, &hashes).await?;
    ensure!(user.totp_enabled && user.recovery_codes_left == 10);
    ensure!(db.store.user_secrets(user.id).await?.totp.is_some());
    // Step 100 was used to confirm: it and earlier steps are replays.
    ensure!(!db.store.accept_totp_step(user.id, 100).await?);
    ensure!(!db.store.accept_totp_step(user.id, 99).await?);
    ensure!(db.store.accept_totp_step(user.id, 101).await?);
    ensure!(!db.store.accept_totp_step(user.id, 101).await?);
    // Recovery codes: each once.
    ensure!(
        db.store
            .use_recovery_code(&cli(), user.id, &hashes[3])
            .await?
    );
    ensure!(
        !db.store
            .use_recovery_code(&cli(), user.id, &hashes[3])
            .await?
    );
    ensure!(!db.store.use_recovery_code(&cli(), user.id, "00").await?);
    ensure!(db.store.get_user(user.id).await?.recovery_codes_left == 9);
    let raw: Vec<String> = sqlx::query_scalar("SELECT code_hash FROM user_recovery_codes")
        .fetch_all(db.sql.pool())
        .await?;
    ensure!(raw
        .iter()
        .all(|h| !codes.iter().any(|c| h.contains(c.as_str()))));

    let user = db.store.disable_totp(&cli(), user.id).await?;
    ensure!(!user.totp_enabled && user.recovery_codes_left == 0);
    ensure!(
        !db.store.accept_totp_step(user.id, 500).await?,
        "no TOTP, no step"
    );
    ensure!(events(db, "totp_enabled").await?.len() == 1);
    ensure!(events(db, "totp_disabled").await?.len() == 1);
    Ok(())
}

async fn failures_lock_the_account_with_events(db: &Db) -> Result<()> {
    let user = admin(db, "alice").await?;
    let policy = LockoutPolicy {
        max_failures: 3,
        window: Duration::from_secs(600),
        lockout: Duration::from_secs(600),
    };
    let first = db
        .store
        .login_failed(&Actor::System, user.id, "wrong password", &policy)
        .await?;
    ensure!(first == FailureOutcome::Counted { left: 2 }, "{first:?}");
    db.store
        .login_failed(&Actor::System, user.id, "wrong password", &policy)
        .await?;
    let third = db
        .store
        .login_failed(&Actor::System, user.id, "wrong password", &policy)
        .await?;
    ensure!(matches!(third, FailureOutcome::Locked(_)), "{third:?}");
    ensure!(db.store.get_user(user.id).await?.locked_until.is_some());
    ensure!(events(db, "login_failed").await?.len() == 3);
    let locked = events(db, "locked").await?;
    ensure!(locked.len() == 1 && locked[0].detail["name"] == "alice");
    db.store.login_succeeded(user.id).await?;
    let user = db.store.get_user(user.id).await?;
    ensure!(user.locked_until.is_none() && user.last_login_at.is_some());
    Ok(())
}

async fn sessions_time_out_idle_and_absolute_and_are_capped(db: &Db) -> Result<()> {
    let user = admin(db, "alice").await?;
    let issued = db
        .store
        .create_session(&cli(), session(user.id, SessionStage::Active, 3600))
        .await?;
    ensure!(issued.secret.expose().starts_with("kokoa_session_"));
    ensure!(issued.session.user_agent.as_deref() == Some("testagent"));
    let (found, owner) = db
        .store
        .authenticate_session(issued.secret.expose(), Duration::from_secs(60))
        .await?;
    ensure!(found.id == issued.session.id && owner.id == user.id);
    ensure!(db
        .store
        .authenticate_session("kokoa_session_nope", Duration::from_secs(60))
        .await
        .is_err());
    // Only the hash is stored.
    let hashes: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_all(db.sql.pool())
        .await?;
    ensure!(!hashes.iter().any(|h| h == issued.secret.expose()));

    // Idle: an idle limit shorter than the time since last use ends it (and deletes it).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ensure!(db
        .store
        .authenticate_session(issued.secret.expose(), Duration::from_secs(1))
        .await
        .is_err());
    ensure!(db
        .store
        .authenticate_session(issued.secret.expose(), Duration::from_secs(3600))
        .await
        .is_err());

    // Absolute: a 1 s session is gone after 1 s however active it is.
    let short = db
        .store
        .create_session(&cli(), session(user.id, SessionStage::Active, 1))
        .await?;
    ensure!(db
        .store
        .authenticate_session(short.secret.expose(), Duration::from_secs(3600))
        .await
        .is_ok());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ensure!(db
        .store
        .authenticate_session(short.secret.expose(), Duration::from_secs(3600))
        .await
        .is_err());

    // At most max_per_user (3): the oldest go.
    let mut secrets = Vec::new();
    for _ in 0..5 {
        secrets.push(
            db.store
                .create_session(&cli(), session(user.id, SessionStage::Active, 3600))
                .await?
                .secret,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ensure!(db.store.list_sessions(user.id).await?.len() == 3);
    ensure!(db
        .store
        .authenticate_session(secrets[0].expose(), Duration::from_secs(60))
        .await
        .is_err());
    let (newest, _) = db
        .store
        .authenticate_session(secrets[4].expose(), Duration::from_secs(60))
        .await?;
    db.store.delete_session(&cli(), newest.id, true).await?;
    db.store.delete_session(&cli(), newest.id, true).await?;
    ensure!(db
        .store
        .authenticate_session(secrets[4].expose(), Duration::from_secs(60))
        .await
        .is_err());
    ensure!(events(db, "logged_out").await?.len() == 1);
    ensure!(events(db, "logged_in").await?.len() == 7);
    Ok(())
}

async fn api_tokens_carry_a_role_and_old_ones_are_admin(db: &Db) -> Result<()> {
    let viewer = db
        .store
        .create_api_token_with_role(&cli(), "dash", None, Role::Viewer)
        .await?;
    ensure!(viewer.token.role == Role::Viewer);
    let authed = db
        .store
        .authenticate_api_token(viewer.secret.expose())
        .await?;
    ensure!(authed.role == Role::Viewer);
    let admin = db.store.create_api_token(&cli(), "ops", None).await?;
    ensure!(admin.token.role == Role::Admin);
    // A row written without a role (as before migration 6) reads as admin.
    sqlx::query(
        "INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES ($1, 'old', 'h', 0)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .execute(db.sql.pool())
    .await?;
    let tokens = db.store.list_api_tokens().await?;
    let old = tokens
        .iter()
        .find(|t| t.name == "old")
        .context("old token")?;
    ensure!(old.role == Role::Admin);
    Ok(())
}

fn client(address: &str) -> Client {
    Client {
        address: Some(address.parse::<IpAddr>().expect("ip")),
        user_agent: Some("test".into()),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn login_with_password_and_totp(db: &Db) -> Result<()> {
    let accounts = Accounts::new(db.store.clone(), SessionPolicy::default());
    let short = accounts
        .create_user(&cli(), "alice", "short", Role::Admin)
        .await;
    ensure!(
        matches!(&short, Err(StoreError::Invalid { field, .. }) if field == "password"),
        "{short:?}"
    );
    let alice = accounts
        .create_user(&cli(), "alice", "correct horse battery", Role::Admin)
        .await?;
    let here = client("192.0.2.7");
    let wrong = accounts.login("alice", "wrong horse battery", &here).await;
    ensure!(matches!(wrong, Err(LoginError::Refused)), "{wrong:?}");
    let unknown = accounts.login("mallory", "whatever it is", &here).await;
    ensure!(matches!(unknown, Err(LoginError::Refused)), "{unknown:?}");
    let LoginStep::Done(session) = accounts
        .login("alice", "correct horse battery", &here)
        .await?
    else {
        anyhow::bail!("no TOTP yet: one step");
    };
    let (_, user) = accounts.authenticate(session.secret.expose()).await?;
    ensure!(user.id == alice.id);

    // Enrol TOTP: a wrong code does not confirm; the current one does and yields recovery codes.
    let enrolment = accounts.begin_totp(&user).await?;
    ensure!(enrolment.qr_svg.starts_with("<svg"));
    let secret = db
        .store
        .user_secrets(user.id)
        .await?
        .totp_pending
        .context("pending secret")?;
    ensure!(
        accounts.confirm_totp(&user, "000000").await.is_err() || {
            // The astronomically unlikely case that 000000 is the current code.
            totp::code_at(&secret, unix_now()) == "000000"
        }
    );
    let now = unix_now();
    let recovery = accounts
        .confirm_totp(&user, &totp::code_at(&secret, now))
        .await?;
    ensure!(recovery.len() == totp::RECOVERY_CODES);

    // Password alone now yields only the second-factor step, and that pending session is not
    // a login.
    let LoginStep::SecondFactor(pending) = accounts
        .login("alice", "correct horse battery", &here)
        .await?
    else {
        anyhow::bail!("TOTP on: two steps");
    };
    ensure!(accounts.authenticate(pending.secret.expose()).await.is_ok());
    ensure!(accounts.pending(pending.secret.expose()).await.is_ok());
    // The code used for enrolment is spent; the next step's code works once.
    let replay = accounts
        .second_factor(pending.secret.expose(), &totp::code_at(&secret, now), &here)
        .await;
    ensure!(matches!(replay, Err(LoginError::Refused)), "{replay:?}");
    let next = totp::code_at(&secret, now + totp::STEP);
    let active = accounts
        .second_factor(pending.secret.expose(), &next, &here)
        .await?;
    ensure!(active.session.stage == SessionStage::Active);
    ensure!(
        accounts.pending(pending.secret.expose()).await.is_err(),
        "the pending session ends"
    );
    // A recovery code works once, in place of the TOTP code.
    let LoginStep::SecondFactor(pending) = accounts
        .login("alice", "correct horse battery", &here)
        .await?
    else {
        anyhow::bail!("two steps");
    };
    accounts
        .second_factor(pending.secret.expose(), &recovery[0].to_uppercase(), &here)
        .await?;
    let LoginStep::SecondFactor(pending) = accounts
        .login("alice", "correct horse battery", &here)
        .await?
    else {
        anyhow::bail!("two steps");
    };
    let reused = accounts
        .second_factor(pending.secret.expose(), &recovery[0], &here)
        .await;
    ensure!(matches!(reused, Err(LoginError::Refused)), "{reused:?}");
    ensure!(events(db, "recovery_code_used").await?.len() == 1);
    Ok(())
}

async fn login_lockout_per_account_and_per_address(db: &Db) -> Result<()> {
    let policy = SessionPolicy {
        account: LockoutPolicy {
            max_failures: 3,
            window: Duration::from_secs(600),
            lockout: Duration::from_secs(600),
        },
        address: AddressPolicy {
            max_failures: 5,
            window: Duration::from_secs(600),
            lockout: Duration::from_secs(600),
            capacity: 100,
        },
        ..SessionPolicy::default()
    };
    let accounts = Accounts::new(db.store.clone(), policy);
    accounts
        .create_user(&cli(), "alice", "correct horse battery", Role::Admin)
        .await?;
    accounts
        .create_user(&cli(), "bob", "bob's long password", Role::Viewer)
        .await?;
    // Per account: three wrong passwords from three addresses lock alice everywhere, even for
    // the right password.
    for (i, address) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
        let result = accounts.login("alice", "wrong", &client(address)).await;
        if i < 2 {
            ensure!(matches!(result, Err(LoginError::Refused)), "{result:?}");
        } else {
            ensure!(
                matches!(result, Err(LoginError::AccountLocked { .. })),
                "{result:?}"
            );
        }
    }
    let right = accounts
        .login("alice", "correct horse battery", &client("198.51.100.9"))
        .await;
    ensure!(
        matches!(right, Err(LoginError::AccountLocked { .. })),
        "{right:?}"
    );
    // Bob is not affected.
    ensure!(accounts
        .login("bob", "bob's long password", &client("198.51.100.9"))
        .await
        .is_ok());

    // Per address: one hostile address guessing names gets locked out; bob's own address
    // still logs in, and the hostile one is refused even with bob's right password.
    let hostile = client("203.0.113.66");
    for i in 0..5 {
        let result = accounts
            .login(&format!("guess{i}"), "password guess", &hostile)
            .await;
        ensure!(matches!(result, Err(LoginError::Refused)), "{result:?}");
    }
    let blocked = accounts.login("bob", "bob's long password", &hostile).await;
    ensure!(
        matches!(blocked, Err(LoginError::AddressLocked { .. })),
        "{blocked:?}"
    );
    ensure!(accounts
        .login("bob", "bob's long password", &client("198.51.100.10"))
        .await
        .is_ok());
    let audit = events(db, "address_locked").await?;
    ensure!(
        audit.len() == 1 && audit[0].entity_id == "203.0.113.66",
        "{audit:?}"
    );
    ensure!(events(db, "locked").await?.len() == 1);
    Ok(())
}

//! `/api/v1/users` (dashboard accounts, admin only for changes) and `/api/v1/me` (the caller:
//! who they are, and for a logged-in user their password and TOTP second factor).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{ApiJson, Caller, Principal, Via};
use super::{ApiError, ApiState};
use crate::account::TotpEnrolment;
use crate::store::{Role, Store, User};

/// Body of `POST /users`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    /// Login name.
    pub name: String,
    /// Password (at least 10 characters); stored as an Argon2id hash.
    pub password: String,
    /// Role; `viewer` when absent.
    #[serde(default)]
    pub role: Option<Role>,
}

/// Body of `PATCH /users/{user}`; absent fields are unchanged.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// New role.
    #[serde(default)]
    pub role: Option<Role>,
    /// New password (ends the user's sessions).
    #[serde(default)]
    pub password: Option<String>,
}

/// `GET /me`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeView {
    /// As recorded on changes (`user:NAME`, `api:NAME`).
    pub actor: String,
    /// What the caller may do.
    pub role: Role,
    /// `session` or `token`.
    pub via: String,
    /// The account, for a logged-in user.
    #[serde(default)]
    pub user: Option<User>,
}

/// Body of `POST /me/password`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The password now.
    pub current_password: String,
    /// The new one.
    pub new_password: String,
}

/// Body of `POST /me/totp/confirm`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TotpConfirm {
    /// The current code of the new secret.
    pub code: String,
}

/// Answer of `POST /me/totp/confirm`: the recovery codes, shown once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryCodes {
    /// Single-use codes that stand in for a TOTP code.
    pub recovery_codes: Vec<String>,
}

/// Body of `POST /me/totp/disable`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TotpDisable {
    /// The account password, to confirm.
    pub password: String,
}

async fn find_user(store: &dyn Store, key: &str) -> Result<User, ApiError> {
    Ok(match Uuid::parse_str(key) {
        Ok(id) => store.get_user(id).await?,
        Err(_) => store.user_by_name(key).await?,
    })
}

fn session_user(principal: &Principal) -> Result<&User, ApiError> {
    principal.user().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "this is about a dashboard user; an API token has no password or second factor",
        )
    })
}

pub(super) async fn list(State(state): State<ApiState>) -> Result<Json<Vec<User>>, ApiError> {
    Ok(Json(state.store.list_users().await?))
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<UserCreate>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let user = state
        .accounts
        .create_user(
            &actor,
            &body.name,
            &body.password,
            body.role.unwrap_or(Role::Viewer),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

pub(super) async fn get(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(find_user(&*state.store, &key).await?))
}

pub(super) async fn update(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<UserPatch>,
) -> Result<Json<User>, ApiError> {
    let user = find_user(&*state.store, &key).await?;
    let user = state
        .accounts
        .update_user(&actor, user.id, body.role, body.password.as_deref())
        .await?;
    Ok(Json(user))
}

pub(super) async fn delete(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = find_user(&*state.store, &key).await?;
    state.store.delete_user(&actor, user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn me(principal: Principal) -> Json<MeView> {
    let (via, user) = match &principal.via {
        Via::Token => ("token", None),
        Via::Session { user, .. } => ("session", Some((**user).clone())),
    };
    Json(MeView {
        actor: principal.actor.to_string(),
        role: principal.role,
        via: via.into(),
        user,
    })
}

pub(super) async fn change_password(
    State(state): State<ApiState>,
    principal: Principal,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<Json<User>, ApiError> {
    let user = session_user(&principal)?;
    Ok(Json(
        state
            .accounts
            .change_password(user, &body.current_password, &body.new_password)
            .await?,
    ))
}

pub(super) async fn begin_totp(
    State(state): State<ApiState>,
    principal: Principal,
) -> Result<(StatusCode, Json<TotpEnrolment>), ApiError> {
    let user = session_user(&principal)?;
    if user.totp_enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "TOTP is already on; turn it off first to enrol a new authenticator",
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(state.accounts.begin_totp(user).await?),
    ))
}

pub(super) async fn pending_totp(
    State(state): State<ApiState>,
    principal: Principal,
) -> Result<Json<TotpEnrolment>, ApiError> {
    let user = session_user(&principal)?;
    state
        .accounts
        .pending_totp(user)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no TOTP enrolment in progress"))
}

pub(super) async fn confirm_totp(
    State(state): State<ApiState>,
    principal: Principal,
    ApiJson(body): ApiJson<TotpConfirm>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let user = session_user(&principal)?;
    let recovery_codes = state.accounts.confirm_totp(user, &body.code).await?;
    Ok(Json(RecoveryCodes { recovery_codes }))
}

pub(super) async fn disable_totp(
    State(state): State<ApiState>,
    principal: Principal,
    ApiJson(body): ApiJson<TotpDisable>,
) -> Result<Json<User>, ApiError> {
    let user = session_user(&principal)?;
    Ok(Json(
        state.accounts.disable_totp(user, &body.password).await?,
    ))
}

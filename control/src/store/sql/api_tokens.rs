//! [`ApiTokenStore`] on SQL: `api_tokens`, the REST API's bearer tokens (SHA-256 only).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{add_ms, ms_of, now_ms, opt_ts, ts, uuid};
use super::write::{db_err, exists};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::{token, ApiTokenStore, Role};

const API_TOKEN_COLS: &str = "id, name, role, created_at, expires_at, revoked_at";

fn api_token_row(row: &AnyRow) -> Result<ApiToken> {
    const T: &str = "api_tokens";
    let role: String = row.try_get("role")?;
    Ok(ApiToken {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::corrupt(T, format!("role {role:?}")))?,
        created_at: ts(T, row.try_get("created_at")?)?,
        expires_at: opt_ts(T, row.try_get("expires_at")?)?,
        revoked_at: opt_ts(T, row.try_get("revoked_at")?)?,
    })
}

async fn fetch_api_token(conn: &mut AnyConnection, id: Id) -> Result<ApiToken> {
    let row = sqlx::query(&format!(
        "SELECT {API_TOKEN_COLS} FROM api_tokens WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::ApiToken, id))?;
    api_token_row(&row)
}

#[async_trait]
impl ApiTokenStore for SqlStore {
    async fn create_api_token_with_role(
        &self,
        actor: &Actor,
        name: &str,
        ttl: Option<Duration>,
        role: Role,
    ) -> Result<IssuedApiToken> {
        let name = Name::new(name)
            .map_err(|e| StoreError::model("name", e))?
            .to_string();
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(StoreError::invalid("ttl", "must be positive"));
        }
        let mut w = self.write(actor).await?;
        if exists(
            w.conn(),
            "SELECT 1 FROM api_tokens WHERE name = $1",
            name.clone(),
            None,
        )
        .await?
        {
            return Err(StoreError::conflict_on(
                "name",
                format!("an API token named {name} already exists"),
            ));
        }
        let secret = token::generate("api");
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_hash, created_at, expires_at, role) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(name.clone())
        .bind(token::hash(secret.expose()))
        .bind(w.now)
        .bind(ttl.map(|t| add_ms(w.now, t)))
        .bind(role.as_str())
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.event(
            Entity::ApiToken,
            &id.to_string(),
            "created",
            json!({"name": name, "role": role, "ttl_seconds": ttl.map(|t| t.as_secs())}),
        )
        .await?;
        let token = fetch_api_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(IssuedApiToken { token, secret })
    }

    async fn authenticate_api_token(&self, secret: &str) -> Result<ApiToken> {
        let refused = |reason| StoreError::Unauthenticated { reason };
        let row = sqlx::query(&format!(
            "SELECT {API_TOKEN_COLS} FROM api_tokens WHERE token_hash = $1"
        ))
        .bind(token::hash(secret.trim()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(refused("unknown API token"))?;
        let token = api_token_row(&row)?;
        if token.revoked_at.is_some() {
            return Err(refused("API token revoked"));
        }
        if token.expires_at.is_some_and(|t| ms_of(t) <= now_ms()) {
            return Err(refused("API token expired"));
        }
        Ok(token)
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        sqlx::query(&format!(
            "SELECT {API_TOKEN_COLS} FROM api_tokens ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(api_token_row)
        .collect()
    }

    async fn revoke_api_token(&self, actor: &Actor, id: Id) -> Result<ApiToken> {
        let mut w = self.write(actor).await?;
        let token = fetch_api_token(w.conn(), id).await?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2")
            .bind(w.now)
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.event(
            Entity::ApiToken,
            &id.to_string(),
            "revoked",
            json!({"name": token.name}),
        )
        .await?;
        let token = fetch_api_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(token)
    }
}

//! [`NodeTokenStore`] on SQL: `node_tokens`, one-time enrollment tokens and the long-lived
//! credentials they are exchanged for. Only the SHA-256 of a secret is stored.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{add_ms, ms_of, now_ms, opt_ts, opt_uuid, ts, uuid};
use super::node_state::node_name;
use super::write::db_err;
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::{token, NodeTokenStore};

const NODE_TOKEN_COLS: &str =
    "id, kind, edge_id, origin_id, created_at, expires_at, used_at, revoked_at";

fn node_token_row(row: &AnyRow) -> Result<NodeToken> {
    const T: &str = "node_tokens";
    let kind: String = row.try_get("kind")?;
    let edge = opt_uuid(T, row.try_get("edge_id")?)?;
    let origin = opt_uuid(T, row.try_get("origin_id")?)?;
    let node = match (edge, origin) {
        (Some(id), None) => NodeId::Edge(id),
        (None, Some(id)) => NodeId::Origin(id),
        _ => {
            return Err(StoreError::corrupt(
                T,
                "not exactly one of edge_id, origin_id",
            ))
        }
    };
    Ok(NodeToken {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        kind: NodeTokenKind::parse(&kind)
            .ok_or_else(|| StoreError::corrupt(T, format!("kind {kind:?}")))?,
        node,
        created_at: ts(T, row.try_get("created_at")?)?,
        expires_at: opt_ts(T, row.try_get("expires_at")?)?,
        used_at: opt_ts(T, row.try_get("used_at")?)?,
        revoked_at: opt_ts(T, row.try_get("revoked_at")?)?,
    })
}

async fn fetch_node_token(conn: &mut AnyConnection, id: Id) -> Result<NodeToken> {
    let row = sqlx::query(&format!(
        "SELECT {NODE_TOKEN_COLS} FROM node_tokens WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::NodeToken, id))?;
    node_token_row(&row)
}

#[async_trait]
impl NodeTokenStore for SqlStore {
    async fn create_enrollment_token(
        &self,
        actor: &Actor,
        node: NodeId,
        ttl: Duration,
    ) -> Result<IssuedNodeToken> {
        if ttl.is_zero() {
            return Err(StoreError::invalid("ttl", "must be positive"));
        }
        let mut w = self.write(actor).await?;
        let name = node_name(w.conn(), node).await?;
        let secret = token::generate("enroll");
        let id = Uuid::new_v4();
        let (edge, origin) = match node {
            NodeId::Edge(e) => (Some(e.to_string()), None),
            NodeId::Origin(o) => (None, Some(o.to_string())),
        };
        sqlx::query(
            "INSERT INTO node_tokens (id, kind, token_hash, edge_id, origin_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.to_string())
        .bind(NodeTokenKind::Enrollment.as_str())
        .bind(token::hash(secret.expose()))
        .bind(edge)
        .bind(origin)
        .bind(w.now)
        .bind(add_ms(w.now, ttl))
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.event(
            Entity::NodeToken,
            &id.to_string(),
            "created",
            json!({"kind": "enrollment", "node": node, "node_name": name,
                   "ttl_seconds": ttl.as_secs()}),
        )
        .await?;
        let token = fetch_node_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(IssuedNodeToken { token, secret })
    }

    async fn enroll(&self, enrollment_secret: &str) -> Result<Enrollment> {
        let hash = token::hash(enrollment_secret.trim());
        let refused = |reason| StoreError::Unauthenticated { reason };
        // Look up first without the write lock: unknown secrets never queue behind writers.
        let row = sqlx::query(&format!(
            "SELECT {NODE_TOKEN_COLS} FROM node_tokens WHERE token_hash = $1"
        ))
        .bind(hash.clone())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(refused("unknown token"))?;
        let found = node_token_row(&row)?;
        let name = node_name(&mut *self.conn().await?, found.node).await?;
        let mut w = self.write(&Actor::Node(name)).await?;
        // Re-read under the lock: two concurrent uses of one token must not both succeed.
        let token = fetch_node_token(w.conn(), found.id).await?;
        if token.kind != NodeTokenKind::Enrollment {
            return Err(refused("not an enrollment token"));
        }
        if token.revoked_at.is_some() {
            return Err(refused("enrollment token revoked"));
        }
        if token.used_at.is_some() {
            return Err(refused("enrollment token already used"));
        }
        if token.expires_at.is_some_and(|t| ms_of(t) <= w.now) {
            return Err(refused("enrollment token expired"));
        }
        let node = token.node;
        sqlx::query("UPDATE node_tokens SET used_at = $1 WHERE id = $2")
            .bind(w.now)
            .bind(token.id.to_string())
            .execute(w.conn())
            .await?;
        let column = match node {
            NodeId::Edge(_) => "edge_id",
            NodeId::Origin(_) => "origin_id",
        };
        sqlx::query(&format!(
            "UPDATE node_tokens SET revoked_at = $1 WHERE {column} = $2 AND kind = 'credential' \
             AND revoked_at IS NULL"
        ))
        .bind(w.now)
        .bind(node.id().to_string())
        .execute(w.conn())
        .await?;
        let secret = token::generate("node");
        let id = Uuid::new_v4();
        let (edge, origin) = match node {
            NodeId::Edge(e) => (Some(e.to_string()), None),
            NodeId::Origin(o) => (None, Some(o.to_string())),
        };
        sqlx::query(
            "INSERT INTO node_tokens (id, kind, token_hash, edge_id, origin_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(NodeTokenKind::Credential.as_str())
        .bind(token::hash(secret.expose()))
        .bind(edge)
        .bind(origin)
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.event(
            Entity::NodeToken,
            &id.to_string(),
            "enrolled",
            json!({"kind": "credential", "node": node, "enrollment_token": token.id}),
        )
        .await?;
        let credential = fetch_node_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(Enrollment {
            node,
            credential: IssuedNodeToken {
                token: credential,
                secret,
            },
        })
    }

    async fn authenticate_node(&self, credential_secret: &str) -> Result<NodeId> {
        let refused = |reason| StoreError::Unauthenticated { reason };
        let row = sqlx::query(&format!(
            "SELECT {NODE_TOKEN_COLS} FROM node_tokens WHERE token_hash = $1"
        ))
        .bind(token::hash(credential_secret.trim()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(refused("unknown credential"))?;
        let token = node_token_row(&row)?;
        if token.kind != NodeTokenKind::Credential {
            return Err(refused("not a node credential"));
        }
        if token.revoked_at.is_some() {
            return Err(refused("credential revoked"));
        }
        if token.expires_at.is_some_and(|t| ms_of(t) <= now_ms()) {
            return Err(refused("credential expired"));
        }
        Ok(token.node)
    }

    async fn list_node_tokens(&self, node: Option<NodeId>) -> Result<Vec<NodeToken>> {
        let rows = match node {
            None => {
                sqlx::query(&format!(
                    "SELECT {NODE_TOKEN_COLS} FROM node_tokens ORDER BY created_at DESC, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
            Some(node) => {
                let column = match node {
                    NodeId::Edge(_) => "edge_id",
                    NodeId::Origin(_) => "origin_id",
                };
                sqlx::query(&format!(
                    "SELECT {NODE_TOKEN_COLS} FROM node_tokens WHERE {column} = $1 \
                     ORDER BY created_at DESC, id"
                ))
                .bind(node.id().to_string())
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(node_token_row).collect()
    }

    async fn revoke_node_token(&self, actor: &Actor, id: Id) -> Result<NodeToken> {
        let mut w = self.write(actor).await?;
        let token = fetch_node_token(w.conn(), id).await?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        sqlx::query("UPDATE node_tokens SET revoked_at = $1 WHERE id = $2")
            .bind(w.now)
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.event(
            Entity::NodeToken,
            &id.to_string(),
            "revoked",
            json!({"kind": token.kind, "node": token.node}),
        )
        .await?;
        let token = fetch_node_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(token)
    }
}

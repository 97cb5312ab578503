//! WireGuard key pairs of origins and edges: generated here (the private key sealed with the
//! master key, bound to the node's entity and id), or given by an operator who keeps the private
//! key. Shared by [`OriginStore`](crate::store::OriginStore) and
//! [`EdgeStore`](crate::store::EdgeStore).

use kokoa_tunnel::key::{PrivateKey, PublicKey};
use serde_json::json;
use sqlx::{AnyConnection, Row};
use zeroize::Zeroizing;

use super::write::{db_err, exists};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::{Actor, Id};

/// Checks a public key is not already used by another origin or edge (WireGuard peers are
/// identified by key, so a duplicate would make two nodes indistinguishable).
pub(super) async fn check_key_free(
    conn: &mut AnyConnection,
    key: &PublicKey,
    except: Option<Id>,
) -> Result<()> {
    let except = except.map(|id| id.to_string()).unwrap_or_default();
    for table in ["origins", "edge_nodes"] {
        let sql = format!("SELECT 1 FROM {table} WHERE public_key = $1 AND id <> $2 LIMIT 1");
        if exists(conn, &sql, key.to_base64(), Some(except.clone())).await? {
            return Err(StoreError::conflict_on(
                "public_key",
                format!("public key {key} is already used by another node"),
            ));
        }
    }
    Ok(())
}

impl SqlStore {
    pub(super) fn aad(entity: Entity, id: Id) -> Vec<u8> {
        format!("{entity}:{id}").into_bytes()
    }

    /// A public key and, when control generates the pair, the sealed private key.
    pub(super) fn key_pair(
        &self,
        entity: Entity,
        id: Id,
        given: Option<PublicKey>,
    ) -> Result<(PublicKey, Option<String>)> {
        match given {
            Some(public) => Ok((public, None)),
            None => {
                let private = PrivateKey::generate();
                let text = Zeroizing::new(private.to_base64());
                let sealed = self.key.seal(text.as_bytes(), &Self::aad(entity, id))?;
                Ok((private.public_key(), Some(sealed)))
            }
        }
    }

    pub(super) fn unseal_private_key(
        &self,
        entity: Entity,
        id: Id,
        sealed: &str,
    ) -> Result<PrivateKey> {
        let plain = self.key.open(sealed, &Self::aad(entity, id))?;
        let text = std::str::from_utf8(&plain)
            .map_err(|e| StoreError::corrupt("private_key_sealed", e))?;
        PrivateKey::from_base64(text).map_err(|e| StoreError::corrupt("private_key_sealed", e))
    }

    pub(super) async fn private_key(&self, entity: Entity, id: Id) -> Result<Option<PrivateKey>> {
        let table = if entity == Entity::Origin {
            "origins"
        } else {
            "edge_nodes"
        };
        let mut conn = self.conn().await?;
        let row = sqlx::query(&format!(
            "SELECT private_key_sealed FROM {table} WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found(entity, id))?;
        let sealed: Option<String> = row.try_get("private_key_sealed")?;
        sealed
            .map(|s| self.unseal_private_key(entity, id, &s))
            .transpose()
    }

    pub(super) async fn rotate_key(
        &self,
        actor: &Actor,
        entity: Entity,
        id: Id,
        given: Option<PublicKey>,
    ) -> Result<()> {
        let table = if entity == Entity::Origin {
            "origins"
        } else {
            "edge_nodes"
        };
        let mut w = self.write(actor).await?;
        if !exists(
            w.conn(),
            &format!("SELECT 1 FROM {table} WHERE id = $1"),
            id.to_string(),
            None,
        )
        .await?
        {
            return Err(StoreError::not_found(entity, id));
        }
        let (public, sealed) = self.key_pair(entity, id, given)?;
        check_key_free(w.conn(), &public, Some(id)).await?;
        sqlx::query(&format!(
            "UPDATE {table} SET public_key = $1, private_key_sealed = $2, updated_at = $3 WHERE id = $4"
        ))
        .bind(public.to_base64())
        .bind(sealed.clone())
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.bump().await?;
        w.event(
            entity,
            &id.to_string(),
            "key_rotated",
            json!({"public_key": public.to_base64(), "managed_key": sealed.is_some()}),
        )
        .await?;
        w.commit().await
    }
}

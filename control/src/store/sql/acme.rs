//! [`AcmeStore`] on SQL: `acme_accounts` (credentials sealed, bound to the directory URL) and
//! `acme_challenges` (pending answers the edges serve; TLS-ALPN-01 keys sealed).

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::certificates::fetch_certificate;
use super::column::{add_ms, now_ms, ts, uuid};
use super::write::db_err;
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::AcmeStore;

const ACME_CHALLENGE_COLS: &str =
    "id, certificate_id, kind, name, token, key_authorization, cert_pem, created_at, expires_at";

fn acme_challenge_row(row: &AnyRow) -> Result<AcmeChallenge> {
    const T: &str = "acme_challenges";
    let kind: String = row.try_get("kind")?;
    let answer = match kind.as_str() {
        "http-01" => AcmeChallengeAnswer::Http01 {
            token: row
                .try_get::<Option<String>, _>("token")?
                .ok_or_else(|| StoreError::corrupt(T, "http-01 without a token"))?,
            key_authorization: row
                .try_get::<Option<String>, _>("key_authorization")?
                .ok_or_else(|| StoreError::corrupt(T, "http-01 without a key authorization"))?,
        },
        "tls-alpn-01" => AcmeChallengeAnswer::TlsAlpn01 {
            cert_pem: row
                .try_get::<Option<String>, _>("cert_pem")?
                .ok_or_else(|| StoreError::corrupt(T, "tls-alpn-01 without a certificate"))?,
        },
        other => return Err(StoreError::corrupt(T, format!("kind {other:?}"))),
    };
    Ok(AcmeChallenge {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        certificate_id: uuid(T, &row.try_get::<String, _>("certificate_id")?)?,
        name: row.try_get("name")?,
        answer,
        created_at: ts(T, row.try_get("created_at")?)?,
        expires_at: ts(T, row.try_get("expires_at")?)?,
    })
}

/// Pending challenges that have not expired at `now` (ms), oldest first.
pub(super) async fn fetch_acme_challenges(
    conn: &mut AnyConnection,
    now: i64,
) -> Result<Vec<AcmeChallenge>> {
    sqlx::query(&format!(
        "SELECT {ACME_CHALLENGE_COLS} FROM acme_challenges WHERE expires_at > $1 \
         ORDER BY created_at, id"
    ))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(acme_challenge_row)
    .collect()
}

/// Sealing context of an ACME account's credentials: bound to its directory URL.
fn acme_account_aad(directory_url: &str) -> Vec<u8> {
    format!("acme_account:{directory_url}").into_bytes()
}

/// Sealing context of a TLS-ALPN-01 validation key.
fn acme_challenge_aad(id: Id) -> Vec<u8> {
    format!("acme_challenge:{id}").into_bytes()
}

#[async_trait]
impl AcmeStore for SqlStore {
    async fn acme_account(&self, directory_url: &str) -> Result<Option<Zeroizing<String>>> {
        let row =
            sqlx::query("SELECT credentials_sealed FROM acme_accounts WHERE directory_url = $1")
                .bind(directory_url.to_string())
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sealed: String = row.try_get("credentials_sealed")?;
        let plain = self.key.open(&sealed, &acme_account_aad(directory_url))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|e| StoreError::corrupt("acme_accounts.credentials_sealed", e))?;
        Ok(Some(Zeroizing::new(text)))
    }

    async fn save_acme_account(
        &self,
        actor: &Actor,
        directory_url: &str,
        contact: &[String],
        credentials: &str,
    ) -> Result<()> {
        if !(directory_url.starts_with("https://") || directory_url.starts_with("http://")) {
            return Err(StoreError::invalid(
                "directory_url",
                "must be an http(s) URL of an ACME directory",
            ));
        }
        let sealed = self
            .key
            .seal(credentials.as_bytes(), &acme_account_aad(directory_url))?;
        let contact = serde_json::to_string(contact).unwrap_or_default();
        let mut w = self.write(actor).await?;
        let existed = sqlx::query("SELECT 1 AS one FROM acme_accounts WHERE directory_url = $1")
            .bind(directory_url.to_string())
            .fetch_optional(w.conn())
            .await?
            .is_some();
        if existed {
            sqlx::query(
                "UPDATE acme_accounts SET contact = $1, credentials_sealed = $2, updated_at = $3 \
                 WHERE directory_url = $4",
            )
            .bind(contact.clone())
            .bind(sealed)
            .bind(w.now)
            .bind(directory_url.to_string())
            .execute(w.conn())
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO acme_accounts (directory_url, contact, credentials_sealed, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(directory_url.to_string())
            .bind(contact.clone())
            .bind(sealed)
            .bind(w.now)
            .execute(w.conn())
            .await?;
        }
        // Accounts have no entity of their own: the audit trail files them under certificates,
        // keyed by directory URL.
        w.event(
            Entity::Certificate,
            directory_url,
            if existed {
                "acme_account_updated"
            } else {
                "acme_account_created"
            },
            json!({"contact": serde_json::from_str::<Value>(&contact).unwrap_or(Value::Null)}),
        )
        .await?;
        w.commit().await
    }

    async fn add_acme_challenges(
        &self,
        actor: &Actor,
        challenges: Vec<NewAcmeChallenge>,
    ) -> Result<Vec<AcmeChallenge>> {
        if challenges.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(challenges.len());
        for challenge in &challenges {
            let name = HostPattern::new(&challenge.name)
                .map_err(|e| StoreError::model("name", e))?
                .to_string();
            let id = Uuid::new_v4();
            let (token, key_authorization, cert_pem, key_sealed) = match &challenge.answer {
                AcmeChallengeAnswer::Http01 {
                    token,
                    key_authorization,
                } => {
                    if token.is_empty()
                        || !token
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(StoreError::invalid("token", "must be base64url"));
                    }
                    (
                        Some(token.clone()),
                        Some(key_authorization.clone()),
                        None,
                        None,
                    )
                }
                AcmeChallengeAnswer::TlsAlpn01 { cert_pem } => {
                    let key = challenge.key_pem.as_deref().ok_or_else(|| {
                        StoreError::invalid("key_pem", "a TLS-ALPN-01 challenge needs its key")
                    })?;
                    let sealed = self.key.seal(key.as_bytes(), &acme_challenge_aad(id))?;
                    (None, None, Some(cert_pem.clone()), Some(sealed))
                }
            };
            rows.push((
                id,
                name,
                challenge,
                token,
                key_authorization,
                cert_pem,
                key_sealed,
            ));
        }
        let mut w = self.write(actor).await?;
        let mut ids = Vec::with_capacity(rows.len());
        for (id, name, challenge, token, key_authorization, cert_pem, key_sealed) in rows {
            fetch_certificate(w.conn(), challenge.certificate_id)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound { .. } => StoreError::invalid(
                        "certificate_id",
                        format!("unknown certificate {}", challenge.certificate_id),
                    ),
                    other => other,
                })?;
            sqlx::query(
                "INSERT INTO acme_challenges (id, certificate_id, kind, name, token, \
                 key_authorization, cert_pem, key_sealed, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(id.to_string())
            .bind(challenge.certificate_id.to_string())
            .bind(challenge.answer.kind())
            .bind(name.clone())
            .bind(token)
            .bind(key_authorization)
            .bind(cert_pem)
            .bind(key_sealed)
            .bind(w.now)
            .bind(add_ms(w.now, challenge.ttl))
            .execute(w.conn())
            .await
            .map_err(db_err)?;
            w.bump().await?;
            w.event(
                Entity::Certificate,
                &challenge.certificate_id.to_string(),
                "acme_challenge_added",
                json!({"name": name, "kind": challenge.answer.kind()}),
            )
            .await?;
            ids.push(id.to_string());
        }
        let now = w.now;
        let all = fetch_acme_challenges(w.conn(), now).await?;
        w.commit().await?;
        Ok(all
            .into_iter()
            .filter(|c| ids.contains(&c.id.to_string()))
            .collect())
    }

    async fn remove_acme_challenges(
        &self,
        actor: &Actor,
        certificate_id: Option<Id>,
    ) -> Result<u64> {
        let mut w = self.write(actor).await?;
        let done = match certificate_id {
            Some(id) => {
                sqlx::query("DELETE FROM acme_challenges WHERE certificate_id = $1")
                    .bind(id.to_string())
                    .execute(w.conn())
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM acme_challenges")
                    .execute(w.conn())
                    .await?
            }
        };
        let removed = done.rows_affected();
        if removed > 0 {
            w.bump().await?;
            w.event(
                Entity::Certificate,
                &certificate_id.map_or_else(|| "*".to_string(), |id| id.to_string()),
                "acme_challenges_removed",
                json!({"count": removed}),
            )
            .await?;
        }
        w.commit().await?;
        Ok(removed)
    }

    async fn list_acme_challenges(&self) -> Result<Vec<AcmeChallenge>> {
        fetch_acme_challenges(&mut *self.conn().await?, now_ms()).await
    }

    async fn acme_challenge_key(&self, id: Id) -> Result<Option<Zeroizing<String>>> {
        let row = sqlx::query("SELECT key_sealed FROM acme_challenges WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Certificate, id))?;
        let Some(sealed) = row.try_get::<Option<String>, _>("key_sealed")? else {
            return Ok(None);
        };
        let plain = self.key.open(&sealed, &acme_challenge_aad(id))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|e| StoreError::corrupt("acme_challenges.key_sealed", e))?;
        Ok(Some(Zeroizing::new(text)))
    }
}

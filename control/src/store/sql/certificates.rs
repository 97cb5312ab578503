//! [`CertificateStore`] on SQL: the `certificates` table; private keys sealed with the master key,
//! bound to the certificate's id.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::column::{ms_of, opt_ts, ts, uuid};
use super::write::db_err;
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::CertificateStore;

const CERT_COLS: &str =
    "id, names, source, chain_pem, issuer, not_after, last_error, created_at, updated_at";

fn cert_row(row: &AnyRow) -> Result<Certificate> {
    const T: &str = "certificates";
    let names: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("names")?)
        .map_err(|e| StoreError::corrupt(T, e))?;
    let source: String = row.try_get("source")?;
    Ok(Certificate {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        names,
        source: CertificateSource::parse(&source)
            .ok_or_else(|| StoreError::corrupt(T, format!("source {source:?}")))?,
        chain_pem: row.try_get("chain_pem")?,
        issuer: row.try_get("issuer")?,
        not_after: opt_ts(T, row.try_get("not_after")?)?,
        last_error: row.try_get("last_error")?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

pub(super) async fn fetch_certificate(conn: &mut AnyConnection, id: Id) -> Result<Certificate> {
    let row = sqlx::query(&format!(
        "SELECT {CERT_COLS} FROM certificates WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::Certificate, id))?;
    cert_row(&row)
}

pub(super) async fn fetch_certificates(conn: &mut AnyConnection) -> Result<Vec<Certificate>> {
    sqlx::query(&format!(
        "SELECT {CERT_COLS} FROM certificates ORDER BY names, id"
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(cert_row)
    .collect()
}

/// Parses `material` with the model's certificate parser, the one the edge applies it with: the
/// chain and key are PEM, the key belongs to the leaf, the leaf has DNS names. Errors name
/// `chain_pem` or `key_pem`.
fn parse_material(material: &CertificateMaterial) -> Result<kokoa_model::Certificate> {
    kokoa_model::Certificate::from_pem(&material.chain_pem, &material.key_pem)
        .map_err(|e| StoreError::model("", e))
}

/// Checks the certificate covers each of `names` (the ones expected of it); errors name
/// `names[i]`.
fn check_covers(cert: &kokoa_model::Certificate, names: &[HostPattern]) -> Result<()> {
    for (i, name) in names.iter().enumerate() {
        if !cert.covers(name) {
            let serves: Vec<&str> = cert.names().iter().map(HostPattern::as_str).collect();
            return Err(StoreError::invalid(
                format!("names[{i}]"),
                format!(
                    "the certificate does not cover {name}: it serves {} (the names come from \
                     its subjectAltName)",
                    serves.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The names of an ACME entry: at least one, sorted, without duplicates.
fn acme_names(names: &[HostPattern]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Err(StoreError::invalid(
            "names",
            "at least one DNS name is needed",
        ));
    }
    let set: BTreeSet<String> = names.iter().map(ToString::to_string).collect();
    Ok(set.into_iter().collect())
}

#[async_trait]
impl CertificateStore for SqlStore {
    async fn create_certificate(&self, actor: &Actor, new: NewCertificate) -> Result<Certificate> {
        let parsed = new.material.as_ref().map(parse_material).transpose()?;
        let names = match (new.source, &parsed) {
            (CertificateSource::Manual, None) => {
                return Err(StoreError::invalid(
                    "material",
                    "a manual certificate needs its PEM chain and key",
                ))
            }
            (CertificateSource::Manual, Some(cert)) => {
                let now = time::OffsetDateTime::now_utc();
                if cert.not_after() <= now {
                    return Err(StoreError::invalid(
                        "chain_pem",
                        format!(
                            "the certificate expired at {}; upload a current one",
                            cert.not_after()
                        ),
                    ));
                }
                check_covers(cert, &new.names)?;
                // Listed as the edge will serve it: by the certificate's own names (sorted,
                // like an ACME entry's).
                let names: BTreeSet<String> =
                    cert.names().iter().map(ToString::to_string).collect();
                names.into_iter().collect()
            }
            (CertificateSource::Acme, parsed) => {
                let names = acme_names(&new.names)?;
                if let Some(cert) = parsed {
                    check_covers(cert, &new.names)?;
                }
                names
            }
        };
        let id = Uuid::new_v4();
        let sealed = new
            .material
            .as_ref()
            .map(|m| {
                self.key
                    .seal(m.key_pem.as_bytes(), &Self::aad(Entity::Certificate, id))
            })
            .transpose()?;
        let mut w = self.write(actor).await?;
        sqlx::query(
            "INSERT INTO certificates (id, names, source, chain_pem, key_sealed, issuer, not_after, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(id.to_string())
        .bind(serde_json::to_string(&names).unwrap_or_default())
        .bind(new.source.as_str())
        .bind(new.material.as_ref().map(|m| m.chain_pem.clone()))
        .bind(sealed)
        .bind(parsed.as_ref().map(|c| c.issuer().to_owned()))
        .bind(parsed.as_ref().map(|c| ms_of(c.not_after())))
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        if new.material.is_some() {
            w.bump().await?;
        }
        w.event(
            Entity::Certificate,
            &id.to_string(),
            "created",
            json!({"names": names, "source": new.source.as_str(),
                   "issued": new.material.is_some()}),
        )
        .await?;
        let cert = fetch_certificate(w.conn(), id).await?;
        w.commit().await?;
        Ok(cert)
    }

    async fn list_certificates(&self) -> Result<Vec<Certificate>> {
        fetch_certificates(&mut *self.conn().await?).await
    }

    async fn get_certificate(&self, id: Id) -> Result<Certificate> {
        fetch_certificate(&mut *self.conn().await?, id).await
    }

    async fn certificate_key(&self, id: Id) -> Result<Option<Zeroizing<String>>> {
        let row = sqlx::query("SELECT key_sealed FROM certificates WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Certificate, id))?;
        let Some(sealed) = row.try_get::<Option<String>, _>("key_sealed")? else {
            return Ok(None);
        };
        let plain = self
            .key
            .open(&sealed, &Self::aad(Entity::Certificate, id))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|e| StoreError::corrupt("certificates.key_sealed", e))?;
        Ok(Some(Zeroizing::new(text)))
    }

    async fn set_certificate_material(
        &self,
        actor: &Actor,
        id: Id,
        material: CertificateMaterial,
    ) -> Result<Certificate> {
        let parsed = parse_material(&material)?;
        let sealed = self.key.seal(
            material.key_pem.as_bytes(),
            &Self::aad(Entity::Certificate, id),
        )?;
        let mut w = self.write(actor).await?;
        let entry = fetch_certificate(w.conn(), id).await?;
        let expected: Vec<HostPattern> = entry
            .names
            .iter()
            .filter_map(|name| HostPattern::new(name).ok())
            .collect();
        check_covers(&parsed, &expected)?;
        sqlx::query(
            "UPDATE certificates SET chain_pem = $1, key_sealed = $2, issuer = $3, not_after = $4, \
             last_error = NULL, updated_at = $5 WHERE id = $6",
        )
        .bind(material.chain_pem.clone())
        .bind(sealed)
        .bind(parsed.issuer().to_owned())
        .bind(ms_of(parsed.not_after()))
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await?;
        w.bump().await?;
        let not_after = parsed
            .not_after()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        w.event(
            Entity::Certificate,
            &id.to_string(),
            "issued",
            json!({"issuer": parsed.issuer(), "not_after": not_after}),
        )
        .await?;
        let cert = fetch_certificate(w.conn(), id).await?;
        w.commit().await?;
        Ok(cert)
    }

    async fn set_certificate_error(&self, actor: &Actor, id: Id, error: &str) -> Result<()> {
        let error: String = error.chars().take(4096).collect();
        let mut w = self.write(actor).await?;
        let done =
            sqlx::query("UPDATE certificates SET last_error = $1, updated_at = $2 WHERE id = $3")
                .bind(error.clone())
                .bind(w.now)
                .bind(id.to_string())
                .execute(w.conn())
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Certificate, id));
        }
        w.event(
            Entity::Certificate,
            &id.to_string(),
            "failed",
            json!({"error": error}),
        )
        .await?;
        w.commit().await
    }

    async fn delete_certificate(&self, actor: &Actor, id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let cert = fetch_certificate(w.conn(), id).await?;
        sqlx::query("DELETE FROM certificates WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        if cert.chain_pem.is_some() {
            w.bump().await?;
        }
        w.event(
            Entity::Certificate,
            &id.to_string(),
            "deleted",
            json!({"names": cert.names}),
        )
        .await?;
        w.commit().await
    }
}

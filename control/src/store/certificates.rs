//! [`CertificateStore`]: TLS certificates the edges serve, uploaded or issued by ACME, with
//! their private keys sealed.

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::error::Result;
use super::model::{Actor, Certificate, CertificateMaterial, Id, NewCertificate};

/// The certificates part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait CertificateStore: Send + Sync {
    /// Stores a certificate (its key sealed). Invalid for bad names or PEM.
    async fn create_certificate(&self, actor: &Actor, new: NewCertificate) -> Result<Certificate>;

    /// All certificates (without keys).
    async fn list_certificates(&self) -> Result<Vec<Certificate>>;

    /// One certificate.
    async fn get_certificate(&self, id: Id) -> Result<Certificate>;

    /// The certificate's PEM private key, unsealed (`None` until issued).
    async fn certificate_key(&self, id: Id) -> Result<Option<Zeroizing<String>>>;

    /// Installs an issued or renewed certificate and key; clears the last error.
    async fn set_certificate_material(
        &self,
        actor: &Actor,
        id: Id,
        material: CertificateMaterial,
    ) -> Result<Certificate>;

    /// Records an issuance or renewal failure.
    async fn set_certificate_error(&self, actor: &Actor, id: Id, error: &str) -> Result<()>;

    /// Deletes a certificate.
    async fn delete_certificate(&self, actor: &Actor, id: Id) -> Result<()>;
}

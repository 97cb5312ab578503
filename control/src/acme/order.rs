//! One ACME order, start to finish: new order, one challenge per authorization published where
//! the validator will look (edges through the store, or DNS), ready, poll, CSR, certificate.
//! Whatever happens, the published challenges are withdrawn before returning.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use time::OffsetDateTime;

use super::{AcmeError, CertificateManager, ChallengeKind, ACTOR};
use crate::dns::RecordData;
use crate::store::{
    AcmeChallengeAnswer, Certificate, CertificateMaterial, Id, NewAcmeChallenge, NodeId, NodeStatus,
};

/// How long edges may answer a challenge: the validation timeout plus a margin.
fn challenge_ttl(manager: &CertificateManager) -> Duration {
    manager.options.validation_timeout + Duration::from_secs(300)
}

/// A challenge picked for one authorization.
struct Picked {
    /// The authorization's name (`*.` for wildcards).
    name: String,
    /// The challenge type to set ready.
    kind: ChallengeType,
}

/// Everything published for the order, withdrawn at the end.
#[derive(Default)]
struct Published {
    store: bool,
    dns: Vec<(String, RecordData)>,
}

/// Runs the order for `cert` and returns the issued material.
pub(super) async fn obtain(
    manager: &CertificateManager,
    account: &Account,
    cert: &Certificate,
) -> Result<CertificateMaterial, AcmeError> {
    let mut published = Published::default();
    let result = run(manager, account, cert, &mut published).await;
    withdraw(manager, cert, published).await;
    result
}

async fn withdraw(manager: &CertificateManager, cert: &Certificate, published: Published) {
    if published.store {
        if let Err(error) = manager
            .store
            .remove_acme_challenges(&ACTOR, Some(cert.id))
            .await
        {
            tracing::warn!(%error, "could not remove the order's challenges; they expire on the edges");
        }
    }
    if let Some(dns) = &manager.dns {
        for (name, data) in published.dns {
            if let Err(error) = dns.remove_record(&name, &data).await {
                tracing::warn!(%error, name, "could not remove the DNS-01 record");
            }
        }
    }
}

fn offered(types: impl Iterator<Item = ChallengeType>) -> String {
    types
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn run(
    manager: &CertificateManager,
    account: &Account,
    cert: &Certificate,
    published: &mut Published,
) -> Result<CertificateMaterial, AcmeError> {
    let identifiers: Vec<Identifier> = cert
        .names
        .iter()
        .map(|name| Identifier::Dns(name.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    tracing::debug!(url = order.url(), "ACME order created");

    let mut picked = Vec::new();
    let mut edge_challenges = Vec::new();
    let mut dns_published = false;
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Validation {
                        name,
                        detail: format!("the authorization is {other:?}"),
                    })
                }
            }
            let wildcard = authz.identifier().wildcard;
            let base = match authz.identifier().identifier {
                Identifier::Dns(base) => base.clone(),
                other => {
                    return Err(AcmeError::Certificate(format!(
                        "unexpected identifier {other:?}"
                    )))
                }
            };
            let types: Vec<ChallengeType> =
                authz.challenges.iter().map(|c| c.r#type.clone()).collect();
            let kind = choose(manager, &name, wildcard, &types)?;
            let challenge =
                authz
                    .challenge(kind.clone())
                    .ok_or_else(|| AcmeError::NoUsableChallenge {
                        name: name.clone(),
                        offered: offered(types.iter().cloned()),
                    })?;
            let key_authorization = challenge.key_authorization();
            match kind {
                ChallengeType::Http01 => edge_challenges.push(NewAcmeChallenge {
                    certificate_id: cert.id,
                    name: base.clone(),
                    answer: AcmeChallengeAnswer::Http01 {
                        token: challenge.token.clone(),
                        key_authorization: key_authorization.as_str().to_owned(),
                    },
                    key_pem: None,
                    ttl: challenge_ttl(manager),
                }),
                ChallengeType::TlsAlpn01 => {
                    let (cert_pem, key_pem) = super::tls_alpn::validation_certificate(
                        &base,
                        key_authorization.digest().as_ref(),
                    )?;
                    edge_challenges.push(NewAcmeChallenge {
                        certificate_id: cert.id,
                        name: base.clone(),
                        answer: AcmeChallengeAnswer::TlsAlpn01 { cert_pem },
                        key_pem: Some(key_pem.to_string()),
                        ttl: challenge_ttl(manager),
                    });
                }
                _ => {
                    let dns = manager
                        .dns
                        .as_ref()
                        .ok_or_else(|| AcmeError::NoDnsProvider(name.clone()))?;
                    let record = format!("_acme-challenge.{base}");
                    let data = RecordData::Txt(key_authorization.dns_value());
                    dns.add_record(&record, &data, manager.options.dns_ttl)
                        .await?;
                    published.dns.push((record, data));
                    dns_published = true;
                }
            }
            tracing::info!(name, challenge = ?kind, "publishing ACME challenge");
            picked.push(Picked { name, kind });
        }
    }

    if !edge_challenges.is_empty() {
        published.store = true;
        manager
            .store
            .add_acme_challenges(&ACTOR, edge_challenges)
            .await?;
        wait_for_edges(manager).await?;
    }
    if dns_published && !manager.options.dns_propagation.is_zero() {
        tokio::time::sleep(manager.options.dns_propagation).await;
    }

    // Tell the CA to validate, in the order the authorizations came.
    {
        let mut index = 0;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            let name = authz.identifier().to_string();
            let Some(p) = picked.get(index).filter(|p| p.name == name) else {
                continue;
            };
            index += 1;
            let kind = p.kind.clone();
            if let Some(mut challenge) = authz.challenge(kind) {
                challenge.set_ready().await?;
            }
        }
    }

    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(manager.options.validation_timeout);
    let status = match order.poll_ready(&retries).await {
        Ok(status) => status,
        // The order itself carries the CA's verdict (e.g. the validator got a 404).
        Err(instant_acme::Error::Api(problem)) => {
            return Err(AcmeError::Validation {
                name: cert.names.join(", "),
                detail: problem.to_string(),
            })
        }
        Err(error) => return Err(error.into()),
    };
    if status != OrderStatus::Ready {
        return Err(validation_failure(&mut order).await);
    }

    let key = KeyPair::generate().map_err(|e| AcmeError::Certificate(e.to_string()))?;
    let mut params = CertificateParams::new(cert.names.clone())
        .map_err(|e| AcmeError::Certificate(format!("CSR names: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AcmeError::Certificate(format!("CSR: {e}")))?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&retries).await?;
    // The store reads names, issuer and expiry with the model's parser (the edge's) and
    // refuses a chain that does not match the key or the ordered names.
    Ok(CertificateMaterial {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The challenge for one authorization: DNS-01 for wildcards, otherwise the preferred kind
/// if offered, else HTTP-01, TLS-ALPN-01, then DNS-01 (when a provider exists).
fn choose(
    manager: &CertificateManager,
    name: &str,
    wildcard: bool,
    offered_types: &[ChallengeType],
) -> Result<ChallengeType, AcmeError> {
    let has = |t: &ChallengeType| offered_types.contains(t);
    if wildcard {
        if manager.dns.is_none() {
            return Err(AcmeError::NoDnsProvider(name.to_owned()));
        }
        return if has(&ChallengeType::Dns01) {
            Ok(ChallengeType::Dns01)
        } else {
            Err(AcmeError::NoUsableChallenge {
                name: name.to_owned(),
                offered: offered(offered_types.iter().cloned()),
            })
        };
    }
    let preferred = match manager.options.preferred_challenge {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    };
    if has(&preferred) && (preferred != ChallengeType::Dns01 || manager.dns.is_some()) {
        return Ok(preferred);
    }
    for fallback in [ChallengeType::Http01, ChallengeType::TlsAlpn01] {
        if has(&fallback) {
            return Ok(fallback);
        }
    }
    if has(&ChallengeType::Dns01) && manager.dns.is_some() {
        return Ok(ChallengeType::Dns01);
    }
    Err(AcmeError::NoUsableChallenge {
        name: name.to_owned(),
        offered: offered(offered_types.iter().cloned()),
    })
}

/// Waits until every edge the CA's validator may reach has applied the config version carrying
/// the new challenges, or `propagation_timeout` passes. Such an edge is one connected to this
/// control process now, whether or not it has sent a heartbeat yet (see
/// [`CertificateManager::watch_connected_nodes`]), or one with a heartbeat within the last
/// minute that is not unhealthy (it may be connected to another control replica).
async fn wait_for_edges(manager: &CertificateManager) -> Result<(), AcmeError> {
    let version = manager.store.config_version().await?;
    let deadline = Instant::now() + manager.options.propagation_timeout;
    loop {
        let lagging = lagging_edges(manager, version).await?;
        if lagging.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                ?lagging,
                version,
                "edges have not applied the ACME challenges yet; asking the CA to validate anyway"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The names of the edges that may be asked for a challenge but run a config older than
/// `version`.
pub(super) async fn lagging_edges(
    manager: &CertificateManager,
    version: u64,
) -> Result<Vec<String>, AcmeError> {
    let connected: HashMap<Id, Option<u64>> = manager
        .live
        .get()
        .map(|live| {
            live.connected()
                .into_iter()
                .filter_map(|node| match node.node {
                    NodeId::Edge(id) => Some((id, node.applied_version)),
                    NodeId::Origin(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    let edges = manager.store.list_edges().await?;
    Ok(edges
        .iter()
        .filter(|edge| {
            let live = connected.get(&edge.id);
            let reachable = live.is_some()
                || (edge.state.status != NodeStatus::Unhealthy
                    && edge
                        .state
                        .last_heartbeat
                        .is_some_and(|at| now - at < time::Duration::minutes(1)));
            let applied = edge.state.applied_version.max(live.copied().flatten());
            reachable && applied.unwrap_or(0) < version
        })
        .map(|edge| edge.name.clone())
        .collect())
}

/// The CA's reasons for an invalid order, from its authorizations' challenges.
async fn validation_failure(order: &mut instant_acme::Order) -> AcmeError {
    let mut reasons = Vec::new();
    if let Some(problem) = order.state().error.clone() {
        reasons.push(problem.to_string());
    }
    let mut authorizations = order.authorizations();
    let mut name = String::new();
    while let Some(authz) = authorizations.next().await {
        let Ok(mut authz) = authz else { continue };
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        if state.status == AuthorizationStatus::Valid {
            continue;
        }
        name = state.identifier().to_string();
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(format!("{:?}: {problem}", challenge.r#type));
            }
        }
    }
    if reasons.is_empty() {
        reasons.push("the order became invalid without a reason".into());
    }
    AcmeError::Validation {
        name,
        detail: reasons.join("; "),
    }
}

//! The one task that reads the store for all Watch streams.
//!
//! On every config version change (pushed by the store, or found by polling when another control
//! replica made it on a shared PostgreSQL database) it builds one [`SharedSnapshot`] and
//! publishes it on a watch channel; every stream filters it for its node. It also refreshes the
//! set of valid node credentials on each change and each poll tick, so a revoked credential's
//! stream is closed without each stream querying the database.
//!
//! Private keys are unsealed once and cached by (node, public key) and (certificate, update
//! time): a version change re-reads only keys that changed, so 200 edges cost 200 key reads at
//! startup and none per route change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use kokoa_proto::v1 as pb;
use kokoa_tunnel::key::PublicKey;
use time::OffsetDateTime;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::snapshot::SharedSnapshot;
use super::Inner;
use crate::store::{AcmeChallengeAnswer, Id, NodeId, NodeTokenKind, Store, StoreError};

/// The node credentials valid at some moment.
#[derive(Debug)]
pub(crate) struct Credentials {
    /// When the query that produced this set started: a stream that authenticated before this
    /// moment and whose credential is missing has been revoked.
    pub(crate) checked_at: Instant,
    /// Ids of valid (unrevoked, unexpired) credential tokens.
    pub(crate) valid: HashSet<Id>,
}

impl Credentials {
    /// True when this set proves that `token`, which authenticated at `auth_at`, is no longer
    /// valid.
    pub(crate) fn revokes(&self, token: Id, auth_at: Instant) -> bool {
        self.checked_at > auth_at && !self.valid.contains(&token)
    }
}

/// Channels the hub publishes on.
#[derive(Debug)]
pub(crate) struct Channels {
    pub(crate) snapshots: watch::Sender<Option<Arc<SharedSnapshot>>>,
    pub(crate) credentials: watch::Sender<Option<Arc<Credentials>>>,
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            snapshots: watch::channel(None).0,
            credentials: watch::channel(None).0,
        }
    }
}

type CachedKey = Option<Arc<Zeroizing<String>>>;

#[derive(Default)]
struct KeyCache {
    nodes: HashMap<NodeId, (PublicKey, CachedKey)>,
    certificates: HashMap<Id, (OffsetDateTime, CachedKey)>,
}

/// Runs until `shutdown` becomes true.
pub(crate) async fn run(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let store = inner.store.clone();
    let mut versions = store.subscribe_config_version();
    let mut pushed = true;
    let mut tick = tokio::time::interval(inner.options.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keys = KeyCache::default();
    loop {
        let published = inner.hub.snapshots.borrow().as_ref().map(|s| s.version());
        let current = match store.config_version().await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the config version; retrying at the next poll");
                None
            }
        };
        if current.is_some() && current != published {
            // Credentials first: a stream checks them before it sends the new snapshot.
            let (creds, built) = tokio::join!(
                refresh_credentials(&inner),
                build(
                    inner.store.as_ref(),
                    inner.options.heartbeat_interval_seconds(),
                    &mut keys
                )
            );
            if let Some(creds) = creds {
                inner.hub.credentials.send_replace(Some(Arc::new(creds)));
            }
            match built {
                Ok(shared) => {
                    let version = shared.version();
                    if published.is_none_or(|p| version > p) {
                        tracing::debug!(version, "publishing config snapshot");
                        inner.hub.snapshots.send_replace(Some(Arc::new(shared)));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the config snapshot; retrying at the next poll")
                }
            }
        } else if let Some(creds) = refresh_credentials(&inner).await {
            inner.hub.credentials.send_replace(Some(Arc::new(creds)));
        }
        tokio::select! {
            changed = versions.changed(), if pushed => {
                if changed.is_err() {
                    // The store is gone from this process; polling still works.
                    pushed = false;
                }
            }
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

async fn refresh_credentials(inner: &Inner) -> Option<Credentials> {
    let checked_at = Instant::now();
    match inner.store.list_node_tokens(None).await {
        Ok(tokens) => {
            let now = OffsetDateTime::now_utc();
            let valid = tokens
                .into_iter()
                .filter(|t| {
                    t.kind == NodeTokenKind::Credential
                        && t.revoked_at.is_none()
                        && t.expires_at.is_none_or(|e| e > now)
                })
                .map(|t| t.id)
                .collect();
            Some(Credentials { checked_at, valid })
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list node credentials; keeping the last set");
            None
        }
    }
}

/// The shared snapshot of the store's current config version, built exactly as the hub builds
/// it for every Watch stream (keys unsealed without the hub's cache). For tools and tests that
/// need what nodes would receive without running the gRPC server.
pub async fn shared_snapshot(
    store: &dyn Store,
    heartbeat_interval_seconds: u32,
) -> Result<SharedSnapshot, StoreError> {
    build(store, heartbeat_interval_seconds, &mut KeyCache::default()).await
}

async fn build(
    store: &dyn Store,
    heartbeat_interval_seconds: u32,
    keys: &mut KeyCache,
) -> Result<SharedSnapshot, StoreError> {
    let started = Instant::now();
    let snapshot = store.snapshot().await?;
    let mut shared = SharedSnapshot::new(snapshot, heartbeat_interval_seconds);

    let managed: Vec<(NodeId, PublicKey)> = shared
        .store
        .edges
        .iter()
        .filter(|e| e.managed_key)
        .map(|e| (NodeId::Edge(e.id), e.public_key))
        .chain(
            shared
                .store
                .origins
                .iter()
                .filter(|o| o.managed_key)
                .map(|o| (NodeId::Origin(o.id), o.public_key)),
        )
        .collect();
    let present: HashSet<NodeId> = managed.iter().map(|(node, _)| *node).collect();
    let mut node_keys = HashMap::with_capacity(managed.len());
    for (node, public_key) in managed {
        let cached = match keys.nodes.get(&node) {
            Some((pk, key)) if *pk == public_key => key.clone(),
            _ => {
                let key = match node {
                    NodeId::Edge(id) => store.edge_private_key(id).await,
                    NodeId::Origin(id) => store.origin_private_key(id).await,
                };
                let key = match key {
                    Ok(Some(key)) if key.public_key() == public_key => {
                        Some(Arc::new(Zeroizing::new(key.to_base64())))
                    }
                    // Rotated again since the snapshot was read: the next version has it.
                    Ok(_) => None,
                    Err(e @ StoreError::Database(_)) => return Err(e),
                    // The node can still run from its local key file; do not block every
                    // other node's config on one unreadable key.
                    Err(e) => {
                        tracing::error!(?node, error = %e, "cannot unseal a node's private key; its snapshot goes out without it");
                        None
                    }
                };
                keys.nodes.insert(node, (public_key, key.clone()));
                key
            }
        };
        if let Some(key) = cached {
            node_keys.insert(node, key);
        }
    }
    keys.nodes.retain(|node, _| present.contains(node));
    shared.node_keys = node_keys;

    let mut certificate_keys = HashMap::new();
    let issued: Vec<(Id, OffsetDateTime)> = shared
        .store
        .certificates
        .iter()
        .filter(|c| c.chain_pem.is_some())
        .map(|c| (c.id, c.updated_at))
        .collect();
    let present: HashSet<Id> = issued.iter().map(|(id, _)| *id).collect();
    for (id, updated_at) in issued {
        let cached = match keys.certificates.get(&id) {
            Some((at, key)) if *at == updated_at => key.clone(),
            _ => {
                let key = match store.certificate_key(id).await {
                    Ok(key) => key.map(Arc::new),
                    Err(e @ StoreError::Database(_)) => return Err(e),
                    Err(e) => {
                        tracing::error!(certificate = %id, error = %e, "cannot unseal a certificate key; edges do not get this certificate");
                        None
                    }
                };
                keys.certificates.insert(id, (updated_at, key.clone()));
                key
            }
        };
        if let Some(key) = cached {
            certificate_keys.insert(id, key);
        }
    }
    keys.certificates.retain(|id, _| present.contains(id));
    shared.certificate_keys = certificate_keys;

    // Pending ACME challenges of orders in progress (helper F's certificate manager): every
    // edge gets them, since the CA's validator may reach any edge the name points at.
    for challenge in &shared.store.acme_challenges {
        match &challenge.answer {
            AcmeChallengeAnswer::Http01 {
                token,
                key_authorization,
            } => shared.acme_http_challenges.push(pb::AcmeHttpChallenge {
                token: token.clone(),
                key_authorization: key_authorization.clone(),
            }),
            AcmeChallengeAnswer::TlsAlpn01 { cert_pem } => {
                match store.acme_challenge_key(challenge.id).await {
                    Ok(Some(key)) => {
                        shared
                            .acme_tls_alpn_challenges
                            .push(pb::AcmeTlsAlpnChallenge {
                                name: challenge.name.clone(),
                                cert_pem: cert_pem.clone(),
                                key_pem: key.as_str().to_owned(),
                            })
                    }
                    // Withdrawn since the snapshot was read: the next version drops it too.
                    Ok(None) | Err(StoreError::NotFound { .. }) => {}
                    Err(e @ StoreError::Database(_)) => return Err(e),
                    Err(e) => {
                        tracing::error!(challenge = %challenge.id, error = %e, "cannot unseal an ACME challenge key; edges do not get it")
                    }
                }
            }
        }
    }

    tracing::debug!(
        version = shared.version(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "built config snapshot"
    );
    Ok(shared)
}

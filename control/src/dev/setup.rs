//! What `kokoa-control dev` asks control for, through the REST API as an operator would: an
//! origin, its sample-app service, an edge serving it, a route, a certificate from a dev CA,
//! and the two nodes' bundles. Every step first looks at what exists, so a second run in the
//! same directory changes only what differs (a new port, say) and keeps everything else,
//! including routes added meanwhile.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hyper::Method;
use serde_json::{json, Value};

use super::DevOptions;
use crate::cli::client::{segment, ApiClient};
use crate::serve;
use crate::store::{self, Actor, MasterKey};

/// The dev origin's name.
pub const ORIGIN: &str = "home";
/// The sample app's service name.
pub const SERVICE: &str = "sample-app";
/// The dev edge's name.
pub const EDGE: &str = "dev-edge";
/// The sample app's port inside the tunnel.
pub const SERVICE_PORT: u16 = 8001;

/// What [`apply`] prepared: the node configs to start, and the parent domain the dev
/// certificate covers with a wildcard (new routes under it get valid HTTPS at once).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The edge's bootstrap config (from its bundle, listeners on loopback).
    pub edge_config: PathBuf,
    /// The origin's bootstrap config.
    pub origin_config: PathBuf,
    /// `kokoa.localhost` for the default host: the certificate covers `*.kokoa.localhost`.
    pub wildcard_parent: Option<String>,
}

/// The API token in `token_file`, or a new one made on the database directly (as `token
/// create` does) and saved there (mode 0600).
pub async fn api_token(data_dir: &Path, token_file: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(token_file) {
        if !text.trim().is_empty() {
            return Ok(text.trim().to_owned());
        }
    }
    serve::create_data_dir(data_dir)?;
    let url = serve::database_url(data_dir, None);
    // Tokens are stored hashed, never sealed: a throwaway key opens the database for this.
    let store = store::open(&url, MasterKey::generate())
        .await
        .with_context(|| format!("cannot open the dev store at {url}"))?;
    let name = format!("dev-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let issued = store.create_api_token(&Actor::Cli, &name, None).await?;
    let secret = issued.secret.expose().to_owned();
    write_private(token_file, format!("{secret}\n").as_bytes())?;
    Ok(secret)
}

/// Waits until the REST API answers an authenticated request.
pub async fn wait_for_api(api: &ApiClient, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match api.get::<Value>("/status").await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                return Err(error).context("control's REST API never came up")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until every node is connected and runs the current config version.
pub async fn wait_in_sync(api: &ApiClient, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let status: Value = api.get("/status").await?;
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        let ready = nodes.len() >= 2
            && nodes
                .iter()
                .all(|n| n["connected"] == json!(true) && n["in_sync"] == json!(true));
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the nodes did not apply control's config within {timeout:?}: {}",
                serde_json::to_string(&status["nodes"]).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes control hold the dev setup (creating or updating only what differs) and writes the
/// nodes' configs.
pub async fn apply(api: &ApiClient, options: &DevOptions) -> anyhow::Result<Plan> {
    ensure_origin(api).await?;
    ensure_service(api, options).await?;
    ensure_edge(api, options).await?;
    ensure_route(api, &options.host).await?;
    let wildcard_parent = ensure_certificate(api, options).await?;
    let edge_dir = options.dir.join("edge");
    let origin_dir = options.dir.join("origin");
    let edge_config = node_config(api, options, "edge", &edge_dir).await?;
    let origin_config = node_config(api, options, "origin", &origin_dir).await?;
    Ok(Plan {
        edge_config,
        origin_config,
        wildcard_parent,
    })
}

async fn find_named(
    api: &ApiClient,
    path: &str,
    field: &str,
    name: &str,
) -> anyhow::Result<Option<Value>> {
    let list: Vec<Value> = api.get(path).await?;
    Ok(list.into_iter().find(|item| item[field] == json!(name)))
}

async fn ensure_origin(api: &ApiClient) -> anyhow::Result<()> {
    if find_named(api, "/origins", "name", ORIGIN).await?.is_none() {
        let _: Value = api.post("/origins", &json!({ "name": ORIGIN })).await?;
    }
    Ok(())
}

async fn ensure_service(api: &ApiClient, options: &DevOptions) -> anyhow::Result<()> {
    let local = options.app_address();
    let services = format!("/origins/{}/services", segment(ORIGIN));
    match find_named(api, &services, "name", SERVICE).await? {
        None => {
            let _: Value = api
                .post(
                    &services,
                    &json!({
                        "name": SERVICE, "port": SERVICE_PORT, "protocol": "http",
                        "local_address": local, "health_path": "/",
                    }),
                )
                .await?;
        }
        Some(service) if service["local_address"] != json!(local) => {
            let _: Value = api
                .json(
                    Method::PATCH,
                    &format!("{services}/{}", segment(SERVICE)),
                    &json!({ "local_address": local }),
                )
                .await?;
        }
        Some(_) => {}
    }
    Ok(())
}

async fn ensure_edge(api: &ApiClient, options: &DevOptions) -> anyhow::Result<()> {
    let endpoint = options.edge_endpoint();
    match find_named(api, "/edge-nodes", "name", EDGE).await? {
        None => {
            let _: Value = api
                .post(
                    "/edge-nodes",
                    &json!({ "name": EDGE, "endpoint": endpoint, "origins": [ORIGIN] }),
                )
                .await?;
        }
        Some(edge) => {
            if edge["endpoint"] != json!(endpoint) {
                let _: Value = api
                    .json(
                        Method::PATCH,
                        &format!("/edge-nodes/{}", segment(EDGE)),
                        &json!({ "endpoint": endpoint }),
                    )
                    .await?;
            }
            let serves = edge["origins"]
                .as_array()
                .is_some_and(|o| o.iter().any(|a| a["origin"] == json!(ORIGIN)));
            if !serves {
                let _: Value = api
                    .json(
                        Method::PUT,
                        &format!("/edge-nodes/{}/origins/{}", segment(EDGE), segment(ORIGIN)),
                        &json!({}),
                    )
                    .await?;
            }
        }
    }
    Ok(())
}

async fn ensure_route(api: &ApiClient, host: &str) -> anyhow::Result<()> {
    if find_named(api, "/routes", "hostname", host)
        .await?
        .is_none()
    {
        let _: Value = api
            .post(
                "/routes",
                &json!({ "hostname": host, "origin": ORIGIN, "service": SERVICE }),
            )
            .await?;
    }
    Ok(())
}

/// The parent domain a wildcard certificate can cover for the dev host (`app.kokoa.localhost` ->
/// `kokoa.localhost`): it needs two labels, as control refuses `*.localhost`.
fn wildcard_parent(host: &str) -> Option<String> {
    match host.split_once('.') {
        Some((_, parent)) if parent.contains('.') => Some(parent.to_owned()),
        _ => None,
    }
}

/// Uploads a certificate for the dev host and, when it has one, `*.PARENT`, signed by a dev CA
/// saved as `dev-ca.pem` (so `curl --cacert` verifies it), unless a previous run did. The
/// wildcard's parent domain is returned.
async fn ensure_certificate(
    api: &ApiClient,
    options: &DevOptions,
) -> anyhow::Result<Option<String>> {
    let parent = wildcard_parent(&options.host);
    let mut names = vec![options.host.clone()];
    if let Some(parent) = &parent {
        names.insert(0, format!("*.{parent}"));
    }
    let certificates: Vec<Value> = api.get("/certificates").await?;
    let uploaded = certificates.iter().any(|c| {
        c["names"]
            .as_array()
            .is_some_and(|have| names.iter().all(|n| have.contains(&json!(n))))
    });
    if uploaded && options.ca_file().is_file() {
        return Ok(parent);
    }
    let (ca_pem, chain_pem, key_pem) = dev_certificate(&names)?;
    let _: Value = api
        .post(
            "/certificates",
            &json!({ "chain_pem": chain_pem, "key_pem": key_pem }),
        )
        .await
        .context("uploading the dev certificate")?;
    std::fs::write(options.ca_file(), ca_pem)
        .with_context(|| format!("writing {}", options.ca_file().display()))?;
    Ok(parent)
}

/// A dev CA and a leaf for `names` it signed: (CA PEM, leaf PEM, leaf key PEM).
fn dev_certificate(names: &[String]) -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Kokoa dev CA (kokoa-control dev)");
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(names.to_vec())?;
    leaf_params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
    Ok((ca.pem(), leaf.pem(), leaf_key.serialize_pem()))
}

/// Writes the node's config in `dir`: from its bundle when the node has not enrolled yet (the
/// bundle brings the CA and a one-time token), then always with this run's loopback listeners
/// and control URL.
async fn node_config(
    api: &ApiClient,
    options: &DevOptions,
    kind: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let (dir, external) = match &options.bundles_to {
        Some(bundles) => (bundles.join(kind), true),
        None => (dir.to_path_buf(), false),
    };
    let dir = dir.as_path();
    let config = dir.join(format!("{kind}.toml"));
    let state = dir.join("state");
    let enrolled = state.join(kokoa_node::control::CREDENTIAL_FILE).is_file();
    // Nodes elsewhere may have lost their state (a recreated container): always a fresh token.
    if external || !enrolled || !config.is_file() {
        let (collection, name) = match kind {
            "edge" => ("edge-nodes", EDGE),
            _ => ("origins", ORIGIN),
        };
        let bundle = api
            .call(
                Method::GET,
                &format!("/{collection}/{}/bundle", segment(name)),
                None,
            )
            .await
            .with_context(|| format!("downloading the {kind}'s bundle"))?;
        unpack_bundle(&bundle, dir)?;
    }
    if external {
        // As the bundle says (listeners on every interface of the node's own host).
        return Ok(config);
    }
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", config.display()))?;
    let loopback = |port: u16| toml::Value::String(format!("127.0.0.1:{port}"));
    let section = |table: &mut toml::Table, name: &str| -> anyhow::Result<toml::Table> {
        Ok(table
            .remove(name)
            .map(|v| v.try_into())
            .transpose()?
            .unwrap_or_default())
    };
    let mut node = section(&mut table, kind)?;
    let mut tunnel = section(&mut table, "tunnel")?;
    let mut control = section(&mut table, "control")?;
    if kind == "edge" {
        node.insert("https".into(), loopback(options.https_port));
        node.insert("http".into(), loopback(options.http_port));
        node.insert("admin".into(), loopback(options.admin_port));
        node.insert(
            "https_port_in_redirect".into(),
            i64::from(options.https_port).into(),
        );
        tunnel.insert("listen".into(), loopback(options.tunnel_port));
    } else {
        node.insert("admin".into(), loopback(options.admin_port + 1));
        tunnel.insert("listen".into(), "127.0.0.1:0".into());
    }
    node.insert("drain_timeout".into(), 2.into());
    control.insert(
        "url".into(),
        format!("https://127.0.0.1:{}", options.grpc_port).into(),
    );
    control.insert("state_dir".into(), "state".into());
    table.insert(kind.into(), node.into());
    table.insert("tunnel".into(), tunnel.into());
    table.insert("control".into(), control.into());
    let text = format!(
        "# Written by `kokoa-control dev` from the {kind}'s bundle, with loopback listeners.\n{}",
        toml::to_string(&table)?
    );
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    Ok(config)
}

/// Unpacks a bundle's files (without its top directory) into `dir`.
fn unpack_bundle(bytes: &[u8], dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(name) = path.file_name() else {
            continue;
        };
        let mode = entry.header().mode().unwrap_or(0o644);
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents)?;
        let target = dir.join(name);
        if mode & 0o077 == 0 {
            write_private(&target, &contents)?;
        } else {
            std::fs::write(&target, &contents)
                .with_context(|| format!("writing {}", target.display()))?;
        }
    }
    Ok(())
}

/// Writes a file only its owner can read (tokens).
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wildcard_covers_the_dev_host_when_control_allows_one() {
        assert_eq!(
            wildcard_parent("app.kokoa.localhost").as_deref(),
            Some("kokoa.localhost")
        );
        assert_eq!(wildcard_parent("app.localhost"), None);
        assert_eq!(wildcard_parent("localhost"), None);
    }

    #[test]
    fn the_dev_certificate_is_signed_by_the_dev_ca() {
        let (ca, leaf, key) =
            dev_certificate(&["*.kokoa.localhost".into(), "app.kokoa.localhost".into()])
                .expect("certificate");
        assert!(ca.contains("BEGIN CERTIFICATE"));
        assert!(leaf.contains("BEGIN CERTIFICATE"));
        assert!(key.contains("PRIVATE KEY"));
        assert_ne!(ca, leaf);
    }
}

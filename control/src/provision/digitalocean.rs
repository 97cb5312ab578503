//! `--provisioner digitalocean`: Droplets through DigitalOcean's API v2
//! (`https://api.digitalocean.com/v2`, `Authorization: Bearer TOKEN`):
//!
//! - create: `POST /v2/droplets` `{name, region, size, image, user_data, ssh_keys, tags}` ->
//!   `202 {"droplet": {"id": 3164444, "status": "new", "networks": {"v4": []}, ...}}`;
//! - status: `GET /v2/droplets/{id}` -> `{"droplet": {..., "status": "active", "networks":
//!   {"v4": [{"ip_address": "...", "type": "public"}]}}}`, 404 when gone;
//! - destroy: `DELETE /v2/droplets/{id}` -> 204 (404: already gone);
//! - find: `GET /v2/droplets?name=NAME` -> `{"droplets": [...]}`.
//!
//! Errors are `{"id": "unauthorized", "message": "..."}` with 401, 422, 429 (rate limit), ...

use std::net::IpAddr;

use async_trait::async_trait;
use hyper::Method;
use serde_json::{json, Value};

use super::cloud::{Api, CloudSettings};
use super::cloud_init::user_data;
use super::{host_name, Instance, InstanceSpec, InstanceStatus, ProvisionError, Provisioner};
use crate::bundle::DEFAULT_EDGE_TUNNEL_PORT;
use crate::dns::http::query_escape;

/// The API's base URL.
pub const API_URL: &str = "https://api.digitalocean.com/v2";
/// Default region.
pub const DEFAULT_REGION: &str = "fra1";
/// Default size.
pub const DEFAULT_SIZE: &str = "s-1vcpu-1gb";
/// Default image.
pub const DEFAULT_IMAGE: &str = "ubuntu-24-04-x64";
/// The tag every Droplet made by Kokoa carries.
pub const TAG: &str = "kokoa-edge";

/// The DigitalOcean provisioner.
#[derive(Debug)]
pub struct DigitalOcean {
    api: Api,
    settings: CloudSettings,
}

impl DigitalOcean {
    /// A provisioner with `settings`.
    pub fn new(settings: CloudSettings) -> Result<Self, ProvisionError> {
        Ok(DigitalOcean {
            api: Api::new("digitalocean", &settings)?,
            settings,
        })
    }

    fn instance(&self, droplet: &Value) -> Result<Instance, ProvisionError> {
        let id = match &droplet["id"] {
            Value::Number(n) => n.to_string(),
            other => {
                return Err(self
                    .api
                    .unexpected(format!("a droplet without a numeric id: {other}")))
            }
        };
        let public_ip = droplet["networks"]["v4"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "public")
            .and_then(|n| n["ip_address"].as_str())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let status = match droplet["status"].as_str() {
            Some("new") => InstanceStatus::Starting,
            Some("active") => InstanceStatus::Running,
            Some("off" | "archive") => InstanceStatus::Gone,
            other => {
                return Err(self
                    .api
                    .unexpected(format!("droplet {id} has status {other:?}")))
            }
        };
        Ok(Instance {
            id,
            public_ip,
            endpoint: public_ip
                .map(|ip| std::net::SocketAddr::new(ip, DEFAULT_EDGE_TUNNEL_PORT).to_string()),
            admin_address: None,
            status,
        })
    }

    fn check_id(&self, id: &str) -> Result<(), ProvisionError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProvisionError::Config(format!(
                "{id:?} is not a DigitalOcean droplet id"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Provisioner for DigitalOcean {
    fn kind(&self) -> &'static str {
        "digitalocean"
    }

    fn defaults(&self) -> (Option<String>, Option<String>, Option<String>) {
        (
            Some(self.settings.region.clone()),
            Some(self.settings.size.clone()),
            Some(self.settings.image.clone()),
        )
    }

    async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProvisionError> {
        let s = &self.settings;
        let body = json!({
            "name": host_name(&spec.name),
            "region": spec.region.as_deref().unwrap_or(&s.region),
            "size": spec.size.as_deref().unwrap_or(&s.size),
            "image": spec.image.as_deref().unwrap_or(&s.image),
            "ssh_keys": s.ssh_keys,
            "user_data": user_data(&spec.name, &spec.bundle, s.release.as_ref()),
            "tags": [TAG],
            "ipv6": false,
            "monitoring": false,
        });
        let (status, answer) = self
            .api
            .call(Method::POST, "/droplets", Some(&body))
            .await?;
        if status == 404 {
            return Err(self.api.unexpected("POST /droplets answered 404"));
        }
        self.instance(&answer["droplet"])
    }

    async fn status(&self, id: &str) -> Result<Instance, ProvisionError> {
        self.check_id(id)?;
        let (status, answer) = self
            .api
            .call(Method::GET, &format!("/droplets/{id}"), None)
            .await?;
        if status == 404 {
            return Ok(Instance {
                id: id.to_owned(),
                public_ip: None,
                endpoint: None,
                admin_address: None,
                status: InstanceStatus::Gone,
            });
        }
        self.instance(&answer["droplet"])
    }

    async fn destroy(&self, id: &str) -> Result<(), ProvisionError> {
        self.check_id(id)?;
        self.api
            .call(Method::DELETE, &format!("/droplets/{id}"), None)
            .await?;
        Ok(())
    }

    async fn find(&self, name: &str) -> Result<Option<Instance>, ProvisionError> {
        let name = host_name(name);
        let (_, answer) = self
            .api
            .call(
                Method::GET,
                &format!("/droplets?name={}&per_page=200", query_escape(&name)),
                None,
            )
            .await?;
        let droplets = answer["droplets"].as_array().ok_or_else(|| {
            self.api
                .unexpected("the droplet list has no \"droplets\" array")
        })?;
        droplets
            .iter()
            .find(|d| d["name"] == name.as_str())
            .map(|d| self.instance(d))
            .transpose()
    }
}

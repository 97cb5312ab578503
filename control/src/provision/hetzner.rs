//! `--provisioner hetzner`: servers through the Hetzner Cloud API (`https://api.hetzner.cloud/v1`,
//! `Authorization: Bearer TOKEN`):
//!
//! - create: `POST /v1/servers` `{name, server_type, image, location, user_data, ssh_keys,
//!   labels, start_after_create}` -> `201 {"server": {"id": 42, "status": "initializing",
//!   "public_net": {"ipv4": {"ip": "..."}}}, "action": {...}, ...}`;
//! - status: `GET /v1/servers/{id}` -> `{"server": {..., "status": "running"}}`, 404 when gone;
//! - destroy: `DELETE /v1/servers/{id}` -> `200 {"action": {...}}` (404: already gone);
//! - find: `GET /v1/servers?name=NAME` -> `{"servers": [...], "meta": {...}}`.
//!
//! Errors are `{"error": {"code": "unauthorized", "message": "..."}}` with 401, 409
//! (`uniqueness_error`), 422 (`invalid_input`), 429 (`rate_limit_exceeded`), ...

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
pub const API_URL: &str = "https://api.hetzner.cloud/v1";
/// Default location.
pub const DEFAULT_LOCATION: &str = "nbg1";
/// Default server type.
pub const DEFAULT_SERVER_TYPE: &str = "cx22";
/// Default image.
pub const DEFAULT_IMAGE: &str = "ubuntu-24.04";

/// The Hetzner Cloud provisioner.
#[derive(Debug)]
pub struct Hetzner {
    api: Api,
    settings: CloudSettings,
}

impl Hetzner {
    /// A provisioner with `settings`.
    pub fn new(settings: CloudSettings) -> Result<Self, ProvisionError> {
        Ok(Hetzner {
            api: Api::new("hetzner", &settings)?,
            settings,
        })
    }

    fn instance(&self, server: &Value) -> Result<Instance, ProvisionError> {
        let id = match &server["id"] {
            Value::Number(n) => n.to_string(),
            other => {
                return Err(self
                    .api
                    .unexpected(format!("a server without a numeric id: {other}")))
            }
        };
        let public_ip = server["public_net"]["ipv4"]["ip"]
            .as_str()
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let status = match server["status"].as_str() {
            Some("initializing" | "starting") => InstanceStatus::Starting,
            Some("running") => InstanceStatus::Running,
            Some("stopping" | "off" | "deleting" | "migrating" | "rebuilding" | "unknown") => {
                InstanceStatus::Gone
            }
            other => {
                return Err(self
                    .api
                    .unexpected(format!("server {id} has status {other:?}")))
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
                "{id:?} is not a Hetzner server id"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Provisioner for Hetzner {
    fn kind(&self) -> &'static str {
        "hetzner"
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
            "server_type": spec.size.as_deref().unwrap_or(&s.size),
            "image": spec.image.as_deref().unwrap_or(&s.image),
            "location": spec.region.as_deref().unwrap_or(&s.region),
            "user_data": user_data(&spec.name, &spec.bundle, s.release.as_ref()),
            "ssh_keys": s.ssh_keys,
            "labels": {"kokoa": "edge"},
            "start_after_create": true,
        });
        let (status, answer) = self.api.call(Method::POST, "/servers", Some(&body)).await?;
        if status == 404 {
            return Err(self.api.unexpected("POST /servers answered 404"));
        }
        self.instance(&answer["server"])
    }

    async fn status(&self, id: &str) -> Result<Instance, ProvisionError> {
        self.check_id(id)?;
        let (status, answer) = self
            .api
            .call(Method::GET, &format!("/servers/{id}"), None)
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
        self.instance(&answer["server"])
    }

    async fn destroy(&self, id: &str) -> Result<(), ProvisionError> {
        self.check_id(id)?;
        self.api
            .call(Method::DELETE, &format!("/servers/{id}"), None)
            .await?;
        Ok(())
    }

    async fn find(&self, name: &str) -> Result<Option<Instance>, ProvisionError> {
        let name = host_name(name);
        let (_, answer) = self
            .api
            .call(
                Method::GET,
                &format!("/servers?name={}", query_escape(&name)),
                None,
            )
            .await?;
        let servers = answer["servers"].as_array().ok_or_else(|| {
            self.api
                .unexpected("the server list has no \"servers\" array")
        })?;
        servers
            .iter()
            .find(|s| s["name"] == name.as_str())
            .map(|s| self.instance(s))
            .transpose()
    }
}

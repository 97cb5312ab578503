//! `--provisioner vultr`: instances through Vultr's API v2 (`https://api.vultr.com/v2`,
//! `Authorization: Bearer KEY`):
//!
//! - create: `POST /v2/instances` `{region, plan, os_id | image_id, label, hostname,
//!   user_data (base64), sshkey_id, tags}` -> `202 {"instance": {"id": "UUID", "main_ip":
//!   "0.0.0.0", "status": "pending", ...}}`;
//! - status: `GET /v2/instances/{id}` -> `{"instance": {..., "status": "active", "main_ip":
//!   "..."}}`, 404 when gone;
//! - destroy: `DELETE /v2/instances/{id}` -> 204 (404: already gone);
//! - find: `GET /v2/instances?label=NAME` -> `{"instances": [...], "meta": {...}}`.
//!
//! Errors are `{"error": "...", "status": 401}`. `main_ip` is `0.0.0.0` until one is assigned.

use std::net::IpAddr;

use async_trait::async_trait;
use base64::Engine as _;
use hyper::Method;
use serde_json::{json, Value};

use super::cloud::{Api, CloudSettings};
use super::cloud_init::user_data;
use super::{host_name, Instance, InstanceSpec, InstanceStatus, ProvisionError, Provisioner};
use crate::bundle::DEFAULT_EDGE_TUNNEL_PORT;
use crate::dns::http::query_escape;

/// The API's base URL.
pub const API_URL: &str = "https://api.vultr.com/v2";
/// Default region.
pub const DEFAULT_REGION: &str = "fra";
/// Default plan.
pub const DEFAULT_PLAN: &str = "vc2-1c-1gb";
/// Default image: `os_id` 2284, Ubuntu 24.04 LTS x64 (a number is an `os_id`, anything else
/// an `image_id`).
pub const DEFAULT_OS: &str = "2284";
/// The tag every instance made by Kokoa carries.
pub const TAG: &str = "kokoa-edge";

/// The Vultr provisioner.
#[derive(Debug)]
pub struct Vultr {
    api: Api,
    settings: CloudSettings,
}

impl Vultr {
    /// A provisioner with `settings`.
    pub fn new(settings: CloudSettings) -> Result<Self, ProvisionError> {
        Ok(Vultr {
            api: Api::new("vultr", &settings)?,
            settings,
        })
    }

    fn instance(&self, instance: &Value) -> Result<Instance, ProvisionError> {
        let id = instance["id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                self.api
                    .unexpected(format!("an instance without an id: {instance}"))
            })?
            .to_owned();
        let public_ip = instance["main_ip"]
            .as_str()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified());
        let status = match instance["status"].as_str() {
            Some("pending") => InstanceStatus::Starting,
            Some("active") if instance["power_status"] == "stopped" => InstanceStatus::Gone,
            Some("active") => InstanceStatus::Running,
            Some("suspended" | "resizing") => InstanceStatus::Gone,
            other => {
                return Err(self
                    .api
                    .unexpected(format!("instance {id} has status {other:?}")))
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
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(ProvisionError::Config(format!(
                "{id:?} is not a Vultr instance id"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Provisioner for Vultr {
    fn kind(&self) -> &'static str {
        "vultr"
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
        let name = host_name(&spec.name);
        let data = user_data(&spec.name, &spec.bundle, s.release.as_ref());
        let mut body = json!({
            "region": spec.region.as_deref().unwrap_or(&s.region),
            "plan": spec.size.as_deref().unwrap_or(&s.size),
            "label": name,
            "hostname": name,
            // Vultr takes user data base64-encoded.
            "user_data": base64::engine::general_purpose::STANDARD.encode(data),
            "sshkey_id": s.ssh_keys,
            "tags": [TAG],
            "backups": "disabled",
        });
        let image = spec.image.as_deref().unwrap_or(&s.image);
        match image.parse::<u64>() {
            Ok(os_id) => body["os_id"] = json!(os_id),
            Err(_) => body["image_id"] = json!(image),
        }
        let (status, answer) = self
            .api
            .call(Method::POST, "/instances", Some(&body))
            .await?;
        if status == 404 {
            return Err(self.api.unexpected("POST /instances answered 404"));
        }
        self.instance(&answer["instance"])
    }

    async fn status(&self, id: &str) -> Result<Instance, ProvisionError> {
        self.check_id(id)?;
        let (status, answer) = self
            .api
            .call(Method::GET, &format!("/instances/{id}"), None)
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
        self.instance(&answer["instance"])
    }

    async fn destroy(&self, id: &str) -> Result<(), ProvisionError> {
        self.check_id(id)?;
        self.api
            .call(Method::DELETE, &format!("/instances/{id}"), None)
            .await?;
        Ok(())
    }

    async fn find(&self, name: &str) -> Result<Option<Instance>, ProvisionError> {
        let name = host_name(name);
        let (_, answer) = self
            .api
            .call(
                Method::GET,
                &format!("/instances?label={}&per_page=500", query_escape(&name)),
                None,
            )
            .await?;
        let instances = answer["instances"].as_array().ok_or_else(|| {
            self.api
                .unexpected("the instance list has no \"instances\" array")
        })?;
        instances
            .iter()
            .find(|i| i["label"] == name.as_str())
            .map(|i| self.instance(i))
            .transpose()
    }
}

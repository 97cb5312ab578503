//! The REST commands of `kokoa-control`: each a client call of the API, printed as an aligned
//! table (or the API's JSON with `--json`). The command-line definitions and the dispatch
//! are in the parent module; the tables in [`super::views`].

#[allow(clippy::wildcard_imports)]
use super::*;

/// The REST commands.
pub(super) struct Api {
    pub(super) client: ApiClient,
    pub(super) json: bool,
}

impl Api {
    /// Prints `value` as JSON (with `--json`) or the table `render` makes of it.
    pub(super) fn print<T: serde::Serialize>(
        &self,
        value: &T,
        render: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            print!("{}", render(value));
        }
        Ok(())
    }

    pub(super) fn done(&self, message: String) {
        if self.json {
            println!("{}", json!({"ok": true, "message": message}));
        } else {
            println!("{message}");
        }
    }

    pub(super) async fn origin(&self, command: OriginCommand) -> anyhow::Result<()> {
        match command {
            OriginCommand::Add { name, public_key } => {
                let origin: OriginView = self
                    .client
                    .post("/origins", &json!({"name": name, "public_key": public_key}))
                    .await?;
                self.print(&origin, |o| origin_table(std::slice::from_ref(o)))
            }
            OriginCommand::List => {
                let origins: Vec<OriginView> = self.client.get("/origins").await?;
                self.print(&origins, |o| origin_table(o))
            }
            OriginCommand::Rm { name } => {
                self.client
                    .delete(&format!("/origins/{}", segment(&name)))
                    .await?;
                self.done(format!("origin {name} deleted"));
                Ok(())
            }
            OriginCommand::RotateKey { name } => {
                let origin: OriginView = self
                    .client
                    .post(
                        &format!("/origins/{}/rotate-key", segment(&name)),
                        &json!({}),
                    )
                    .await?;
                self.print(&origin, |o| origin_table(std::slice::from_ref(o)))
            }
            OriginCommand::Show { name } => {
                let detail: NodeDetail = self
                    .client
                    .get(&format!("/origins/{}/status", segment(&name)))
                    .await?;
                self.print(&detail, show::render)
            }
        }
    }

    pub(super) async fn service(&self, command: ServiceCommand) -> anyhow::Result<()> {
        match command {
            ServiceCommand::Add {
                origin,
                name,
                port,
                local,
                protocol,
                health_path,
            } => {
                let protocol = match protocol {
                    ProtocolArg::Http => "http",
                    ProtocolArg::Tcp => "tcp",
                };
                let body = json!({
                    "name": name, "port": port, "protocol": protocol,
                    "local_address": local, "health_path": health_path,
                });
                let service: ServiceView = self
                    .client
                    .post(&format!("/origins/{}/services", segment(&origin)), &body)
                    .await?;
                self.print(&service, |s| service_table(std::slice::from_ref(s)))
            }
            ServiceCommand::List { origin } => {
                let path = match origin {
                    Some(origin) => format!("/origins/{}/services", segment(&origin)),
                    None => "/services".to_string(),
                };
                let services: Vec<ServiceView> = self.client.get(&path).await?;
                self.print(&services, |s| service_table(s))
            }
            ServiceCommand::Rm { origin, name } => {
                self.client
                    .delete(&format!(
                        "/origins/{}/services/{}",
                        segment(&origin),
                        segment(&name)
                    ))
                    .await?;
                self.done(format!("service {name} of origin {origin} deleted"));
                Ok(())
            }
        }
    }

    pub(super) async fn edge(&self, command: EdgeCommand) -> anyhow::Result<()> {
        match command {
            EdgeCommand::Add {
                name,
                endpoint,
                origins,
                public_ip,
                admin_address,
                public_key,
                settings,
            } => {
                let body = json!({
                    "name": name, "endpoint": endpoint, "origins": origins,
                    "public_ip": public_ip, "admin_address": admin_address,
                    "public_key": public_key,
                    "limits": settings.apply_limits(None), "tunnel": settings.apply_tunnel(None),
                });
                let edge: EdgeView = self.client.post("/edge-nodes", &body).await?;
                self.print(&edge, |e| edge_table(std::slice::from_ref(e)))
            }
            EdgeCommand::Set {
                name,
                public_ip,
                admin_address,
                settings,
                clear_limits,
                clear_tunnel,
            } => {
                let mut addresses = serde_json::Map::new();
                let clearable = |value: String| {
                    if value == "none" {
                        Value::Null
                    } else {
                        Value::String(value)
                    }
                };
                if let Some(ip) = public_ip {
                    addresses.insert("public_ip".into(), clearable(ip));
                }
                if let Some(admin) = admin_address {
                    addresses.insert("admin_address".into(), clearable(admin));
                }
                self.edge_set(&name, addresses, &settings, clear_limits, clear_tunnel)
                    .await
            }
            EdgeCommand::List => {
                let edges: Vec<EdgeView> = self.client.get("/edge-nodes").await?;
                self.print(&edges, |e| edge_table(e))
            }
            EdgeCommand::Show { name } => {
                let detail: NodeDetail = self
                    .client
                    .get(&format!("/edge-nodes/{}/status", segment(&name)))
                    .await?;
                self.print(&detail, show::render)
            }
            EdgeCommand::Drain { name } => self.drain(&name, true).await,
            EdgeCommand::Undrain { name } => self.drain(&name, false).await,
            EdgeCommand::Rm { name } => {
                self.client
                    .delete(&format!("/edge-nodes/{}", segment(&name)))
                    .await?;
                self.done(format!("edge {name} deleted"));
                Ok(())
            }
            EdgeCommand::Assign { edge, origin } => {
                let assigned: Value = self
                    .client
                    .json(
                        Method::PUT,
                        &format!(
                            "/edge-nodes/{}/origins/{}",
                            segment(&edge),
                            segment(&origin)
                        ),
                        &json!({}),
                    )
                    .await?;
                self.print(&assigned, |a| {
                    format!(
                        "edge {edge} serves origin {origin} as {}\n",
                        a["address"].as_str().unwrap_or("?")
                    )
                })
            }
            EdgeCommand::Unassign { edge, origin } => {
                self.client
                    .delete(&format!(
                        "/edge-nodes/{}/origins/{}",
                        segment(&edge),
                        segment(&origin)
                    ))
                    .await?;
                self.done(format!("edge {edge} no longer serves origin {origin}"));
                Ok(())
            }
            EdgeCommand::RotateKey { name } => {
                let edge: EdgeView = self
                    .client
                    .post(
                        &format!("/edge-nodes/{}/rotate-key", segment(&name)),
                        &json!({}),
                    )
                    .await?;
                self.print(&edge, |e| edge_table(std::slice::from_ref(e)))
            }
            EdgeCommand::Provision { name, origins } => {
                let body = json!({ "name": name, "origins": origins });
                let edge: EdgeView = self.client.post("/provision/edges", &body).await?;
                self.print(&edge, |e| edge_table(std::slice::from_ref(e)))
            }
            EdgeCommand::Replace { name } => {
                let replacement: crate::store::Replacement = self
                    .client
                    .post(
                        &format!("/edge-nodes/{}/replace", segment(&name)),
                        &json!({}),
                    )
                    .await?;
                self.print(&replacement, |r| {
                    format!(
                        "replacing edge {} ({}); follow it with `kokoa-control edge replacements`\n",
                        r.old_edge_name, r.id
                    )
                })
            }
            EdgeCommand::Destroy { name } => {
                self.client
                    .call(
                        Method::POST,
                        &format!("/edge-nodes/{}/destroy", segment(&name)),
                        Some(b"{}".to_vec()),
                    )
                    .await?;
                self.done(format!("edge {name} destroyed"));
                Ok(())
            }
            EdgeCommand::Replacements => {
                let list: Vec<crate::store::Replacement> =
                    self.client.get("/provision/replacements").await?;
                self.print(&list, |list| replacement_table(list))
            }
        }
    }

    pub(super) async fn route(&self, command: RouteCommand) -> anyhow::Result<()> {
        match command {
            RouteCommand::Add {
                host,
                origin,
                service,
                aliases,
                limits,
            } => {
                let mut own = serde_json::Map::new();
                limits.apply(&mut own);
                let body = json!({
                    "hostname": host, "origin": origin, "service": service, "aliases": aliases,
                    "limits": own,
                });
                let route: RouteView = self.client.post("/routes", &body).await?;
                self.print(&route, |r| route_table(std::slice::from_ref(r)))
            }
            RouteCommand::Set {
                host,
                origin,
                service,
                aliases,
                limits,
                clear_allow,
                clear_deny,
                clear_limits,
            } => {
                let path = format!("/routes/{}", segment(&host));
                let mut body = serde_json::Map::new();
                if let Some(origin) = origin {
                    body.insert("origin".into(), origin.into());
                }
                if let Some(service) = service {
                    body.insert("service".into(), service.into());
                }
                if !aliases.is_empty() {
                    body.insert("aliases".into(), aliases.into());
                }
                if clear_limits || clear_allow || clear_deny || !limits.is_empty() {
                    // The API replaces the whole limits object: start from the current one.
                    let mut own = if clear_limits {
                        serde_json::Map::new()
                    } else {
                        let current: RouteView = self.client.get(&path).await?;
                        match serde_json::to_value(&current.route.limits)? {
                            Value::Object(map) => map,
                            _ => serde_json::Map::new(),
                        }
                    };
                    if clear_allow {
                        own.remove("allow");
                    }
                    if clear_deny {
                        own.remove("deny");
                    }
                    limits.apply(&mut own);
                    body.insert("limits".into(), Value::Object(own));
                }
                let route: RouteView = self.client.json(Method::PATCH, &path, &body).await?;
                self.print(&route, |r| route_table(std::slice::from_ref(r)))
            }
            RouteCommand::List => {
                let routes: Vec<RouteView> = self.client.get("/routes").await?;
                self.print(&routes, |r| route_table(r))
            }
            RouteCommand::Rm { host } => {
                self.client
                    .delete(&format!("/routes/{}", segment(&host)))
                    .await?;
                self.done(format!("route {host} deleted"));
                Ok(())
            }
        }
    }

    pub(super) async fn certificate(&self, command: CertificateCommand) -> anyhow::Result<()> {
        match command {
            CertificateCommand::List => {
                let certificates: Vec<store::Certificate> =
                    self.client.get("/certificates").await?;
                self.print(&certificates, |c| certificate_table(c))
            }
        }
    }

    pub(super) async fn node_token(
        &self,
        kind: NodeKind,
        name: &str,
        ttl_hours: Option<u64>,
    ) -> anyhow::Result<()> {
        let body = json!({"ttl_seconds": ttl_hours.map(|h| h.saturating_mul(3600))});
        let issued: IssuedNodeToken = self
            .client
            .post(
                &format!("/{}/{}/tokens", kind.collection(), segment(name)),
                &body,
            )
            .await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&issued)?);
        } else {
            eprintln!(
                "one-time enrollment token for {name}, valid until {}; it is shown only once:",
                opt(issued.token.expires_at)
            );
            println!("{}", issued.secret.expose());
        }
        Ok(())
    }

    pub(super) async fn bundle(
        &self,
        kind: NodeKind,
        name: &str,
        output: &std::path::Path,
        binary: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        let mut bytes = self
            .client
            .call(
                Method::GET,
                &format!("/{}/{}/bundle", kind.collection(), segment(name)),
                None,
            )
            .await?
            .to_vec();
        let mut carried = String::new();
        if let Some(path) = binary {
            let program =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let arch = crate::bundle::elf_machine(&program)
                .with_context(|| format!("--with-binary {}", path.display()))?;
            let kind_name = kind.program().trim_start_matches("kokoa-");
            bytes = crate::bundle::add_binary(&bytes, kind_name, &program)
                .with_context(|| format!("adding {} to the bundle", path.display()))?;
            carried = format!(", with {} ({arch})", path.display());
        }
        // The bundle holds a live enrollment token: keep it private.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(output)
            .with_context(|| format!("cannot write {}", output.display()))?;
        std::io::Write::write_all(&mut file, &bytes)
            .with_context(|| format!("cannot write {}", output.display()))?;
        let kind = match kind {
            NodeKind::Edge => "edge",
            NodeKind::Origin => "origin",
        };
        self.done(format!(
            "wrote {} ({} bytes{carried}): copy it to the {kind} host, then `tar xzf {} && cd kokoa-{kind}-{name} && sudo ./install.sh`",
            output.display(),
            bytes.len(),
            output.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        ));
        Ok(())
    }

    pub(super) async fn token_list(&self) -> anyhow::Result<()> {
        let tokens: Vec<ApiToken> = self.client.get("/api-tokens").await?;
        self.print(&tokens, |tokens| {
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.role.to_string(),
                        t.created_at.date().to_string(),
                        opt(t.expires_at.map(|e| e.date())),
                        opt(t.revoked_at.map(|r| r.date())),
                    ]
                })
                .collect();
            table::render(&["NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED"], &rows)
        })
    }

    pub(super) async fn token_revoke(&self, name: &str) -> anyhow::Result<()> {
        let tokens: Vec<ApiToken> = self.client.get("/api-tokens").await?;
        let token = tokens
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("no API token named {name:?} (see `token list`)"))?;
        let _: ApiToken = self
            .client
            .json(
                Method::DELETE,
                &format!("/api-tokens/{}", token.id),
                &json!({}),
            )
            .await?;
        self.done(format!("API token {name} revoked"));
        Ok(())
    }

    pub(super) async fn drain(&self, name: &str, draining: bool) -> anyhow::Result<()> {
        let _: EdgeView = self
            .client
            .json(
                Method::PATCH,
                &format!("/edge-nodes/{}", segment(name)),
                &json!({ "draining": draining }),
            )
            .await?;
        self.done(if draining {
            format!("edge {name} drained: it leaves DNS and takes no new traffic; `edge undrain {name}` brings it back")
        } else {
            format!("edge {name} undrained: it returns to DNS once its checks pass")
        });
        Ok(())
    }

    pub(super) async fn user_list(&self) -> anyhow::Result<()> {
        let users: Vec<User> = self.client.get("/users").await?;
        self.print(&users, |users| {
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|user| {
                    vec![
                        user.name.clone(),
                        user.role.to_string(),
                        if user.totp_enabled { "on" } else { "off" }.into(),
                        time_text(user.last_login_at),
                        user.locked_until
                            .map(|_| "yes".to_string())
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            table::render(&["NAME", "ROLE", "TOTP", "LAST LOGIN", "LOCKED"], &rows)
        })
    }

    pub(super) async fn user_rm(&self, name: &str) -> anyhow::Result<()> {
        self.client
            .delete(&format!("/users/{}", segment(name)))
            .await?;
        self.done(format!("user {name} deleted"));
        Ok(())
    }

    pub(super) async fn status(&self) -> anyhow::Result<()> {
        let summary: StatusSummary = self.client.get("/status").await?;
        self.print(&summary, |s| {
            format!(
                "config version {}\n{}",
                s.config_version,
                status_table(&s.nodes)
            )
        })
    }
}

/// `edge replacements`: one line per replacement.
fn replacement_table(list: &[crate::store::Replacement]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.old_edge_name.clone(),
                r.new_edge_name.clone().unwrap_or_default(),
                r.stage.as_str().to_owned(),
                r.cause.as_str().to_owned(),
                super::time_text(Some(r.started_at)),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    super::table::render(
        &["OLD EDGE", "NEW EDGE", "STAGE", "CAUSE", "STARTED", "ERROR"],
        &rows,
    )
}

//! `kokoa-control tcp-route`: raw TCP routes, a public port on every edge serving an origin
//! forwarded to one of its services as a byte stream.
//!
//! The CLI checks nothing itself: flags become the `/tcp-routes` JSON body as given, and the API
//! validates them with the shared model (a bad `--allow` answers 422 naming `allow[0]`).

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::client::segment;
use super::{opt, table, Api};
use crate::api::TcpRouteView;

/// `tcp-route` subcommands.
#[derive(Debug, Subcommand)]
pub enum TcpRouteCommand {
    /// Forward public port PORT of every edge serving the origin to one of its services.
    Add {
        /// The public port on the edges.
        port: String,
        /// The origin.
        #[arg(long)]
        origin: String,
        /// The origin's service.
        #[arg(long)]
        service: String,
        /// How the route treats its clients.
        #[command(flatten)]
        options: TcpRouteOptions,
    },
    /// List TCP routes.
    List,
    /// Change a TCP route; flags not given stay as they are.
    Set {
        /// The route's public port (or id).
        port: String,
        /// A new public port.
        #[arg(long)]
        new_port: Option<String>,
        /// A new origin (with --service).
        #[arg(long)]
        origin: Option<String>,
        /// A new service (of --origin, or of the route's origin).
        #[arg(long)]
        service: Option<String>,
        /// How the route treats its clients.
        #[command(flatten)]
        options: TcpRouteOptions,
        /// Remove every allowed network (everyone may connect unless denied).
        #[arg(long, conflicts_with = "allow")]
        clear_allow: bool,
        /// Remove every denied network.
        #[arg(long, conflicts_with = "deny")]
        clear_deny: bool,
    },
    /// Delete a TCP route.
    Rm {
        /// The route's public port (or id).
        port: String,
    },
}

/// Flags shared by `tcp-route add` and `tcp-route set`.
#[derive(Debug, Args)]
pub struct TcpRouteOptions {
    /// The address the edges listen on (default: the address of each edge's HTTPS listener).
    #[arg(long)]
    listen_ip: Option<String>,
    /// Send the app a PROXY protocol header first: `v2`, or `none`.
    #[arg(long)]
    proxy_protocol: Option<String>,
    /// Only clients in this network may connect (CIDR or address; repeatable; replaces the
    /// list).
    #[arg(long = "allow")]
    allow: Vec<String>,
    /// Clients in this network are refused (CIDR or address; repeatable; replaces the list;
    /// deny wins over allow).
    #[arg(long = "deny")]
    deny: Vec<String>,
}

impl TcpRouteOptions {
    /// Adds the given options to a request body.
    fn fill(self, body: &mut Map<String, Value>) {
        if let Some(ip) = self.listen_ip {
            body.insert("listen_ip".into(), ip.into());
        }
        if let Some(proxy) = self.proxy_protocol {
            body.insert("proxy_protocol".into(), proxy.into());
        }
        if !self.allow.is_empty() {
            body.insert("allow".into(), self.allow.into());
        }
        if !self.deny.is_empty() {
            body.insert("deny".into(), self.deny.into());
        }
    }
}

/// A port as JSON: a number when it reads as one, else the text (so the API names the field and
/// says what is wrong, rather than the CLI).
fn port_value(text: &str) -> Value {
    text.trim()
        .parse::<u64>()
        .map_or_else(|_| Value::String(text.to_owned()), Value::from)
}

impl Api {
    pub(super) async fn tcp_route(&self, command: TcpRouteCommand) -> anyhow::Result<()> {
        match command {
            TcpRouteCommand::Add {
                port,
                origin,
                service,
                options,
            } => {
                let mut body = Map::new();
                body.insert("listen_port".into(), port_value(&port));
                body.insert("origin".into(), origin.into());
                body.insert("service".into(), service.into());
                options.fill(&mut body);
                let route: TcpRouteView = self.client.post("/tcp-routes", &body).await?;
                self.print(&route, |r| tcp_route_table(std::slice::from_ref(r)))
            }
            TcpRouteCommand::List => {
                let routes: Vec<TcpRouteView> = self.client.get("/tcp-routes").await?;
                self.print(&routes, |r| tcp_route_table(r))
            }
            TcpRouteCommand::Set {
                port,
                new_port,
                origin,
                service,
                options,
                clear_allow,
                clear_deny,
            } => {
                let mut body = Map::new();
                if let Some(new_port) = new_port {
                    body.insert("listen_port".into(), port_value(&new_port));
                }
                if let Some(origin) = origin {
                    body.insert("origin".into(), origin.into());
                }
                if let Some(service) = service {
                    body.insert("service".into(), service.into());
                }
                options.fill(&mut body);
                if clear_allow {
                    body.insert("allow".into(), json!([]));
                }
                if clear_deny {
                    body.insert("deny".into(), json!([]));
                }
                let route: TcpRouteView = self
                    .client
                    .json(
                        hyper::Method::PATCH,
                        &format!("/tcp-routes/{}", segment(&port)),
                        &body,
                    )
                    .await?;
                self.print(&route, |r| tcp_route_table(std::slice::from_ref(r)))
            }
            TcpRouteCommand::Rm { port } => {
                self.client
                    .delete(&format!("/tcp-routes/{}", segment(&port)))
                    .await?;
                self.done(format!("TCP route {port} deleted"));
                Ok(())
            }
        }
    }
}

fn tcp_route_table(routes: &[TcpRouteView]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let list = |networks: &[crate::store::Network]| {
                networks
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            vec![
                r.route.listen_port.to_string(),
                opt(r.route.listen_ip),
                r.origin.clone(),
                r.service.clone(),
                r.port.to_string(),
                r.route.proxy_protocol.to_string(),
                list(&r.route.allow),
                list(&r.route.deny),
            ]
        })
        .collect();
    table::render(
        &[
            "PORT",
            "LISTEN IP",
            "ORIGIN",
            "SERVICE",
            "TO PORT",
            "PROXY",
            "ALLOW",
            "DENY",
        ],
        &rows,
    )
}

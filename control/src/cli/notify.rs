//! `kokoa-control notify add|list|rm|test|deliveries`: notification targets and their
//! deliveries, through the REST API.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::client::segment;
use super::{table, Api};
use crate::store::{CreatedNotificationTarget, Delivery, NotificationTarget};

/// `notify` subcommands.
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Add a target. A webhook's signing secret is printed once (unless given with
    /// --secret-file).
    Add {
        /// Unique name.
        name: String,
        /// webhook (signed JSON) or slack (Slack-compatible incoming webhook).
        #[arg(long, value_enum)]
        kind: TargetKind,
        /// Where to POST. For Slack the URL is the credential: prefer --url-file.
        #[arg(
            long,
            conflicts_with = "url_file",
            required_unless_present = "url_file"
        )]
        url: Option<String>,
        /// File holding the URL (keeps it out of the shell history and `ps`).
        #[arg(long)]
        url_file: Option<PathBuf>,
        /// File holding the webhook signing secret (16 to 256 characters); else one is
        /// generated.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Event kinds to send (repeatable or comma-separated): `edge.status_changed`,
        /// `edge.*`, `*.config_rejected`, `certificate.failed`, ...; default every kind.
        #[arg(long = "event", value_delimiter = ',')]
        events: Vec<String>,
    },
    /// List targets.
    List,
    /// Delete a target and its deliveries.
    Rm {
        /// The target's name.
        name: String,
    },
    /// Send a test notification to one target (see `notify deliveries` for the outcome).
    Test {
        /// The target's name.
        name: String,
    },
    /// Deliveries, newest first: attempts, status, last error.
    Deliveries {
        /// Only this target's.
        #[arg(long)]
        target: Option<String>,
        /// Only in this state: pending, delivered, failed or dropped.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `notify add --kind`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TargetKind {
    /// JSON body signed with HMAC-SHA256 (`Kokoa-Signature`).
    Webhook,
    /// Slack-compatible incoming webhook.
    Slack,
}

fn read_trimmed(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} from {}", path.display()))?;
    Ok(text.trim().to_string())
}

fn targets_table(targets: &[NotificationTarget]) -> String {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.kind.as_str().to_string(),
                t.url.clone(),
                if t.events.is_empty() {
                    "*".to_string()
                } else {
                    t.events.join(",")
                },
                if t.signed { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    table::render(&["NAME", "KIND", "URL", "EVENTS", "SIGNED"], &rows)
}

fn deliveries_table(deliveries: &[Delivery], targets: &[NotificationTarget]) -> String {
    let rows: Vec<Vec<String>> = deliveries
        .iter()
        .map(|d| {
            let target = targets
                .iter()
                .find(|t| t.id == d.target_id)
                .map_or_else(|| d.target_id.to_string(), |t| t.name.clone());
            vec![
                d.event_id.to_string(),
                target,
                d.kind.clone(),
                d.status.as_str().to_string(),
                d.attempts.to_string(),
                d.last_status.map(|s| s.to_string()).unwrap_or_default(),
                d.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::render(
        &[
            "EVENT",
            "TARGET",
            "KIND",
            "STATUS",
            "ATTEMPTS",
            "HTTP",
            "LAST ERROR",
        ],
        &rows,
    )
}

impl Api {
    pub(super) async fn notify(&self, command: NotifyCommand) -> anyhow::Result<()> {
        match command {
            NotifyCommand::Add {
                name,
                kind,
                url,
                url_file,
                secret_file,
                events,
            } => {
                let url = match (url, url_file) {
                    (Some(url), _) => url,
                    (None, Some(file)) => read_trimmed(&file, "URL")?,
                    (None, None) => anyhow::bail!("give --url or --url-file"),
                };
                let secret = secret_file
                    .map(|file| read_trimmed(&file, "secret"))
                    .transpose()?;
                let kind = match kind {
                    TargetKind::Webhook => "webhook",
                    TargetKind::Slack => "slack",
                };
                let body = json!({
                    "name": name, "kind": kind, "url": url, "secret": secret, "events": events,
                });
                let created: CreatedNotificationTarget =
                    self.client.post("/notification-targets", &body).await?;
                self.print(&created, |c| {
                    let mut out = targets_table(std::slice::from_ref(&c.target));
                    if let Some(secret) = &c.secret {
                        out.push_str(&format!(
                            "\nsigning secret (shown once; verify Kokoa-Signature with it):\n{}\n",
                            secret.expose()
                        ));
                    }
                    out
                })
            }
            NotifyCommand::List => {
                let targets: Vec<NotificationTarget> =
                    self.client.get("/notification-targets").await?;
                self.print(&targets, |t| targets_table(t))
            }
            NotifyCommand::Rm { name } => {
                self.client
                    .delete(&format!("/notification-targets/{}", segment(&name)))
                    .await?;
                self.done(format!("notification target {name} deleted"));
                Ok(())
            }
            NotifyCommand::Test { name } => {
                let delivery: Delivery = self
                    .client
                    .post(
                        &format!("/notification-targets/{}/test", segment(&name)),
                        &json!({}),
                    )
                    .await?;
                self.print(&delivery, |d| {
                    format!(
                        "test notification queued for {name} (event {}); \
                         see `kokoa-control notify deliveries --target {name}`\n",
                        d.event_id
                    )
                })
            }
            NotifyCommand::Deliveries {
                target,
                status,
                limit,
            } => {
                let mut path = format!("/notification-deliveries?limit={limit}");
                if let Some(target) = &target {
                    path.push_str(&format!("&target={}", segment(target)));
                }
                if let Some(status) = &status {
                    path.push_str(&format!("&status={}", segment(status)));
                }
                let deliveries: Vec<Delivery> = self.client.get(&path).await?;
                let targets: Vec<NotificationTarget> = if self.json {
                    Vec::new()
                } else {
                    self.client.get("/notification-targets").await?
                };
                self.print(&deliveries, |d| deliveries_table(d, &targets))
            }
        }
    }
}

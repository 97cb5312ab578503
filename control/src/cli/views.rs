//! The tables the REST commands print, one function per kind of record (rendered by
//! [`super::table`]).

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn origin_table(origins: &[OriginView]) -> String {
    let rows: Vec<Vec<String>> = origins
        .iter()
        .map(|o| {
            vec![
                o.origin.name.clone(),
                o.address.to_string(),
                o.network.to_string(),
                o.origin.public_key.to_base64(),
                o.origin.state.status.as_str().to_owned(),
                opt(o.origin.state.applied_version),
                time_text(o.origin.state.last_heartbeat),
            ]
        })
        .collect();
    table::render(
        &[
            "NAME",
            "ADDRESS",
            "NETWORK",
            "PUBLIC KEY",
            "STATUS",
            "APPLIED",
            "HEARTBEAT",
        ],
        &rows,
    )
}

pub(super) fn service_table(services: &[ServiceView]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.origin.clone(),
                s.service.name.clone(),
                s.service.port.to_string(),
                format!("{:?}", s.service.protocol).to_lowercase(),
                s.service.local_address.clone(),
                opt(s.service.health_path.clone()),
            ]
        })
        .collect();
    table::render(
        &["ORIGIN", "NAME", "PORT", "PROTOCOL", "LOCAL", "HEALTH PATH"],
        &rows,
    )
}

pub(super) fn edge_table(edges: &[EdgeView]) -> String {
    let rows: Vec<Vec<String>> = edges
        .iter()
        .map(|e| {
            vec![
                e.edge.name.clone(),
                opt(e.edge.endpoint.clone()),
                e.origins
                    .iter()
                    .map(|o| format!("{}={}", o.origin, o.address))
                    .collect::<Vec<_>>()
                    .join(","),
                e.edge.public_key.to_base64(),
                e.edge.state.status.as_str().to_owned(),
                opt(e.edge.state.applied_version),
                time_text(e.edge.state.last_heartbeat),
            ]
        })
        .collect();
    table::render(
        &[
            "NAME",
            "ENDPOINT",
            "ORIGINS",
            "PUBLIC KEY",
            "STATUS",
            "APPLIED",
            "HEARTBEAT",
        ],
        &rows,
    )
}

pub(super) fn route_table(routes: &[RouteView]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let limits = match serde_json::to_value(&r.route.limits) {
                Ok(Value::Object(map)) => map
                    .iter()
                    .map(|(key, value)| match value {
                        Value::Array(list) => format!(
                            "{key}={}",
                            list.iter()
                                .map(|v| v.as_str().unwrap_or_default().to_owned())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                        other => format!("{key}={other}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            vec![
                r.route.hostname.clone(),
                r.route.aliases.join(","),
                r.origin.clone(),
                r.service.clone(),
                r.port.to_string(),
                match &r.route.problem {
                    Some(_) => "HELD BACK: limits do not fit the model (see --json)".into(),
                    None => limits,
                },
            ]
        })
        .collect();
    table::render(
        &["HOST", "ALIASES", "ORIGIN", "SERVICE", "PORT", "LIMITS"],
        &rows,
    )
}

pub(super) fn certificate_table(certificates: &[store::Certificate]) -> String {
    let rows: Vec<Vec<String>> = certificates
        .iter()
        .map(|c| {
            vec![
                c.names.join(","),
                c.source.as_str().to_owned(),
                opt(c.issuer.as_deref()),
                c.not_after
                    .map(|t| t.date().to_string())
                    .unwrap_or_else(|| "not issued".into()),
                opt(c.last_error.as_deref()),
            ]
        })
        .collect();
    table::render(
        &["NAMES", "SOURCE", "ISSUER", "NOT AFTER", "LAST ERROR"],
        &rows,
    )
}

pub(super) fn status_table(nodes: &[NodeStatusView]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.kind.clone(),
                n.name.clone(),
                n.status.as_str().to_owned(),
                n.since.map(since_text).unwrap_or_default(),
                match n.connected {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => String::new(),
                },
                opt(n.applied_version),
                if n.in_sync { "yes" } else { "no" }.to_string(),
                time_text(n.last_heartbeat),
                n.nack
                    .as_ref()
                    .map(|nack| match &nack.object {
                        Some(object) => format!("v{} {object}: {}", nack.version, nack.error),
                        None => format!("v{}: {}", nack.version, nack.error),
                    })
                    .unwrap_or_default(),
                n.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::render(
        &[
            "KIND",
            "NAME",
            "STATUS",
            "SINCE",
            "CONNECTED",
            "APPLIED",
            "IN SYNC",
            "HEARTBEAT",
            "LAST NACK",
            "REASON",
        ],
        &rows,
    )
}

/// How long ago `t` was, compactly (`42s`, `5m`, `3h`, `2d`).
pub(super) fn since_text(t: OffsetDateTime) -> String {
    let secs = (OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

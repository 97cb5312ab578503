//! `kokoa-control edge show NAME` and `origin show NAME`: one node's state and why, and the
//! figures of its last heartbeat (rates, CPU, memory, tunnel peers, an origin's services), its
//! applied config and last NACK, and its latest check results, as plain text.

use std::fmt::Write as _;

use time::OffsetDateTime;

use super::table;
use crate::api::NodeDetail;

/// `1.5 KiB`, `12.3 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `45 s`, `3 min`, `2 h`, `4 d`, from milliseconds.
fn age_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

fn ago(t: OffsetDateTime) -> String {
    let ms = (OffsetDateTime::now_utc() - t).whole_milliseconds().max(0);
    format!("{} ago", age_ms(u64::try_from(ms).unwrap_or(u64::MAX)))
}

/// The text `show` prints for `detail`.
pub fn render(detail: &NodeDetail) -> String {
    let s = &detail.status;
    let mut out = String::new();
    let _ = writeln!(out, "{} {} ({})", s.kind, s.name, s.id);
    let _ = write!(out, "state:      {}", s.status);
    if let Some(since) = s.since {
        let _ = write!(out, " since {}", ago(since));
    }
    out.push('\n');
    if let Some(reason) = &s.reason {
        let _ = writeln!(out, "reason:     {reason}");
    }
    if s.kind == "edge" {
        let _ = writeln!(
            out,
            "public ip:  {}{}",
            detail.public_ip.map_or_else(
                || "none (not in DNS, not probed)".to_owned(),
                |ip| ip.to_string()
            ),
            if detail.draining {
                "   (drained by an operator)"
            } else {
                ""
            }
        );
    }
    let connected = match s.connected {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown to this control",
    };
    let _ = writeln!(
        out,
        "connected:  {connected}; last heartbeat {}",
        s.last_heartbeat.map_or_else(|| "never".to_owned(), ago)
    );
    let _ = writeln!(
        out,
        "config:     applied v{} of v{} ({})",
        s.applied_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
        detail.config_version,
        if s.in_sync { "in sync" } else { "not in sync" }
    );
    match &s.nack {
        Some(nack) => {
            let _ = writeln!(out, "last NACK:  v{}: {}", nack.version, nack.error);
        }
        None => out.push_str("last NACK:  none\n"),
    }
    if let Some(beat) = &detail.heartbeat {
        let _ = writeln!(
            out,
            "traffic:    {:.1} requests/s, {:.2} errors/s, {} open {}",
            beat.requests_per_second,
            beat.errors_per_second,
            beat.active_connections,
            if s.kind == "edge" {
                "connections"
            } else {
                "streams"
            }
        );
        let _ = writeln!(
            out,
            "process:    CPU {:.2} cores, memory {}, up {}",
            beat.cpu_cores,
            bytes(beat.memory_bytes),
            age_ms(beat.uptime_seconds.saturating_mul(1000)),
        );
        let up = detail.peers.iter().filter(|p| p.peer.up).count();
        let _ = writeln!(out, "peers:      {up} up, {} down", detail.peers.len() - up);
    }
    if !detail.peers.is_empty() {
        let rows: Vec<Vec<String>> = detail
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.name.clone().unwrap_or_else(|| p.peer.public_key.clone()),
                    if p.peer.up { "up" } else { "down" }.to_owned(),
                    p.peer
                        .last_handshake_age_ms
                        .map_or_else(|| "never".to_owned(), |ms| format!("{} ago", age_ms(ms))),
                    p.peer.endpoint.clone().unwrap_or_default(),
                    bytes(p.peer.rx_bytes),
                    bytes(p.peer.tx_bytes),
                    p.peer.active_streams.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table::render(
            &[
                "PEER",
                "TUNNEL",
                "LAST HANDSHAKE",
                "ENDPOINT",
                "RX",
                "TX",
                "STREAMS",
            ],
            &rows,
        ));
    }
    if let Some(beat) = detail.heartbeat.as_ref().filter(|b| !b.services.is_empty()) {
        let rows: Vec<Vec<String>> = beat
            .services
            .iter()
            .map(|svc| {
                let mut health = if svc.healthy { "up" } else { "down" }.to_owned();
                if let Some(ms) = svc.since_ms {
                    let _ = write!(health, " for {}", age_ms(ms));
                }
                vec![
                    svc.name.clone(),
                    svc.port.to_string(),
                    health,
                    svc.check.clone().unwrap_or_default(),
                    svc.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table::render(
            &["SERVICE", "PORT", "HEALTH", "CHECK", "ERROR"],
            &rows,
        ));
    }
    if !detail.checks.is_empty() {
        let rows: Vec<Vec<String>> = detail
            .checks
            .iter()
            .map(|c| {
                vec![
                    ago(c.checked_at),
                    c.kind.map(|k| k.as_str().to_owned()).unwrap_or_default(),
                    c.target.clone().unwrap_or_default(),
                    if c.success { "pass" } else { "fail" }.to_owned(),
                    c.response_time_ms
                        .map(|ms| format!("{ms} ms"))
                        .unwrap_or_default(),
                    c.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table::render(
            &["CHECKED", "CHECK", "TARGET", "RESULT", "LATENCY", "ERROR"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12 * 1024 * 1024 + 300 * 1024), "12.3 MiB");
        assert_eq!(age_ms(31_000), "31 s");
        assert_eq!(age_ms(240_000), "4 min");
    }
}

//! Results of a comparison run: samples per (contender, metric), medians over rounds, ratios to
//! the reference contender (Nginx + WireGuard), the Markdown report and the target verdicts.
//! Pure logic, unit tested; nothing here touches the system.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One of the stacks measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contender {
    /// 1: `kokoa-edge` + `kokoa-origin` (the product).
    Kokoa,
    /// 2: Nginx (TLS, keep-alive upstream) + wireguard-go on both hosts: the reference.
    NginxWireguard,
    /// 3: Nginx (TLS) straight to the app over the veth, no tunnel: the ceiling.
    NginxDirect,
    /// 4: Nginx in front of onetun (boringtun + smoltcp) peering with wireguard-go.
    NginxOnetun,
    /// 5: Nginx (TLS) to a plain TCP relay (Nginx `stream`) on the origin host, which connects
    /// to the app on its loopback: no tunnel and no encryption, only the extra hop that every
    /// design ending the tunnel in a process on the origin host pays (Kokoa's origin,
    /// cloudflared, frp, rathole). The floor for such designs.
    NginxRelay,
    /// `kokoa-edge` with request rate limiting enabled (limits set so high that nothing is
    /// limited): only the small-request load, to show the limiter's cost (issue 4).
    KokoaRateLimited,
}

impl Contender {
    /// Every contender, in report order.
    pub const ALL: [Contender; 6] = [
        Contender::Kokoa,
        Contender::NginxWireguard,
        Contender::NginxDirect,
        Contender::NginxOnetun,
        Contender::NginxRelay,
        Contender::KokoaRateLimited,
    ];

    /// The contender every ratio is taken against.
    pub const REFERENCE: Contender = Contender::NginxWireguard;

    /// Short label for tables and the chart.
    pub fn label(self) -> &'static str {
        match self {
            Contender::Kokoa => "1 kokoa",
            Contender::NginxWireguard => "2 nginx+wireguard-go",
            Contender::NginxDirect => "3 nginx direct",
            Contender::NginxOnetun => "4 nginx+onetun",
            Contender::NginxRelay => "5 nginx+plain relay",
            Contender::KokoaRateLimited => "1r kokoa, rate limits on",
        }
    }

    /// Name used on the command line (`--only`).
    pub fn key(self) -> &'static str {
        match self {
            Contender::Kokoa => "kokoa",
            Contender::NginxWireguard => "nginx-wg",
            Contender::NginxDirect => "nginx-direct",
            Contender::NginxOnetun => "nginx-onetun",
            Contender::NginxRelay => "nginx-relay",
            Contender::KokoaRateLimited => "kokoa-ratelimit",
        }
    }

    /// Parses [`Contender::key`].
    pub fn from_key(key: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.key() == key)
    }
}

/// A measured quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// HTTP/1.1 keep-alive, 64 connections: requests/s.
    SmallRps,
    /// Its median latency, ms.
    SmallP50Ms,
    /// Its 99th percentile latency, ms.
    SmallP99Ms,
    /// HTTP/2, 16 connections x 16 streams: requests/s.
    H2Rps,
    /// A new TLS connection per request: connections/s.
    NewConnPerSec,
    /// 64 MiB downloads on 4 connections: MB/s (10^6 bytes).
    BulkDownMBps,
    /// 64 MiB uploads on 4 connections: MB/s.
    BulkUpMBps,
    /// Edge resident memory per idle keep-alive connection, KiB.
    IdleEdgeKib,
    /// Origin resident memory per idle keep-alive connection, KiB.
    IdleOriginKib,
    /// Edge resident memory with every idle connection open (fixed costs included), MiB.
    IdleEdgeMib,
    /// Origin resident memory with every idle connection open, MiB.
    IdleOriginMib,
    /// Edge CPU seconds (user + system) per GB moved by the bulk loads.
    CpuEdgeSecPerGb,
    /// Origin CPU seconds per GB moved by the bulk loads.
    CpuOriginSecPerGb,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 13] = [
        Metric::SmallRps,
        Metric::SmallP50Ms,
        Metric::SmallP99Ms,
        Metric::H2Rps,
        Metric::NewConnPerSec,
        Metric::BulkDownMBps,
        Metric::BulkUpMBps,
        Metric::IdleEdgeKib,
        Metric::IdleOriginKib,
        Metric::IdleEdgeMib,
        Metric::IdleOriginMib,
        Metric::CpuEdgeSecPerGb,
        Metric::CpuOriginSecPerGb,
    ];

    /// What the row says.
    pub fn label(self) -> &'static str {
        match self {
            Metric::SmallRps => "small, HTTP/1.1 keep-alive, 64 conns (req/s)",
            Metric::SmallP50Ms => "  p50 latency (ms)",
            Metric::SmallP99Ms => "  p99 latency (ms)",
            Metric::H2Rps => "HTTP/2, 16 conns x 16 streams (req/s)",
            Metric::NewConnPerSec => "new TLS connection per request (conn/s)",
            Metric::BulkDownMBps => "bulk download 64 MiB x 4 conns (MB/s)",
            Metric::BulkUpMBps => "bulk upload 64 MiB x 4 conns (MB/s)",
            Metric::IdleEdgeKib => "idle keep-alive conns: edge RSS (KiB/conn)",
            Metric::IdleOriginKib => "idle keep-alive conns: origin RSS (KiB/conn)",
            Metric::IdleEdgeMib => "idle keep-alive conns: edge RSS, all open (MiB)",
            Metric::IdleOriginMib => "idle keep-alive conns: origin RSS, all open (MiB)",
            Metric::CpuEdgeSecPerGb => "edge CPU during bulk (s/GB)",
            Metric::CpuOriginSecPerGb => "origin CPU during bulk (s/GB)",
        }
    }

    /// Short name for the chart.
    pub fn short(self) -> &'static str {
        match self {
            Metric::SmallRps => "h1 req/s",
            Metric::SmallP50Ms => "p50",
            Metric::SmallP99Ms => "p99",
            Metric::H2Rps => "h2 req/s",
            Metric::NewConnPerSec => "conn/s",
            Metric::BulkDownMBps => "down MB/s",
            Metric::BulkUpMBps => "up MB/s",
            Metric::IdleEdgeKib => "idle edge",
            Metric::IdleOriginKib => "idle origin",
            Metric::IdleEdgeMib => "idle edge MiB",
            Metric::IdleOriginMib => "idle origin MiB",
            Metric::CpuEdgeSecPerGb => "edge CPU/GB",
            Metric::CpuOriginSecPerGb => "origin CPU/GB",
        }
    }

    /// Whether a larger value is better (throughput) or worse (latency, memory, CPU).
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::SmallRps
                | Metric::H2Rps
                | Metric::NewConnPerSec
                | Metric::BulkDownMBps
                | Metric::BulkUpMBps
        )
    }
}

/// The median of `values` (mean of the middle two for an even count); `None` when empty.
/// NaN values are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// `value / reference`, or `None` when the reference is zero or missing.
pub fn ratio(value: f64, reference: Option<f64>) -> Option<f64> {
    match reference {
        Some(r) if r != 0.0 && r.is_finite() => Some(value / r),
        _ => None,
    }
}

/// Every sample of a run, by contender and metric, in the order measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    samples: BTreeMap<(Contender, Metric), Vec<f64>>,
    /// Problems met during the run (a contender that could not start, a load with errors).
    pub notes: Vec<String>,
}

impl Results {
    /// Records one round's value.
    pub fn add(&mut self, contender: Contender, metric: Metric, value: f64) {
        self.samples
            .entry((contender, metric))
            .or_default()
            .push(value);
    }

    /// All values recorded for a cell.
    pub fn values(&self, contender: Contender, metric: Metric) -> &[f64] {
        self.samples
            .get(&(contender, metric))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The median over rounds of a cell.
    pub fn median(&self, contender: Contender, metric: Metric) -> Option<f64> {
        median(self.values(contender, metric))
    }

    /// The median of a cell divided by the reference contender's median.
    pub fn ratio_to_reference(&self, contender: Contender, metric: Metric) -> Option<f64> {
        ratio(
            self.median(contender, metric)?,
            self.median(Contender::REFERENCE, metric),
        )
    }

    /// The contenders that have at least one sample, in report order.
    pub fn contenders(&self) -> Vec<Contender> {
        Contender::ALL
            .into_iter()
            .filter(|c| self.samples.keys().any(|(sc, _)| sc == c))
            .collect()
    }

    /// Rate-limiting overhead in %: how much slower small requests are with limits on
    /// (positive = slower), from the medians of both.
    pub fn rate_limit_overhead_percent(&self) -> Option<f64> {
        let off = self.median(Contender::Kokoa, Metric::SmallRps)?;
        let on = self.median(Contender::KokoaRateLimited, Metric::SmallRps)?;
        (off > 0.0).then(|| (off - on) / off * 100.0)
    }

    /// The Markdown table: one row per metric, one column per contender, each cell
    /// `median (ratio x)`; the reference column shows only the median.
    pub fn table(&self) -> String {
        let contenders: Vec<Contender> = self
            .contenders()
            .into_iter()
            .filter(|c| *c != Contender::KokoaRateLimited)
            .collect();
        let mut out = String::from("| load | better |");
        for c in &contenders {
            let _ = write!(out, " {} |", c.label());
        }
        out.push_str("\n|---|---|");
        for _ in &contenders {
            out.push_str("---:|");
        }
        out.push('\n');
        for metric in Metric::ALL {
            if contenders
                .iter()
                .all(|c| self.values(*c, metric).is_empty())
            {
                continue;
            }
            let better = if metric.higher_is_better() {
                "higher"
            } else {
                "lower"
            };
            let _ = write!(out, "| {} | {better} |", metric.label().trim());
            for c in &contenders {
                let cell = match self.median(*c, metric) {
                    None => "n/a".to_owned(),
                    Some(m) if *c == Contender::REFERENCE => format_value(m),
                    Some(m) => match self.ratio_to_reference(*c, metric) {
                        Some(r) => format!("{} ({r:.2}x)", format_value(m)),
                        None => format_value(m),
                    },
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }

    /// The issue-4 paragraph: requests/s with rate limiting on vs off and the overhead.
    pub fn rate_limit_summary(&self) -> String {
        let off = self.median(Contender::Kokoa, Metric::SmallRps);
        let on = self.median(Contender::KokoaRateLimited, Metric::SmallRps);
        match (off, on, self.rate_limit_overhead_percent()) {
            (Some(off), Some(on), Some(overhead)) => format!(
                "kokoa small requests/s, rate limiting disabled: {} (rounds: {}); enabled with \
                 limits nothing reaches: {} (rounds: {}); overhead {overhead:.1}% (target < 5%: {}).",
                format_value(off),
                list(self.values(Contender::Kokoa, Metric::SmallRps)),
                format_value(on),
                list(self.values(Contender::KokoaRateLimited, Metric::SmallRps)),
                if overhead < 5.0 { "met" } else { "missed" }
            ) + &self.rate_limit_noise(),
            _ => "rate limiting overhead: not measured (see notes).".to_owned(),
        }
    }

    /// A sentence when the two sets of rounds overlap: then the difference of the medians is
    /// within the run's noise, whichever way it points, and the micro-benchmark is the better
    /// measure of the limiter's own cost. Empty when they do not overlap.
    fn rate_limit_noise(&self) -> String {
        let off = self.values(Contender::Kokoa, Metric::SmallRps);
        let on = self.values(Contender::KokoaRateLimited, Metric::SmallRps);
        match (span(off), span(on)) {
            (Some((off_lo, off_hi)), Some((on_lo, on_hi)))
                if off_lo <= on_hi && on_lo <= off_hi =>
            {
                format!(
                    " The rounds overlap (disabled {}-{}, enabled {}-{}): the difference is \
                     within this run's noise; `cargo bench -p kokoa-bench --bench ratelimit` \
                     measures the check on its own.",
                    format_value(off_lo),
                    format_value(off_hi),
                    format_value(on_lo),
                    format_value(on_hi)
                )
            }
            _ => String::new(),
        }
    }

    /// What contender 5 (a plain relay on the origin host, no tunnel) shows: for each
    /// throughput load, its share of contender 3 (Nginx straight to the app) and Kokoa's ratio
    /// to it. `None` when contender 5 was not measured.
    pub fn relay_floor(&self) -> Option<String> {
        let relay = Contender::NginxRelay;
        if !self.contenders().contains(&relay) {
            return None;
        }
        let mut out = String::from(
            "Contender 5 has neither a tunnel nor encryption: the Nginx front hands each request \
             to a plain TCP relay (Nginx `stream`) on the origin host, which connects to the app \
             on its loopback. Every design that ends the tunnel in a process on the origin host \
             and connects to the app from there (Kokoa's origin, cloudflared, frp, rathole) pays \
             at least this hop on top of the front; a kernel WireGuard peer does not, because \
             the app's TCP connection ends in the origin host's kernel. Where 5 / 3 is below a \
             target's share of contender 3, a design of this kind meets that target only if \
             its front and its origin-side process together cost less than Nginx's front and \
             this relay, which do no tunnelling at all.\n\n| load | 5 / 3 (the floor, as a share of direct) | 1 / 5 (Kokoa vs the \
             floor) |\n|---|---:|---:|\n",
        );
        for metric in [
            Metric::SmallRps,
            Metric::H2Rps,
            Metric::NewConnPerSec,
            Metric::BulkDownMBps,
            Metric::BulkUpMBps,
        ] {
            let floor = self.median(relay, metric);
            let of_direct =
                floor.and_then(|f| ratio(f, self.median(Contender::NginxDirect, metric)));
            let kokoa = self
                .median(Contender::Kokoa, metric)
                .and_then(|k| ratio(k, floor));
            let cell = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x"));
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                metric.label().trim(),
                cell(of_direct),
                cell(kokoa)
            );
        }
        Some(out)
    }

    /// The issue-5 targets, each with its measured value and verdict.
    pub fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        let kokoa = Contender::Kokoa;
        let mut versus = |metric: Metric, reference: Contender, goal: f64| {
            let value = self.median(kokoa, metric);
            let base = self.median(reference, metric);
            let achieved = value.and_then(|v| ratio(v, base));
            targets.push(Target {
                what: format!("{} >= {goal}x {}", metric.label().trim(), reference.label()),
                achieved: achieved.map(|r| format!("{r:.2}x")),
                met: achieved.map(|r| r >= goal),
            });
        };
        for metric in [
            Metric::SmallRps,
            Metric::H2Rps,
            Metric::BulkDownMBps,
            Metric::BulkUpMBps,
        ] {
            let goal = if matches!(metric, Metric::BulkDownMBps | Metric::BulkUpMBps) {
                3.0
            } else {
                2.0
            };
            versus(metric, Contender::NginxWireguard, goal);
            versus(metric, Contender::NginxDirect, 0.8);
        }
        let p99 = self.median(kokoa, Metric::SmallP99Ms);
        let p99_ref = self.median(Contender::NginxWireguard, Metric::SmallP99Ms);
        targets.push(Target {
            what: "p99 latency <= 2 nginx+wireguard-go".to_owned(),
            achieved: p99
                .zip(p99_ref)
                .map(|(a, b)| format!("{a:.2} ms vs {b:.2} ms")),
            met: p99.zip(p99_ref).map(|(a, b)| a <= b),
        });
        let idle = self.median(kokoa, Metric::IdleEdgeKib);
        targets.push(Target {
            what: "edge memory < 20 KiB per idle keep-alive connection".to_owned(),
            achieved: idle.map(|v| format!("{v:.1} KiB")),
            met: idle.map(|v| v < 20.0),
        });
        targets
    }
}

/// A target of issue 5 and how the run did against it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The target.
    pub what: String,
    /// The measured value or ratio.
    pub achieved: Option<String>,
    /// Met, missed, or not measured.
    pub met: Option<bool>,
}

/// A number with as many digits as it deserves.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The lowest and highest of some values (NaN left out).
fn span(values: &[f64]) -> Option<(f64, f64)> {
    values
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format_value(*v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the report says about the machine and the run.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    /// `YYYY-MM-DD HH:MM UTC` of the start.
    pub started: String,
    /// The command line.
    pub command: String,
    /// CPU model and core count.
    pub cpu: String,
    /// `uname -r`.
    pub kernel: String,
    /// Tool name -> version line.
    pub versions: Vec<(String, String)>,
    /// Rounds run.
    pub rounds: usize,
    /// Seconds per timed load.
    pub duration_secs: u64,
    /// Idle connections opened.
    pub idle_connections: usize,
    /// `/proc/loadavg` (1 min) before each contender's turn: (round, contender, load).
    pub load_average: Vec<(usize, Contender, f64)>,
    /// Wall time of the run.
    pub wall_secs: f64,
}

/// The whole Markdown report.
pub fn render_markdown(info: &RunInfo, results: &Results, chart_file: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Load comparison, {}\n", info.started);
    let _ = writeln!(
        out,
        "Medians over {} rounds (contenders interleaved, {} s per timed load); in parentheses \
         the ratio to contender 2 (Nginx + wireguard-go). Generated by `{}` in {:.0} s.\n",
        info.rounds, info.duration_secs, info.command, info.wall_secs
    );
    out.push_str(&results.table());
    out.push('\n');
    if let Some(chart) = chart_file {
        let _ = writeln!(out, "![chart]({chart})\n");
    }
    let _ = writeln!(
        out,
        "## Rate limiting (issue 4)\n\n{}\n",
        results.rate_limit_summary()
    );
    if let Some(floor) = results.relay_floor() {
        let _ = writeln!(out, "## The relay floor (contender 5)\n\n{floor}");
    }
    out.push_str("## Targets (issue 5)\n\n| target | kokoa | verdict |\n|---|---|---|\n");
    for target in results.targets() {
        let verdict = match target.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {verdict} |",
            target.what,
            target.achieved.as_deref().unwrap_or("n/a")
        );
    }
    out.push_str("\n## Every round\n\n| load | contender | values |\n|---|---|---|\n");
    for metric in Metric::ALL {
        for contender in Contender::ALL {
            let values = results.values(contender, metric);
            if !values.is_empty() {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    metric.label().trim(),
                    contender.label(),
                    list(values)
                );
            }
        }
    }
    out.push_str("\n## Machine\n\n");
    let _ = writeln!(out, "- CPU: {}", info.cpu);
    let _ = writeln!(out, "- kernel: {}", info.kernel);
    for (tool, version) in &info.versions {
        let _ = writeln!(out, "- {tool}: {version}");
    }
    let _ = writeln!(
        out,
        "- idle connections: {}; load generators, edge and origin share the same cores",
        info.idle_connections
    );
    if !info.load_average.is_empty() {
        let loads: Vec<f64> = info.load_average.iter().map(|(_, _, l)| *l).collect();
        let max = loads.iter().copied().fold(f64::MIN, f64::max);
        let _ = writeln!(
            out,
            "- 1-minute load average before each contender's turn: median {:.2}, max {:.2} \
             (the load generator alone keeps it near the core count)",
            median(&loads).unwrap_or(0.0),
            max
        );
    }
    if !results.notes.is_empty() {
        out.push_str("\n## Notes from the run\n\n");
        for note in &results.notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

/// The samples of a committed report, read back from its "Every round" table (the medians,
/// ratios and chart derive from them), so a chart can be redrawn without rerunning the loads.
/// Fails when the report has no such table or a row names an unknown load or contender.
pub fn parse_every_round(markdown: &str) -> anyhow::Result<Results> {
    let section = markdown
        .split_once("\n## Every round\n")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("no \"## Every round\" section"))?;
    let mut results = Results::default();
    for line in section.lines() {
        if line.starts_with("## ") {
            break;
        }
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() != 3 || cells[0] == "load" || cells[0].starts_with("---") {
            continue;
        }
        let metric = Metric::ALL
            .into_iter()
            .find(|m| m.label().trim() == cells[0])
            .ok_or_else(|| anyhow::anyhow!("unknown load {:?}", cells[0]))?;
        let contender = Contender::ALL
            .into_iter()
            .find(|c| c.label() == cells[1])
            .ok_or_else(|| anyhow::anyhow!("unknown contender {:?}", cells[1]))?;
        for value in cells[2].split(',') {
            let value: f64 = value
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{:?} in {line:?}: {e}", value.trim()))?;
            results.add(contender, metric, value);
        }
    }
    anyhow::ensure!(
        !results.contenders().is_empty(),
        "the \"Every round\" section has no rows"
    );
    Ok(results)
}

/// `(year, month, day, hour, minute)` in UTC for seconds since the Unix epoch (Howard
/// Hinnant's civil-from-days).
pub fn civil_from_unix(secs: u64) -> (i64, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty_and_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratio_needs_a_nonzero_reference() {
        assert_eq!(ratio(10.0, Some(4.0)), Some(2.5));
        assert_eq!(ratio(10.0, Some(0.0)), None);
        assert_eq!(ratio(10.0, None), None);
    }

    fn sample() -> Results {
        let mut r = Results::default();
        for (c, v) in [
            (Contender::Kokoa, [300.0, 100.0, 200.0]),
            (Contender::NginxWireguard, [100.0, 100.0, 50.0]),
            (Contender::NginxDirect, [250.0, 250.0, 250.0]),
            (Contender::KokoaRateLimited, [190.0, 190.0, 190.0]),
        ] {
            for x in v {
                r.add(c, Metric::SmallRps, x);
            }
        }
        r.add(Contender::Kokoa, Metric::SmallP99Ms, 2.0);
        r.add(Contender::NginxWireguard, Metric::SmallP99Ms, 3.0);
        r.add(Contender::Kokoa, Metric::IdleEdgeKib, 25.0);
        r
    }

    #[test]
    fn table_shows_medians_and_ratios_to_contender_2() {
        let table = sample().table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| load | better | 1 kokoa | 2 nginx+wireguard-go | 3 nginx direct |"
        );
        assert_eq!(lines[1], "|---|---|---:|---:|---:|");
        assert_eq!(
            lines[2],
            "| small, HTTP/1.1 keep-alive, 64 conns (req/s) | higher | 200.0 (2.00x) | 100.0 | 250.0 (2.50x) |"
        );
        assert_eq!(
            lines[3],
            "| p99 latency (ms) | lower | 2.00 (0.67x) | 3.00 | n/a |"
        );
        // Rows without any sample are left out; the rate-limited variant has no column.
        assert_eq!(lines.len(), 5);
        assert!(!table.contains("rate limits on"));
    }

    #[test]
    fn targets_and_rate_limit_overhead() {
        let r = sample();
        let overhead = r.rate_limit_overhead_percent().expect("both measured");
        assert!((overhead - 5.0).abs() < 1e-9, "{overhead}");
        let summary = r.rate_limit_summary();
        assert!(summary.contains("overhead 5.0% (target < 5%: missed)"));
        // 190 lies inside 100..300: the report says the rounds overlap.
        assert!(
            summary.contains("The rounds overlap (disabled 100.0-300.0, enabled 190.0-190.0)"),
            "{summary}"
        );
        let mut apart = Results::default();
        for x in [300.0, 310.0, 305.0] {
            apart.add(Contender::Kokoa, Metric::SmallRps, x);
        }
        for x in [250.0, 260.0, 255.0] {
            apart.add(Contender::KokoaRateLimited, Metric::SmallRps, x);
        }
        let summary = apart.rate_limit_summary();
        assert!(summary.contains("(target < 5%: missed)"), "{summary}");
        assert!(!summary.contains("overlap"), "{summary}");
        let targets = r.targets();
        let small = &targets[0];
        assert_eq!(small.met, Some(true));
        assert_eq!(small.achieved.as_deref(), Some("2.00x"));
        let ceiling = &targets[1];
        assert_eq!(ceiling.met, Some(true), "200 >= 0.8 * 250");
        let h2 = &targets[2];
        assert_eq!(h2.met, None);
        let p99 = targets
            .iter()
            .find(|t| t.what.starts_with("p99"))
            .expect("p99");
        assert_eq!(p99.met, Some(true));
        let idle = targets.last().expect("idle");
        assert_eq!(idle.met, Some(false));
    }

    #[test]
    fn markdown_report_has_every_section() {
        let info = RunInfo {
            started: "2025-01-02 03:04 UTC".into(),
            command: "kokoa-bench compare".into(),
            rounds: 3,
            load_average: vec![(0, Contender::Kokoa, 1.5)],
            ..RunInfo::default()
        };
        let md = render_markdown(&info, &sample(), Some("x.svg"));
        for needle in [
            "# Load comparison, 2025-01-02 03:04 UTC",
            "![chart](x.svg)",
            "## Rate limiting (issue 4)",
            "## Targets (issue 5)",
            "| edge memory < 20 KiB per idle keep-alive connection | 25.0 KiB | **missed** |",
            "| small, HTTP/1.1 keep-alive, 64 conns (req/s) | 1 kokoa | 300.0, 100.0, 200.0 |",
            "median 1.50, max 1.50",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
    }

    #[test]
    fn the_relay_floor_compares_contender_5_with_3_and_kokoa_with_5() {
        let mut r = sample();
        assert_eq!(r.relay_floor(), None, "not measured: no section");
        assert!(!render_markdown(&RunInfo::default(), &r, None).contains("relay floor"));
        for x in [175.0, 180.0, 185.0] {
            r.add(Contender::NginxRelay, Metric::SmallRps, x);
        }
        let floor = r.relay_floor().expect("measured");
        // Direct 250, relay 180, Kokoa 200 (medians).
        assert!(
            floor.contains("| small, HTTP/1.1 keep-alive, 64 conns (req/s) | 0.72x | 1.11x |"),
            "{floor}"
        );
        assert!(
            floor.contains("| HTTP/2, 16 conns x 16 streams (req/s) | n/a | n/a |"),
            "{floor}"
        );
        let md = render_markdown(&RunInfo::default(), &r, None);
        assert!(md.contains("## The relay floor (contender 5)"), "{md}");
    }

    #[test]
    fn contender_keys_round_trip() {
        for c in Contender::ALL {
            assert_eq!(Contender::from_key(c.key()), Some(c));
        }
        assert_eq!(Contender::from_key("haproxy"), None);
    }

    #[test]
    fn every_round_reads_back_what_the_report_wrote() {
        let results = sample();
        let markdown = render_markdown(&RunInfo::default(), &results, None);
        let back = parse_every_round(&markdown).expect("parses");
        assert_eq!(back.contenders(), results.contenders());
        for metric in Metric::ALL {
            for contender in Contender::ALL {
                let written: Vec<String> = results
                    .values(contender, metric)
                    .iter()
                    .map(|v| format_value(*v))
                    .collect();
                let read: Vec<String> = back
                    .values(contender, metric)
                    .iter()
                    .map(|v| format_value(*v))
                    .collect();
                assert_eq!(read, written, "{contender:?} {metric:?}");
            }
        }
        assert_eq!(back.table(), results.table());
        assert!(parse_every_round("# no rounds here\n").is_err());
        assert!(parse_every_round(
            "x\n## Every round\n\n| load | contender | values |\n|---|---|---|\n\
             | warp speed | 1 kokoa | 1 |\n"
        )
        .is_err());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0));
        assert_eq!(civil_from_unix(1_735_787_045), (2025, 1, 2, 3, 4));
    }
}

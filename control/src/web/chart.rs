//! The health-history chart: one bar per check, oldest on the left, its height the response
//! time, failures as full-height red bars. Drawn on the server as an inline SVG, so it needs no
//! script and scales with the page; a title and a description say the same in words.

use std::fmt::Write as _;

use crate::store::HealthCheck;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 120.0;

/// The chart of `checks` (in any order; newest last on the chart).
pub fn health_history(checks: &[HealthCheck]) -> String {
    if checks.is_empty() {
        return "<p class=\"empty\">No health checks recorded yet.</p>".into();
    }
    let mut checks: Vec<&HealthCheck> = checks.iter().collect();
    checks.sort_by_key(|c| c.checked_at);
    let slowest = checks
        .iter()
        .filter(|c| c.success)
        .filter_map(|c| c.response_time_ms)
        .max()
        .unwrap_or(1)
        .max(1);
    let failures = checks.iter().filter(|c| !c.success).count();
    let slot = WIDTH / checks.len() as f64;
    let bar = (slot * 0.8).max(1.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" preserveAspectRatio=\"none\" \
         role=\"img\" aria-labelledby=\"chart-title chart-desc\">\
         <title id=\"chart-title\">Health history</title>\
         <desc id=\"chart-desc\">{} checks, {failures} failed; slowest successful check {slowest} ms.</desc>",
        checks.len()
    );
    for (i, check) in checks.iter().enumerate() {
        let x = i as f64 * slot + (slot - bar) / 2.0;
        let (height, class) = if check.success {
            let ms = check.response_time_ms.unwrap_or(0) as f64;
            ((ms / slowest as f64 * (HEIGHT - 10.0)).max(3.0), "ok")
        } else {
            (HEIGHT, "fail")
        };
        let _ = write!(
            svg,
            "<rect class=\"{class}\" x=\"{x:.2}\" y=\"{:.2}\" width=\"{bar:.2}\" height=\"{height:.2}\"></rect>",
            HEIGHT - height
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn check(success: bool, ms: u32, age: i64) -> HealthCheck {
        HealthCheck {
            id: uuid::Uuid::new_v4(),
            kind: None,
            target: None,
            edge_id: None,
            origin_id: None,
            service_id: None,
            success,
            response_time_ms: Some(ms),
            error: None,
            checked_at: OffsetDateTime::now_utc() - time::Duration::seconds(age),
        }
    }

    #[test]
    fn one_bar_per_check_failures_in_red() {
        let svg = health_history(&[check(true, 10, 3), check(false, 0, 2), check(true, 20, 1)]);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert_eq!(svg.matches("class=\"fail\"").count(), 1);
        assert!(svg.contains("3 checks, 1 failed"));
        // Oldest first: the failure is the middle bar.
        let classes: Vec<&str> = svg
            .split("<rect class=\"")
            .skip(1)
            .map(|s| &s[..2])
            .collect();
        assert_eq!(classes, ["ok", "fa", "ok"]);
        assert!(health_history(&[]).contains("No health checks"));
    }
}

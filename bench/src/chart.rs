//! The SVG chart of a comparison, drawn to be read at README width (~800 px): one small panel
//! per load, each on its own scale from zero in the load's own unit, so Nginx without a
//! tunnel (the ceiling, 12x contender 2 for bulk) does not flatten the differences among the
//! others. Panels are split into a "higher is better" group and a "lower is better" group;
//! every bar carries its value and its ratio to contender 2 (Nginx + wireguard-go).
//!
//! Plain SVG text written here (rects and `<text>`): no font files or plotting library needed,
//! and the output is stable enough to unit test.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::report::{format_value, parse_every_round, Contender, Metric, Results};

/// Width of the whole chart, px.
const WIDTH: u32 = 800;
const MARGIN: u32 = 10;
const COLUMNS: u32 = 2;
const PANEL_WIDTH: u32 = (WIDTH - 2 * MARGIN) / COLUMNS;
/// Name column, value-label column and bar area inside a panel.
const NAME_WIDTH: u32 = 78;
const VALUE_WIDTH: u32 = 96;
const BAR_AREA: u32 = PANEL_WIDTH - NAME_WIDTH - VALUE_WIDTH - 12;
const ROW: u32 = 17;
const PANEL_TITLE: u32 = 20;
const GROUP_TITLE: u32 = 26;

/// Colour and short name per contender (the rate-limited Kokoa run is not drawn: it only
/// measures the limiter's overhead, which the report gives as a sentence).
fn style(contender: Contender) -> Option<(&'static str, &'static str)> {
    Some(match contender {
        Contender::Kokoa => ("#d95f02", "1 kokoa"),
        Contender::NginxWireguard => ("#7570b3", "2 nginx+wg"),
        Contender::NginxDirect => ("#1b9e77", "3 direct"),
        Contender::NginxOnetun => ("#999999", "4 onetun"),
        Contender::NginxRelay => ("#e6ab02", "5 relay"),
        Contender::KokoaRateLimited => return None,
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The label after a bar: the median, and its ratio to contender 2 (`ref` on contender 2).
fn value_label(results: &Results, contender: Contender, metric: Metric) -> String {
    match results.median(contender, metric) {
        None => "n/a".to_owned(),
        Some(v) if contender == Contender::REFERENCE => format!("{} (ref)", format_value(v)),
        Some(v) => match results.ratio_to_reference(contender, metric) {
            Some(r) => format!("{} ({r:.2}x)", format_value(v)),
            None => format_value(v),
        },
    }
}

/// Draws the chart; returns the SVG document.
pub fn render(results: &Results) -> anyhow::Result<String> {
    let contenders: Vec<Contender> = results
        .contenders()
        .into_iter()
        .filter(|c| style(*c).is_some())
        .collect();
    let drawn = |m: &Metric| contenders.iter().any(|c| results.median(*c, *m).is_some());
    let higher: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| m.higher_is_better() && drawn(m))
        .collect();
    let lower: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| !m.higher_is_better() && drawn(m))
        .collect();
    anyhow::ensure!(
        !higher.is_empty() || !lower.is_empty(),
        "nothing to draw: no load has a result"
    );

    let panel_height = PANEL_TITLE + ROW * contenders.len() as u32 + 10;
    let group_height = |n: usize| {
        if n == 0 {
            0
        } else {
            GROUP_TITLE + panel_height * (n as u32).div_ceil(COLUMNS)
        }
    };
    let header = 62;
    let height = header + group_height(higher.len()) + group_height(lower.len()) + MARGIN;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{WIDTH}\" height=\"{height}\" fill=\"white\"/>\n\
         <text x=\"{MARGIN}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Kokoa against \
         Nginx + WireGuard and alternatives: medians, each load on its own scale</text>\n\
         <text x=\"{MARGIN}\" y=\"40\" fill=\"#444\">after each bar: the value and its ratio \
         to 2 (Nginx + wireguard-go); 3 (Nginx without a tunnel) is the ceiling</text>"
    );
    // Legend.
    let mut x = MARGIN;
    for contender in &contenders {
        let Some((color, _)) = style(*contender) else {
            continue;
        };
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"48\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"57\">{}</text>",
            x + 14,
            escape(contender.label())
        );
        x += 20 + 7 * contender.label().len() as u32;
    }

    let mut y = header;
    for (id, title, metrics) in [
        ("higher-is-better", "Higher is better (throughput)", &higher),
        (
            "lower-is-better",
            "Lower is better (latency, memory, CPU)",
            &lower,
        ),
    ] {
        if metrics.is_empty() {
            continue;
        }
        let _ = writeln!(
            svg,
            "<g id=\"{id}\">\n<line x1=\"{MARGIN}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" \
             stroke=\"#888\"/>\n<text x=\"{MARGIN}\" y=\"{}\" font-size=\"14\" \
             font-weight=\"bold\">{title}</text>",
            WIDTH - MARGIN,
            y + 18
        );
        let top = y + GROUP_TITLE;
        for (i, metric) in metrics.iter().enumerate() {
            let px = MARGIN + PANEL_WIDTH * (i as u32 % COLUMNS);
            let py = top + panel_height * (i as u32 / COLUMNS);
            panel(&mut svg, results, &contenders, *metric, px, py);
        }
        svg.push_str("</g>\n");
        y += group_height(metrics.len());
    }
    svg.push_str("</svg>\n");
    Ok(svg)
}

/// One load: its title, then a bar per contender scaled to the largest value of this load.
fn panel(
    svg: &mut String,
    results: &Results,
    contenders: &[Contender],
    metric: Metric,
    x: u32,
    y: u32,
) {
    let max = contenders
        .iter()
        .filter_map(|c| results.median(*c, metric))
        .fold(0.0_f64, f64::max);
    let _ = writeln!(
        svg,
        "<g class=\"panel\" data-load=\"{}\">\n<text x=\"{x}\" y=\"{}\" \
         font-weight=\"bold\">{}</text>",
        metric.short(),
        y + 14,
        escape(metric.label().trim())
    );
    for (row, contender) in contenders.iter().enumerate() {
        let Some((color, name)) = style(*contender) else {
            continue;
        };
        let ry = y + PANEL_TITLE + ROW * row as u32;
        let width = match results.median(*contender, metric) {
            Some(v) if max > 0.0 && v > 0.0 => ((v / max) * f64::from(BAR_AREA)).max(1.0),
            _ => 0.0,
        };
        let bar_x = x + NAME_WIDTH;
        let _ = writeln!(
            svg,
            "<text x=\"{x}\" y=\"{}\" fill=\"#333\">{name}</text>\
             <rect x=\"{bar_x}\" y=\"{}\" width=\"{width:.1}\" height=\"{}\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{}\" class=\"value\">{}</text>",
            ry + 12,
            ry + 2,
            ROW - 4,
            f64::from(bar_x) + width + 4.0,
            ry + 12,
            escape(&value_label(results, *contender, metric))
        );
    }
    svg.push_str("</g>\n");
}

/// Redraws the chart of a committed report (`bench/results/<name>.md`) from its "Every
/// round" table into a new file next to it, `<name>-chart.svg` (or `-chart-runN.svg` when
/// taken; an existing file is never replaced). Returns the new file's path.
pub fn rerender(report: &Path, out_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let markdown =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let results =
        parse_every_round(&markdown).with_context(|| format!("reading {}", report.display()))?;
    let svg = render(&results)?;
    let stem = report
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{} has no file name", report.display()))?;
    let dir = match out_dir {
        Some(dir) => dir.to_path_buf(),
        None => report
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let mut files = crate::files::create_new(&dir, &format!("{stem}-chart"), &["svg"])?;
    files.write("svg", svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        let mut results = Results::default();
        for (c, rps, down, p99) in [
            (Contender::Kokoa, 40802.0, 471.5, 2.99),
            (Contender::NginxWireguard, 24675.0, 90.13, 4.74),
            (Contender::NginxDirect, 58412.0, 1085.0, 2.21),
        ] {
            results.add(c, Metric::SmallRps, rps);
            results.add(c, Metric::BulkDownMBps, down);
            results.add(c, Metric::SmallP99Ms, p99);
        }
        results.add(Contender::KokoaRateLimited, Metric::SmallRps, 40000.0);
        results
    }

    /// The text between `<g id="ID">` and the end of the SVG or the next group.
    fn group<'a>(svg: &'a str, id: &str) -> &'a str {
        let start = svg
            .find(&format!("<g id=\"{id}\">"))
            .unwrap_or_else(|| panic!("no group {id}"));
        let rest = &svg[start..];
        let end = rest[1..].find("<g id=").map_or(rest.len(), |e| e + 1);
        &rest[..end]
    }

    #[test]
    fn bars_carry_their_values_and_ratios() {
        let svg = render(&results()).expect("renders");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        for label in [
            ">40802 (1.65x)</text>",
            ">24675 (ref)</text>",
            ">58412 (2.37x)</text>",
            ">471.5 (5.23x)</text>",
            ">1085 (12.04x)</text>",
            ">2.99 (0.63x)</text>",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        // The rate-limited run is a sentence in the report, not a bar.
        assert!(!svg.contains("rate limits on"));
        assert!(!svg.contains("40000"));
        assert_eq!(
            svg.matches("<g class=\"panel\"").count(),
            3,
            "one panel per load"
        );
    }

    #[test]
    fn higher_and_lower_is_better_are_separate_groups() {
        let svg = render(&results()).expect("renders");
        let higher = group(&svg, "higher-is-better");
        let lower = group(&svg, "lower-is-better");
        assert!(higher.contains("Higher is better"));
        assert!(higher.contains("data-load=\"h1 req/s\""));
        assert!(higher.contains("data-load=\"down MB/s\""));
        assert!(!higher.contains("data-load=\"p99\""));
        assert!(lower.contains("Lower is better"));
        assert!(lower.contains("data-load=\"p99\""));
        assert!(!lower.contains("req/s"));
    }

    #[test]
    fn each_load_has_its_own_scale_so_the_ceiling_does_not_flatten_the_rest() {
        let svg = render(&results()).expect("renders");
        let widths = |load: &str| -> Vec<f64> {
            let start = svg.find(&format!("data-load=\"{load}\"")).expect("panel");
            let panel = &svg[start..start + svg[start..].find("</g>").expect("end")];
            panel
                .split("<rect ")
                .skip(1)
                .map(|r| {
                    let w = r.split("width=\"").nth(1).expect("width");
                    w[..w.find('"').expect("quote")].parse().expect("number")
                })
                .collect()
        };
        // In each panel the largest bar spans the whole bar area.
        let down = widths("down MB/s");
        let h1 = widths("h1 req/s");
        assert_eq!(down[2], f64::from(BAR_AREA));
        assert_eq!(h1[2], f64::from(BAR_AREA));
        // Kokoa against contender 2 keeps its ratio within the panel, and stays readable
        // (not a sliver) even though the ceiling is 12x contender 2.
        // (Widths are written to 0.1 px.)
        assert!((down[0] / down[1] - 471.5 / 90.13).abs() < 0.05, "{down:?}");
        assert!(down[0] > 40.0, "{down:?}");
    }

    #[test]
    fn fits_readme_width_and_needs_no_fonts_on_disk() {
        let svg = render(&results()).expect("renders");
        // Nothing drawn past 800 px: every text, at a generous 7 px per character of a
        // 12 px sans-serif font, ends inside the chart.
        for text in svg.split("<text x=\"").skip(1) {
            let x: f64 = text[..text.find('"').expect("quote")].parse().expect("x");
            let content = &text[text.find('>').expect(">") + 1..text.find("</text>").expect("end")];
            if !content.starts_with("Kokoa against") {
                let end = x + 7.0 * content.chars().count() as f64;
                assert!(end <= f64::from(WIDTH), "{content:?} ends at {end}");
            }
        }
        assert!(!svg.contains("@font-face") && !svg.contains("url("));
    }

    #[test]
    fn nothing_to_draw_is_an_error() {
        assert!(render(&Results::default()).is_err());
    }

    #[test]
    fn rerender_writes_a_new_file_from_a_committed_report() {
        let dir = tempfile::tempdir().expect("temp dir");
        let report = dir.path().join("2026-11-25.md");
        let markdown =
            crate::report::render_markdown(&Default::default(), &results(), Some("2026-11-25.svg"));
        std::fs::write(&report, &markdown).expect("write");
        std::fs::write(dir.path().join("2026-11-25-chart.svg"), "older").expect("write");

        let path = rerender(&report, None).expect("rerenders");
        assert_eq!(path, dir.path().join("2026-11-25-chart-run2.svg"));
        let svg = std::fs::read_to_string(&path).expect("read");
        assert_eq!(svg, render(&results()).expect("renders"));
        let older = std::fs::read_to_string(dir.path().join("2026-11-25-chart.svg"));
        assert_eq!(older.expect("read"), "older");
        assert_eq!(std::fs::read_to_string(&report).expect("read"), markdown);
    }
}

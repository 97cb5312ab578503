//! The SVG chart of a comparison: for each load, one bar per contender showing its median as a
//! ratio to contender 2 (Nginx + wireguard-go), so loads with different units share one axis.
//! plotters' SVG backend writes `<text>` elements itself: no font files or fontconfig needed.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::report::{Contender, Metric, Results};

const COLORS: [RGBColor; 5] = [
    RGBColor(0xd9, 0x5f, 0x02), // kokoa
    RGBColor(0x75, 0x70, 0xb3), // nginx + wireguard-go
    RGBColor(0x1b, 0x9e, 0x77), // nginx direct
    RGBColor(0x99, 0x99, 0x99), // nginx + onetun
    RGBColor(0xe6, 0xab, 0x02), // nginx + plain relay
];

/// Draws the chart into `path`.
pub fn render(results: &Results, path: &Path) -> anyhow::Result<()> {
    let contenders: Vec<Contender> = results
        .contenders()
        .into_iter()
        .filter(|c| *c != Contender::KokoaRateLimited)
        .collect();
    let metrics: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| {
            contenders
                .iter()
                .any(|c| results.ratio_to_reference(*c, *m).is_some())
        })
        .collect();
    anyhow::ensure!(
        !metrics.is_empty(),
        "nothing to draw: no load has a result for contender 2"
    );
    let bars: Vec<(usize, usize, f64)> = metrics
        .iter()
        .enumerate()
        .flat_map(|(mi, m)| {
            contenders
                .iter()
                .enumerate()
                .filter_map(move |(ci, c)| results.ratio_to_reference(*c, *m).map(|r| (mi, ci, r)))
        })
        .collect();
    let top = bars
        .iter()
        .map(|(_, _, r)| *r)
        .fold(1.0_f64, f64::max)
        .min(50.0)
        * 1.15;

    let width = 140 * metrics.len() as u32 + 120;
    let root = SVGBackend::new(path, (width.max(800), 520)).into_drawing_area();
    root.fill(&WHITE).context("filling the chart")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Kokoa vs Nginx + WireGuard: median, as a ratio to contender 2 (higher bar = more \
             of the quantity; see the table for which direction is better)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..metrics.len() as f64, 0f64..top)
        .context("building the chart")?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("x contender 2")
        .label_style(("sans-serif", 13))
        .draw()
        .context("drawing the axes")?;
    // The 1.0 line: contender 2 itself.
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (metrics.len() as f64, 1.0)],
            BLACK.stroke_width(1),
        )))
        .context("drawing the reference line")?;
    let slot = 0.8 / contenders.len().max(1) as f64;
    for (ci, contender) in contenders.iter().enumerate() {
        let color = COLORS[Contender::ALL
            .iter()
            .position(|c| c == contender)
            .unwrap_or(0)
            .min(COLORS.len() - 1)];
        let series: Vec<Rectangle<(f64, f64)>> = bars
            .iter()
            .filter(|(_, c, _)| *c == ci)
            .map(|(mi, _, r)| {
                let x0 = *mi as f64 + 0.1 + slot * ci as f64;
                Rectangle::new([(x0, 0.0), (x0 + slot * 0.9, r.min(top))], color.filled())
            })
            .collect();
        chart
            .draw_series(series)
            .context("drawing bars")?
            .label(contender.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .context("drawing the legend")?;
    // Load names under each group, placed in pixels below the plotting area.
    for (mi, metric) in metrics.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(mi as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            metric.short(),
            (x - 4 * metric.short().len() as i32, y + 12),
            ("sans-serif", 13).into_font().color(&BLACK),
        ))
        .context("drawing a load name")?;
    }
    root.present().context("writing the SVG")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_bars_and_text_without_system_fonts() {
        let mut results = Results::default();
        for (c, v) in [
            (Contender::Kokoa, 300.0),
            (Contender::NginxWireguard, 100.0),
            (Contender::NginxDirect, 350.0),
        ] {
            results.add(c, Metric::SmallRps, v);
            results.add(c, Metric::BulkDownMBps, v / 2.0);
        }
        let dir = std::env::temp_dir().join(format!("kokoa-bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("chart.svg");
        render(&results, &path).expect("renders");
        let svg = std::fs::read_to_string(&path).expect("written");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for needle in [
            "h1 req/s",
            "down MB/s",
            "1 kokoa",
            "3 nginx direct",
            "<rect",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
    }
}

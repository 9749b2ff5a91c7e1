//! `mappo eval --plot FILE.svg`: the quality–cost curve of a router on an outcome corpus, with
//! each agent alone, random routing (the line between the weak and the strong agent), the
//! oracle and, when fit, the full-information ridge baseline. plotters' SVG backend (no fonts
//! needed at build or run time).

use std::path::Path;

use anyhow::{Result, bail};
use mappo_train::{CurvePoint, RoutingReport};
use plotters::prelude::*;

/// Draws `r` into `path` (SVG).
pub fn draw(r: &RoutingReport, path: &Path) -> Result<()> {
    if path.extension().and_then(|e| e.to_str()).is_none_or(|e| !e.eq_ignore_ascii_case("svg")) {
        bail!("--plot: only SVG is supported (a file name ending in .svg), got {}", path.display());
    }
    let xy = |p: &CurvePoint| (p.cost, p.quality);
    let mut pts: Vec<(f64, f64)> = r.summary.curve.iter().map(xy).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let base: Vec<(f64, f64)> =
        r.baseline.as_ref().map(|b| b.summary.curve.iter().map(xy).collect()).unwrap_or_default();
    let singles: Vec<(String, f64, f64)> =
        r.agents.iter().map(|s| (s.agent.clone(), s.cost, s.quality)).collect();
    let all_x =
        pts.iter().chain(&base).map(|p| p.0).chain(singles.iter().map(|s| s.1)).chain([r.oracle.cost]);
    let all_y =
        pts.iter().chain(&base).map(|p| p.1).chain(singles.iter().map(|s| s.2)).chain([r.oracle_quality]);
    let (x0, x1) = all_x.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (y0, y1) = all_y.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let pad_x = ((x1 - x0) * 0.05).max(1e-6);
    let pad_y = ((y1 - y0) * 0.08).max(1e-3);

    let root = SVGBackend::new(path, (800, 560)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let apgr = r.summary.apgr.map(|a| format!("{a:.3}")).unwrap_or_else(|| "-".into());
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("quality vs cost per request (mappo APGR {apgr})"), ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((x0 - pad_x)..(x1 + pad_x), (y0 - pad_y)..(y1 + pad_y))
        .map_err(e)?;
    chart.configure_mesh().x_desc("mean cost per request").y_desc("mean quality").draw().map_err(e)?;
    let (w, s) =
        (singles.iter().find(|a| a.0 == r.weak).cloned(), singles.iter().find(|a| a.0 == r.strong).cloned());
    if let (Some(w), Some(s)) = (w, s) {
        chart
            .draw_series(LineSeries::new([(w.1, w.2), (s.1, s.2)], BLACK.mix(0.5)))
            .map_err(e)?
            .label("random routing")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.mix(0.5)));
    }
    chart
        .draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2)))
        .map_err(e)?
        .label("mappo (λ sweep)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 2, BLUE.filled()))).map_err(e)?;
    if !base.is_empty() {
        let mut b = base.clone();
        b.sort_by(|a, c| a.0.total_cmp(&c.0));
        chart
            .draw_series(LineSeries::new(b, RED.stroke_width(1)))
            .map_err(e)?
            .label("ridge (full information)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    }
    for (name, c, q) in &singles {
        chart.draw_series([Circle::new((*c, *q), 6, BLACK.filled())]).map_err(e)?;
        chart.draw_series([Text::new(name.clone(), (*c, *q), ("sans-serif", 14).into_font())]).map_err(e)?;
    }
    chart
        .draw_series([TriangleMarker::new((r.oracle.cost, r.oracle_quality), 8, GREEN.filled())])
        .map_err(e)?
        .label("oracle")
        .legend(|(x, y)| TriangleMarker::new((x + 8, y), 5, GREEN.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

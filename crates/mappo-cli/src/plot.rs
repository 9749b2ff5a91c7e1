//! Drawing into image files, shared by the commands that plot: the embedded font and the
//! backend chosen by the file's extension ([`save`]), plotters' SVG or bitmap backend; text is
//! laid out (and, in a PNG, drawn) with DejaVu Sans embedded in the binary, so no system font is
//! needed. Also `mappo eval --plot FILE.png|FILE.svg`: the quality–cost curve of a router on an
//! outcome corpus, with each agent alone, random routing (the line between the weak and the
//! strong agent), the oracle and, when fit, the full-information ridge baseline. (`mappo plot`'s
//! training curves are in `curves.rs`.)

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, bail};
use mappo_eval::{CurvePoint, RoutingReport};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Image size of `eval --plot` in pixels.
const SIZE: (u32, u32) = (800, 560);

/// Something drawn into an image file by [`save`].
pub trait Figure {
    /// Draws onto `root` (already sized); `path` names the file in errors.
    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, path: &Path) -> Result<()>;
}

/// The image formats [`save`] writes, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

/// The format `path`'s extension asks for; `flag` names the option in the error.
pub fn format_of(path: &Path, flag: &str) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => bail!("{flag}: give a file name ending in .png or .svg, got {}", path.display()),
    }
}

/// Draws `figure` (`size` pixels) into `path`: an SVG for `.svg`, a PNG for `.png`.
pub fn save(figure: &impl Figure, path: &Path, size: (u32, u32), flag: &str) -> Result<()> {
    let format = format_of(path, flag)?;
    font(flag)?;
    match format {
        Format::Svg => figure.render(SVGBackend::new(path, size).into_drawing_area(), path),
        Format::Png => figure.render(BitMapBackend::new(path, size).into_drawing_area(), path),
    }
}

/// Maps plotters' errors to one naming the file being drawn.
pub fn drawing_error<E: std::error::Error + Send + Sync>(
    path: &Path,
) -> impl Fn(DrawingAreaErrorKind<E>) -> anyhow::Error + Copy + '_ {
    move |e| anyhow::anyhow!("drawing {}: {e}", path.display())
}

/// Registers the embedded DejaVu Sans as plotters' "sans-serif" (once per process).
fn font(flag: &str) -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if !ok {
        bail!("{flag}: the embedded font could not be loaded");
    }
    Ok(())
}

/// Draws `r` into `path`: a PNG for `.png`, an SVG for `.svg`.
pub fn draw(r: &RoutingReport, path: &Path) -> Result<()> {
    save(r, path, SIZE, "--plot")
}

impl Figure for RoutingReport {
    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, path: &Path) -> Result<()> {
        render(root, self, path)
    }
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &RoutingReport, path: &Path) -> Result<()> {
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

    let e = drawing_error::<DB::ErrorType>(path);
    root.fill(&WHITE).map_err(e)?;
    let apgr = r.summary.apgr.map(|a| format!("{a:.3}")).unwrap_or_else(|| "-".into());
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("quality vs cost per request (mappo APGR {apgr})"), ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        // Room on the right for the most expensive agent's name.
        .build_cartesian_2d((x0 - pad_x)..(x1 + 3.0 * pad_x), (y0 - pad_y)..(y1 + pad_y))
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

//! `mappo plot RUN_DIR... [--output FILE.svg|FILE.png] [--x update|seconds] [--json]`: the
//! training curves of runs from their `metrics.jsonl` (read by `mappo_train::metrics`), one
//! panel per series any run logged, the runs overlaid in distinct colours.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use mappo_train::metrics::{self, MetricsLog, Point, SERIES, Series, SeriesSpec};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::json;

use crate::args::{PlotArgs, XAxis};
use crate::outln;
use crate::plot::{Figure, drawing_error, format_of, save};

/// One panel's size in pixels.
const PANEL: (u32, u32) = (420, 270);
/// Panels per row (fewer when there are fewer panels).
const COLUMNS: usize = 3;
/// The title's band; each run's legend line adds [`LEGEND_LINE`].
const TITLE_HEIGHT: u32 = 40;
const LEGEND_LINE: u32 = 20;
/// The runs' colours (matplotlib's tab10), in the order the runs are given.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A run read for plotting.
struct Run {
    dir: PathBuf,
    log: MetricsLog,
}

/// The figure: one panel per plotted series.
struct Curves<'a> {
    runs: &'a [Run],
    plotted: Vec<SeriesSpec>,
    x: XAxis,
}

pub fn plot(a: PlotArgs) -> Result<()> {
    let outputs = match (a.output.is_empty(), a.runs.as_slice()) {
        (false, _) => a.output.clone(),
        (true, [one]) => vec![one.join("curves.svg")],
        (true, _) => bail!("{} runs to overlay: say where with --output FILE.svg|FILE.png", a.runs.len()),
    };
    for o in &outputs {
        format_of(o, "--output")?;
    }
    let runs = a.runs.iter().map(|d| read_run(d)).collect::<Result<Vec<_>>>()?;
    let plotted: Vec<SeriesSpec> =
        SERIES.iter().filter(|s| runs.iter().any(|r| r.log.series(s.name).is_some())).copied().collect();
    let left_out: Vec<&str> =
        SERIES.iter().filter(|s| !plotted.iter().any(|p| p.name == s.name)).map(|s| s.name).collect();
    let names: Vec<&str> = plotted.iter().map(|s| s.name).collect();
    let figure = Curves { runs: &runs, plotted, x: a.x };
    let size = figure.size();
    for o in &outputs {
        save(&figure, o, size, "--output")?;
    }
    tracing::info!(
        "{} series drawn for {} run(s): {}{}",
        names.len(),
        runs.len(),
        names.join(", "),
        if left_out.is_empty() {
            String::new()
        } else {
            format!(" (left out, not logged or mean_return repeating mean_reward: {})", left_out.join(", "))
        }
    );
    if a.json {
        let report = json!({
            "outputs": outputs,
            "x": match a.x { XAxis::Update => "update", XAxis::Seconds => "seconds" },
            "width": size.0,
            "height": size.1,
            "plotted": names,
            "left_out": left_out,
            "runs": runs.iter().enumerate().map(|(i, r)| run_json(i, r)).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        for o in &outputs {
            outln!("{}", o.display());
        }
    }
    Ok(())
}

fn read_run(dir: &Path) -> Result<Run> {
    if !dir.exists() {
        bail!("{}: no such run directory", dir.display());
    }
    if !dir.is_dir() {
        bail!("{}: not a directory: give the run directory `mappo train --out` wrote", dir.display());
    }
    let path = dir.join(metrics::FILE);
    if !path.is_file() {
        bail!(
            "{}: no {} in it: not a run directory of `mappo train`, or a run that has not logged its \
             first update yet (a line every train.log_interval updates)",
            dir.display(),
            metrics::FILE
        );
    }
    let log = MetricsLog::read(&path)?;
    if let Some(line) = log.truncated_line {
        tracing::warn!("{}: line {line} is cut short (a crash mid-write?) and is left out", path.display());
    }
    Ok(Run { dir: dir.to_path_buf(), log })
}

fn run_json(i: usize, r: &Run) -> serde_json::Value {
    let c = colour(i);
    json!({
        "dir": r.dir,
        "colour": format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2),
        "update_lines": r.log.update_lines,
        "eval_lines": r.log.eval_lines,
        "truncated_line": r.log.truncated_line,
        "series": r.log.series.iter().map(|s| json!({
            "name": s.spec.name,
            "points": s.points.len(),
            "first": s.points.first(),
            "last": s.points.last(),
        })).collect::<Vec<_>>(),
    })
}

fn colour(run: usize) -> RGBColor {
    COLOURS[run % COLOURS.len()]
}

impl Curves<'_> {
    fn columns(&self) -> usize {
        self.plotted.len().clamp(1, COLUMNS)
    }

    fn header_height(&self) -> u32 {
        TITLE_HEIGHT + LEGEND_LINE * self.runs.len() as u32 + 8
    }

    fn size(&self) -> (u32, u32) {
        let rows = self.plotted.len().div_ceil(self.columns()).max(1);
        (PANEL.0 * self.columns() as u32, self.header_height() + PANEL.1 * rows as u32)
    }

    fn x_of(&self, p: &Point) -> f64 {
        match self.x {
            XAxis::Update => p.update as f64,
            XAxis::Seconds => p.seconds,
        }
    }

    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        spec: &SeriesSpec,
        path: &Path,
    ) -> Result<()> {
        let e = drawing_error::<DB::ErrorType>(path);
        let lines: Vec<(usize, &Series)> = self
            .runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.log.series(spec.name).map(|s| (i, s)))
            .collect();
        let points = || lines.iter().flat_map(|(_, s)| &s.points);
        let (x0, x1) = span(points().map(|p| self.x_of(p)));
        let (y0, y1) = span(points().map(|p| p.value));
        let (x0, x1) = pad(x0, x1, 0.0);
        let (y0, y1) = pad(y0, y1, 0.06);
        let x_desc = match self.x {
            XAxis::Update => "update",
            XAxis::Seconds => "training seconds",
        };
        // Updates are whole numbers: ticks at least a unit apart.
        let x_width = if self.x == XAxis::Update { (x1 - x0).max(5.0) } else { x1 - x0 };
        let mut chart = ChartBuilder::on(area)
            .caption(spec.title, ("sans-serif", 15))
            .margin(8)
            .margin_right(18)
            .x_label_area_size(36)
            .y_label_area_size(62)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_labels(5)
            .y_labels(5)
            .x_desc(x_desc)
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 12))
            .x_label_formatter(&|v| tick(*v, x_width))
            .y_label_formatter(&|v| tick(*v, y1 - y0))
            .light_line_style(WHITE)
            .draw()
            .map_err(e)?;
        for (i, s) in &lines {
            let xy: Vec<(f64, f64)> = s.points.iter().map(|p| (self.x_of(p), p.value)).collect();
            if let [only] = xy.as_slice() {
                chart.draw_series([Circle::new(*only, 3, colour(*i).filled())]).map_err(e)?;
            }
            chart.draw_series(LineSeries::new(xy, colour(*i).stroke_width(2))).map_err(e)?;
        }
        Ok(())
    }
}

impl Figure for Curves<'_> {
    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, path: &Path) -> Result<()> {
        let e = drawing_error::<DB::ErrorType>(path);
        root.fill(&WHITE).map_err(e)?;
        let (header, body) = root.split_vertically(self.header_height());
        let by = match self.x {
            XAxis::Update => "by update",
            XAxis::Seconds => "by training seconds",
        };
        header.draw(&Text::new(format!("training curves, {by}"), (14, 10), ("sans-serif", 20))).map_err(e)?;
        for (i, run) in self.runs.iter().enumerate() {
            let y = (TITLE_HEIGHT + LEGEND_LINE * i as u32) as i32;
            header.draw(&Rectangle::new([(16, y + 7), (44, y + 11)], colour(i).filled())).map_err(e)?;
            let label = run.dir.display().to_string();
            header.draw(&Text::new(label, (52, y), ("sans-serif", 15))).map_err(e)?;
        }
        let rows = self.plotted.len().div_ceil(self.columns()).max(1);
        let cells = body.split_evenly((rows, self.columns()));
        for (spec, cell) in self.plotted.iter().zip(&cells) {
            self.panel(cell, spec, path)?;
        }
        root.present().map_err(e)?;
        Ok(())
    }
}

/// The least and greatest of `values`.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)))
}

/// Widens `[lo, hi]` by `share` of its width on each side, or around a single value.
fn pad(lo: f64, hi: f64, share: f64) -> (f64, f64) {
    let w = hi - lo;
    if w > 0.0 {
        (lo - share * w, hi + share * w)
    } else {
        // A lone x (one logged update) gets ±0.5; a flat y ±5% of itself, at least ±0.001.
        let d = (lo.abs() * 0.05).max(if share == 0.0 { 0.5 } else { 1e-3 });
        (lo - d, hi + d)
    }
}

/// Decimals that tell ticks a fifth of `width` apart.
fn decimals(width: f64) -> i32 {
    let step = width / 5.0;
    if step > 0.0 && step.is_finite() { (-step.log10().floor()).clamp(0.0, 9.0) as i32 } else { 2 }
}

/// A tick label on an axis `width` wide: with the decimals that tell ticks apart, or in
/// scientific notation for very small or large values; 0 for what is 0 but for rounding.
fn tick(v: f64, width: f64) -> String {
    let (a, decimals) = (v.abs(), decimals(width));
    if a <= width * 1e-9 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        let digits = (decimals + a.log10().floor() as i32).clamp(1, 4) as usize;
        format!("{v:.digits$e}")
    } else {
        format!("{v:.*}", decimals as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_told_apart_and_ranges_never_collapse() {
        assert_eq!(tick(0.25, 0.2), "0.25");
        assert_eq!(tick(0.4, 1.0), "0.4");
        assert_eq!(tick(1500.0, 2000.0), "1500");
        assert_eq!(tick(0.00012, 0.0001), "1.2e-4");
        assert_eq!(tick(5e-7, 1.2e-6), "5.0e-7");
        assert_eq!(tick(0.0, 1.0), "0");
        assert_eq!(tick(-2.8e-17, 0.15), "0", "rounding noise is 0");
        // Close values keep the digits that tell them apart.
        assert_eq!(tick(1.38615, 0.00025), "1.38615");
        let (lo, hi) = pad(3.0, 3.0, 0.06);
        assert!(lo < 3.0 && hi > 3.0);
        let (lo, hi) = pad(0.0, 0.0, 0.0);
        assert!(lo < 0.0 && hi > 0.0);
        assert_eq!(pad(0.0, 10.0, 0.0), (0.0, 10.0));
    }
}

//! `GET /ui`: the dashboard — one server-rendered HTML page with inline SVG charts (plotters),
//! drawn from the decision log ([`mappo_log::DecisionLog::dashboard`]), so every replica shows
//! the same picture. No JavaScript: the refresh is a `<meta http-equiv="refresh">`.
//!
//! Panels, each an element with a stable id and its key numbers as `data-*` attributes and
//! tables (what tests and scripts read): `#decisions` (per bucket and agent, stacked; the shares
//! of sampled, greedy and forced decisions), `#reward` (mean reward per bucket with its 95%
//! interval; the share rewarded), `#versions` (published versions and gate decisions on the
//! time axis, as a table too; the shadow's agreement), `#ope` (the newest gate decision's
//! estimates of the candidate and the current version), `#cost` (the cost weight λ over time)
//! and `#recent` (the newest 50 decisions).
//!
//! Query parameters: `minutes` (the range back from now, default 60, clamped to 1..=43200),
//! `bucket` (seconds per bucket, default about 60 buckets, at most [`MAX_BUCKETS`] buckets) and
//! `refresh` (seconds, 0 = never, the default); anything else is 422.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use mappo_log::{Dashboard, DashboardQuery, DecisionKind, GateRecord, Tally, Timestamp, share};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::ApiError;
use crate::state::AppState;

/// The most buckets a page may ask for.
pub(crate) const MAX_BUCKETS: i64 = 1000;
/// The longest range, in minutes (30 days).
const MAX_MINUTES: i64 = 43_200;
/// The longest refresh period, in seconds.
const MAX_REFRESH: i64 = 86_400;
/// Chart size in pixels.
const SIZE: (u32, u32) = (880, 240);
/// The fine grid lines.
const LIGHT: RGBColor = RGBColor(242, 242, 242);
/// Series colours, one per agent in name order (then repeated).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The charts over the time axis.
type TimeChart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The y axis of a time chart and the chart's height.
struct Axis {
    height: u32,
    y: std::ops::Range<f64>,
    desc: &'static str,
    labels: usize,
    format: fn(&f64) -> String,
}

fn whole(v: &f64) -> String {
    format!("{v:.0}")
}

fn decimal(v: &f64) -> String {
    format!("{v:.2}")
}

/// The page's query parameters, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UiParams {
    /// The range back from now, in minutes.
    pub minutes: i64,
    /// Seconds per bucket.
    pub bucket: i64,
    /// Seconds between reloads; 0: none.
    pub refresh: i64,
}

impl UiParams {
    /// Parses `minutes`, `bucket` and `refresh` from a query string: integers; `minutes` is
    /// clamped to 1..=43200; `bucket` must give at most [`MAX_BUCKETS`] buckets (default: the
    /// range in about 60); `refresh` is 0..=86400. Anything else (another name, a repeated
    /// name, not an integer) is an error message.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, String> {
        let (mut minutes, mut bucket, mut refresh) = (None, None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "minutes" => &mut minutes,
                "bucket" => &mut bucket,
                "refresh" => &mut refresh,
                other => {
                    return Err(format!(
                        "unknown query parameter `{:.40}`: use minutes, bucket and refresh",
                        other
                    ));
                }
            };
            if slot.is_some() {
                return Err(format!("query parameter `{name}` given twice"));
            }
            let v: i64 = value
                .parse()
                .map_err(|_| format!("query parameter `{name}` must be an integer, got `{value:.40}`"))?;
            *slot = Some(v);
        }
        let minutes = minutes.unwrap_or(60).clamp(1, MAX_MINUTES);
        let range_s = minutes * 60;
        let bucket = match bucket {
            None => (range_s / 60).max(1),
            Some(b) if b < 1 => return Err(format!("bucket must be at least 1 second, got {b}")),
            Some(b) => b.min(range_s),
        };
        let buckets = (range_s + bucket - 1) / bucket;
        if buckets > MAX_BUCKETS {
            return Err(format!(
                "bucket = {bucket} s makes {buckets} buckets of {minutes} minutes: at most {MAX_BUCKETS} \
                 (bucket ≥ {} s)",
                (range_s + MAX_BUCKETS - 1) / MAX_BUCKETS
            ));
        }
        let refresh = refresh.unwrap_or(0);
        if !(0..=MAX_REFRESH).contains(&refresh) {
            return Err(format!("refresh must be 0 (never) to {MAX_REFRESH} seconds, got {refresh}"));
        }
        Ok(UiParams { minutes, bucket, refresh })
    }
}

/// A chart that could not be drawn (the page shows the message in its place).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChartError {
    /// plotters failed.
    #[error("drawing the chart failed: {0}")]
    Draw(String),
    /// The embedded font could not be registered.
    #[error("the embedded font could not be loaded")]
    Font,
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Registers the embedded DejaVu Sans as plotters' "sans-serif" (once per process).
fn font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok { Ok(()) } else { Err(ChartError::Font) }
}

/// `GET /ui`: the dashboard of the last `minutes`.
pub(crate) async fn ui(State(st): State<Arc<AppState>>, uri: Uri) -> Result<Response, ApiError> {
    let params = UiParams::parse(uri.query()).map_err(ApiError::unprocessable)?;
    let now = Timestamp::now();
    let q = DashboardQuery::last_minutes(now, params.minutes, params.bucket);
    let dash = st.db_read(st.log.dashboard(&q)).await?;
    let page = Page { dash: &dash, params, now, replica: &st.replica, serving: st.engine.version() };
    let mut resp = Html(page.render()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(resp)
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A float for a `data-*` attribute (Rust's shortest round-trip form), empty for `None`.
fn num(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// A float for people: 3 decimals, `–` for `None`.
fn show(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

/// The time of day of `t`, UTC, to the millisecond (`12:09:00.123`).
fn clock(t: Timestamp) -> String {
    let full = t.to_rfc3339();
    let time = full.split_once('T').map_or(full.as_str(), |(_, time)| time).trim_end_matches('Z');
    time.char_indices().nth(12).map_or(time, |(i, _)| &time[..i]).to_string()
}

/// Minutes from `now` (negative: before).
fn minutes_before(t: Timestamp, now: Timestamp) -> f64 {
    (t.0 - now.0) as f64 / 60e6
}

struct Page<'a> {
    dash: &'a Dashboard,
    params: UiParams,
    now: Timestamp,
    replica: &'a str,
    serving: i64,
}

impl Page<'_> {
    fn render(&self) -> String {
        let mut h = String::with_capacity(64 * 1024);
        let p = self.params;
        let _ = write!(
            h,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>mappo serve · dashboard</title>"
        );
        if p.refresh > 0 {
            let _ = write!(h, "<meta http-equiv=\"refresh\" content=\"{}\">", p.refresh);
        }
        h.push_str(STYLE);
        let _ = write!(
            h,
            "</head><body><header id=\"range\" data-minutes=\"{}\" data-bucket-seconds=\"{}\" \
             data-refresh=\"{}\" data-from-us=\"{}\" data-to-us=\"{}\" data-now=\"{}\">\
             <h1>mappo serve</h1><p>replica <b>{}</b> · serving policy version <b>{}</b> · the last {} \
             minutes in buckets of {} s · {}</p>",
            p.minutes,
            p.bucket,
            p.refresh,
            self.dash.query.from.0,
            self.dash.query.to.0,
            esc(&self.now.to_rfc3339()),
            esc(self.replica),
            self.serving,
            p.minutes,
            p.bucket,
            esc(&self.now.to_rfc3339()),
        );
        let _ = write!(
            h,
            "<form method=\"get\"><label>minutes <input name=\"minutes\" type=\"number\" min=\"1\" \
             max=\"{MAX_MINUTES}\" value=\"{}\"></label> <label>bucket (s) <input name=\"bucket\" \
             type=\"number\" min=\"1\" value=\"{}\"></label> <label>refresh (s, 0 = never) <input \
             name=\"refresh\" type=\"number\" min=\"0\" value=\"{}\"></label> <button>show</button></form>",
            p.minutes, p.bucket, p.refresh
        );
        if let Some(cut) = self.dash.cut_at {
            let _ = write!(
                h,
                "<p class=\"warn\" id=\"cut\" data-cut-us=\"{}\" data-max-decisions=\"{}\">The range holds \
                 more than {} decisions: the aggregates cover only the newest {} (after {}).</p>",
                cut.0,
                self.dash.query.max_decisions,
                self.dash.query.max_decisions,
                self.dash.query.max_decisions,
                esc(&cut.to_rfc3339())
            );
        }
        h.push_str("</header><main>");
        let total = self.dash.total();
        self.decisions(&mut h, &total);
        self.reward(&mut h, &total);
        self.versions(&mut h, &total);
        self.ope(&mut h);
        self.cost(&mut h, &total);
        self.recent(&mut h);
        h.push_str("</main></body></html>\n");
        h
    }

    /// The chart, or the reason it is missing, in a `<figure>`.
    fn figure(h: &mut String, chart: Result<String, ChartError>) {
        match chart {
            Ok(svg) => {
                h.push_str("<figure>");
                h.push_str(&svg);
                h.push_str("</figure>");
            }
            Err(e) => {
                let _ = write!(h, "<p class=\"warn chart-error\">{}</p>", esc(&e.to_string()));
            }
        }
    }

    /// The x range of the time charts: the first bucket's start to now, in minutes.
    fn x_range(&self) -> std::ops::Range<f64> {
        let first = self.dash.query.bucket_of(self.dash.query.from);
        minutes_before(first, self.now)..0.0
    }

    fn bucket_minutes(&self) -> f64 {
        self.dash.query.bucket_us as f64 / 60e6
    }

    fn decisions(&self, h: &mut String, t: &Tally) {
        let _ = write!(
            h,
            "<section id=\"decisions\" data-decisions=\"{}\" data-sampled=\"{}\" data-greedy=\"{}\" \
             data-forced=\"{}\" data-sampled-share=\"{}\" data-greedy-share=\"{}\" data-forced-share=\"{}\">\
             <h2>Decisions</h2><p>{} decisions: sampled (exploration) {} · greedy {} · forced {}</p>",
            t.decisions,
            t.sampled,
            t.greedy,
            t.forced,
            share(t.sampled, t.decisions),
            share(t.greedy, t.decisions),
            share(t.forced, t.decisions),
            t.decisions,
            pct(share(t.sampled, t.decisions)),
            pct(share(t.greedy, t.decisions)),
            pct(share(t.forced, t.decisions)),
        );
        Self::figure(h, self.decisions_chart());
        h.push_str(
            "<table class=\"agents\"><thead><tr><th>agent</th><th>decisions</th><th>share</th>\
             <th>rewarded</th><th>mean reward</th></tr></thead><tbody>",
        );
        for (i, (agent, a)) in self.dash.by_agent().iter().enumerate() {
            let RGBColor(r, g, b) = PALETTE[i % PALETTE.len()];
            let mean = a.reward().map(|m| m.mean);
            let _ = write!(
                h,
                "<tr data-agent=\"{}\" data-decisions=\"{}\" data-rewarded=\"{}\" data-reward-mean=\"{}\">\
                 <td><span class=\"key\" style=\"background:rgb({r},{g},{b})\"></span>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(agent),
                a.decisions,
                a.rewarded,
                num(mean),
                esc(agent),
                a.decisions,
                pct(share(a.decisions, t.decisions)),
                a.rewarded,
                show(mean),
            );
        }
        h.push_str("</tbody></table></section>");
    }

    fn decisions_chart(&self) -> Result<String, ChartError> {
        let series = self.dash.agent_series();
        let buckets = self.dash.query.buckets();
        let width = self.bucket_minutes();
        let top = (0..buckets.len())
            .map(|i| series.values().map(|v| v.get(i).copied().unwrap_or(0)).sum::<i64>())
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let axis = Axis {
            height: SIZE.1,
            y: 0.0..top * 1.05,
            desc: "decisions per bucket",
            labels: 6,
            format: whole,
        };
        self.time_chart(axis, |chart| {
            let mut base = vec![0i64; buckets.len()];
            for (i, counts) in series.values().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let mut bars = Vec::new();
                for ((&b, &n), y0) in
                    buckets.iter().zip(counts).zip(base.iter_mut()).filter(|((_, n), _)| **n > 0)
                {
                    let x0 = minutes_before(b, self.now);
                    bars.push(Rectangle::new(
                        [(x0, *y0 as f64), (x0 + width, (*y0 + n) as f64)],
                        color.filled(),
                    ));
                    *y0 += n;
                }
                chart.draw_series(bars).map_err(draw_err)?;
            }
            Ok(())
        })
    }

    /// A chart over the range's time axis (minutes before now); `draw` adds the series.
    fn time_chart(
        &self,
        axis: Axis,
        draw: impl FnOnce(&mut TimeChart<'_, '_>) -> Result<(), ChartError>,
    ) -> Result<String, ChartError> {
        font()?;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (SIZE.0, axis.height)).into_drawing_area();
            root.fill(&WHITE).map_err(draw_err)?;
            let mut chart = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(34)
                .y_label_area_size(56)
                .build_cartesian_2d(self.x_range(), axis.y)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc("minutes before now")
                .x_label_formatter(&|v| format!("{}", (v * 10.0).round() / 10.0 + 0.0))
                .y_desc(axis.desc)
                .y_labels(axis.labels)
                .y_label_formatter(&axis.format)
                .light_line_style(LIGHT)
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(draw_err)?;
            draw(&mut chart)?;
            root.present().map_err(draw_err)?;
        }
        Ok(svg)
    }

    /// A chart of a mean per bucket with its interval (`per_bucket`: the mean and the interval's
    /// ends of a bucket's decisions, `None` to leave it out), in `color`, with a dot on each mean
    /// when `dots`.
    fn interval_chart(
        &self,
        per_bucket: impl Fn(&Tally) -> Option<(f64, f64, f64)>,
        height: u32,
        desc: &'static str,
        color: RGBColor,
        dots: bool,
    ) -> Result<String, ChartError> {
        let half = self.bucket_minutes() / 2.0;
        let points: Vec<(f64, f64, f64, f64)> = self
            .dash
            .by_bucket()
            .iter()
            .filter_map(|(b, t)| {
                per_bucket(t).map(|(m, l, u)| (minutes_before(*b, self.now) + half, m, l, u))
            })
            .collect();
        let (lo, hi) =
            points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.2), b.max(p.3)));
        let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.08).max(0.05);
        let axis = Axis { height, y: (lo - pad)..(hi + pad), desc, labels: 6, format: decimal };
        self.time_chart(axis, |chart| {
            chart
                .draw_series(
                    points.iter().map(|&(x, _, l, u)| PathElement::new([(x, l), (x, u)], color.mix(0.5))),
                )
                .map_err(draw_err)?;
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|&(x, m, _, _)| (x, m)),
                    color.stroke_width(2),
                ))
                .map_err(draw_err)?;
            if dots {
                chart
                    .draw_series(points.iter().map(|&(x, m, _, _)| Circle::new((x, m), 3, color.filled())))
                    .map_err(draw_err)?;
            }
            Ok(())
        })
    }

    fn reward(&self, h: &mut String, t: &Tally) {
        let m = t.reward();
        let _ = write!(
            h,
            "<section id=\"reward\" data-rewarded=\"{}\" data-rewarded-share=\"{}\" data-reward-mean=\"{}\" \
             data-reward-low=\"{}\" data-reward-high=\"{}\"><h2>Reward</h2><p>{} of {} decisions rewarded \
             ({}) · mean reward {} (95% interval {} to {})</p>",
            t.rewarded,
            t.rewarded_share(),
            num(m.map(|m| m.mean)),
            num(m.map(|m| m.low)),
            num(m.map(|m| m.high)),
            t.rewarded,
            t.decisions,
            pct(t.rewarded_share()),
            show(m.map(|m| m.mean)),
            show(m.map(|m| m.low)),
            show(m.map(|m| m.high)),
        );
        Self::figure(h, self.reward_chart());
        h.push_str("</section>");
    }

    fn reward_chart(&self) -> Result<String, ChartError> {
        let mean = |t: &Tally| t.reward().map(|m| (m.mean, m.low, m.high));
        self.interval_chart(mean, SIZE.1, "mean reward (95% interval)", PALETTE[0], true)
    }

    fn versions(&self, h: &mut String, t: &Tally) {
        let _ = write!(
            h,
            "<section id=\"versions\" data-serving=\"{}\" data-versions=\"{}\" data-gate-decisions=\"{}\" \
             data-shadow-version=\"{}\" data-shadowed=\"{}\" data-shadow-agreement=\"{}\"><h2>Policy versions</h2>",
            self.serving,
            self.dash.versions.len(),
            self.dash.gates.len(),
            t.shadow_version.map(|v| v.to_string()).unwrap_or_default(),
            t.shadowed,
            num(t.shadow_agreement()),
        );
        match (t.shadow_version, t.shadow_agreement()) {
            (Some(v), Some(a)) => {
                let _ = write!(
                    h,
                    "<p>shadow version <b>{v}</b> scored {} decisions; it chose the served agent in {}.</p>",
                    t.shadowed,
                    pct(a)
                );
            }
            _ => h.push_str("<p>No shadow version scored a decision in this range.</p>"),
        }
        Self::figure(h, self.versions_chart());
        h.push_str(
            "<h3>Published</h3><table class=\"versions\"><thead><tr><th>version</th><th>published</th>\
             <th>source</th><th>note</th></tr></thead><tbody>",
        );
        for v in &self.dash.versions {
            let _ = write!(
                h,
                "<tr data-version=\"{}\" data-published-us=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                v.version,
                v.published.0,
                v.version,
                esc(&v.published.to_rfc3339()),
                esc(&v.source),
                esc(v.note.as_deref().unwrap_or("")),
            );
        }
        h.push_str(
            "</tbody></table><h3>Gate decisions</h3><table class=\"gates\"><thead><tr><th>#</th><th>time</th>\
             <th>decision</th><th>candidate</th><th>against</th><th>reason</th></tr></thead><tbody>",
        );
        for g in &self.dash.gates {
            let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
            let _ = write!(
                h,
                "<tr data-gate-id=\"{}\" data-published=\"{}\" data-candidate-version=\"{}\" \
                 data-current-version=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                g.id,
                g.published,
                opt(g.candidate_version),
                opt(g.current_version),
                g.id,
                esc(&g.time.to_rfc3339()),
                if g.published { "published" } else { "refused" },
                esc(&opt(g.candidate_version)),
                esc(&opt(g.current_version)),
                esc(&g.reason),
            );
        }
        if self.dash.gates.is_empty() {
            h.push_str("<tr><td colspan=\"6\">no gate decision recorded</td></tr>");
        }
        h.push_str("</tbody></table></section>");
    }

    fn versions_chart(&self) -> Result<String, ChartError> {
        let x = self.x_range();
        let inside = |t: Timestamp| x.contains(&minutes_before(t, self.now));
        let marks: Vec<(f64, i64)> = self
            .dash
            .versions
            .iter()
            .filter(|v| inside(v.published))
            .map(|v| (minutes_before(v.published, self.now), v.version))
            .collect();
        let gates: Vec<(f64, i64, bool)> = self
            .dash
            .gates
            .iter()
            .filter(|g| inside(g.time))
            .map(|g| {
                let y = if g.published { g.candidate_version } else { g.current_version };
                (minutes_before(g.time, self.now), y.unwrap_or(0), g.published)
            })
            .collect();
        let ys = marks.iter().map(|m| m.1).chain(gates.iter().map(|g| g.1)).chain([self.serving]);
        let (lo, hi) = ys.fold((i64::MAX, i64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let axis = Axis {
            height: 180,
            y: (lo as f64 - 0.5)..(hi as f64 + 0.5),
            desc: "version",
            labels: (hi - lo + 1).clamp(2, 8) as usize,
            format: whole,
        };
        self.time_chart(axis, |chart| {
            let (green, red) = (PALETTE[2], PALETTE[3]);
            chart
                .draw_series(marks.iter().map(|&(x, v)| Circle::new((x, v as f64), 5, PALETTE[0].filled())))
                .map_err(draw_err)?;
            chart
                .draw_series(
                    marks.iter().map(|&(x, v)| Text::new(format!("v{v}"), (x, v as f64), ("sans-serif", 12))),
                )
                .map_err(draw_err)?;
            let published = gates.iter().filter(|g| g.2);
            chart
                .draw_series(
                    published.map(|&(x, v, _)| TriangleMarker::new((x, v as f64), 6, green.filled())),
                )
                .map_err(draw_err)?;
            let refused = gates.iter().filter(|g| !g.2);
            chart
                .draw_series(refused.map(|&(x, v, _)| Cross::new((x, v as f64), 6, red.stroke_width(2))))
                .map_err(draw_err)?;
            Ok(())
        })
    }

    fn ope(&self, h: &mut String) {
        let Some(g) = self.dash.gates.first() else {
            h.push_str(
                "<section id=\"ope\" data-gate-id=\"\"><h2>Off-policy evaluation</h2><p>No gate decision \
                 is recorded yet: `mappo learn --publish` records one per candidate.</p></section>",
            );
            return;
        };
        let cur_ci = g.current_ci;
        let _ = write!(
            h,
            "<section id=\"ope\" data-gate-id=\"{}\" data-estimator=\"{}\" data-n=\"{}\" data-margin=\"{}\" \
             data-published=\"{}\" data-candidate-value=\"{}\" data-candidate-low=\"{}\" \
             data-candidate-high=\"{}\" data-current-value=\"{}\" data-current-low=\"{}\" \
             data-current-high=\"{}\"><h2>Off-policy evaluation</h2><p>The newest gate decision (#{}, {}): \
             {} of the candidate{} against the current version{} on {} logged events, margin {}: <b>{}</b> — {}</p>",
            g.id,
            esc(&g.estimator),
            g.n,
            g.margin,
            g.published,
            g.candidate_value,
            g.candidate_ci[0],
            g.candidate_ci[1],
            num(g.current_value),
            num(cur_ci.map(|c| c[0])),
            num(cur_ci.map(|c| c[1])),
            g.id,
            esc(&g.time.to_rfc3339()),
            esc(&g.estimator.to_uppercase()),
            g.candidate_version.map(|v| format!(" (v{v})")).unwrap_or_default(),
            g.current_version.map(|v| format!(" (v{v})")).unwrap_or_default(),
            g.n,
            g.margin,
            if g.published { "published" } else { "refused" },
            esc(&g.reason),
        );
        Self::figure(h, ope_chart(g));
        h.push_str(
            "<table class=\"estimates\"><thead><tr><th>policy</th><th>estimate</th><th>value</th>\
             <th>95% interval</th></tr></thead><tbody>",
        );
        let row = |h: &mut String, policy: &str, est: &str, v: f64, ci: Option<[f64; 2]>| {
            let _ = write!(
                h,
                "<tr data-policy=\"{}\" data-estimate=\"{}\" data-value=\"{}\" data-low=\"{}\" data-high=\"{}\">\
                 <td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td></tr>",
                esc(policy),
                esc(est),
                v,
                num(ci.map(|c| c[0])),
                num(ci.map(|c| c[1])),
                esc(policy),
                esc(est),
                v,
                ci.map(|c| format!("{:.4} to {:.4}", c[0], c[1])).unwrap_or_else(|| "–".into()),
            );
        };
        // Every estimate the gate stored (its `meta`: {"candidate": {...}, "current": {...}}), or
        // just the compared one.
        let mut any = false;
        for policy in ["current", "candidate"] {
            let Some(obj) = g.meta.get(policy).and_then(serde_json::Value::as_object) else { continue };
            for (name, e) in obj {
                let value = e.get("value").and_then(serde_json::Value::as_f64);
                let ci = e
                    .get("ci")
                    .and_then(serde_json::Value::as_array)
                    .and_then(|c| Some([c.first()?.as_f64()?, c.get(1)?.as_f64()?]));
                if let Some(v) = value {
                    row(h, policy, name, v, ci);
                    any = true;
                } else if let Some(v) = e.as_f64() {
                    row(h, policy, name, v, None);
                    any = true;
                }
            }
        }
        if !any {
            if let Some(v) = g.current_value {
                row(h, "current", &g.estimator, v, g.current_ci);
            }
            row(h, "candidate", &g.estimator, g.candidate_value, Some(g.candidate_ci));
        }
        h.push_str("</tbody></table></section>");
    }

    fn cost(&self, h: &mut String, t: &Tally) {
        let _ = write!(
            h,
            "<section id=\"cost\" data-cost-weighted=\"{}\" data-cost-weight-mean=\"{}\" \
             data-cost-weight-min=\"{}\" data-cost-weight-max=\"{}\" data-agent-costs=\"unknown\">\
             <h2>Cost weight λ</h2>",
            t.cost_weighted,
            num(t.cost_weight_mean()),
            num(t.cost_weight_min),
            num(t.cost_weight_max),
        );
        if t.cost_weighted == 0 {
            h.push_str(
                "<p>No decision in this range logged a cost weight λ: the policy served is not \
                 cost-aware (no agent has a cost).</p></section>",
            );
            return;
        }
        let _ = write!(
            h,
            "<p>{} decisions decided at λ: mean {}, from {} to {}. The cost per request is not shown: \
             the agents' costs are not known to the dashboard.</p>",
            t.cost_weighted,
            show(t.cost_weight_mean()),
            show(t.cost_weight_min),
            show(t.cost_weight_max),
        );
        Self::figure(h, self.cost_chart());
        h.push_str("</section>");
    }

    fn cost_chart(&self) -> Result<String, ChartError> {
        let mean = |t: &Tally| Some((t.cost_weight_mean()?, t.cost_weight_min?, t.cost_weight_max?));
        self.interval_chart(mean, 200, "λ (mean, min–max)", PALETTE[4], false)
    }

    fn recent(&self, h: &mut String) {
        let _ = write!(
            h,
            "<section id=\"recent\" data-rows=\"{}\"><h2>Recent decisions</h2><table class=\"recent\"><thead>\
             <tr><th>time</th><th>agent</th><th>kind</th><th>propensity</th><th>version</th><th>λ</th>\
             <th>reward</th><th>text</th></tr></thead><tbody>",
            self.dash.recent.len()
        );
        for d in &self.dash.recent {
            let kind = match d.kind {
                DecisionKind::Sampled => "sampled",
                DecisionKind::Greedy => "greedy",
                DecisionKind::Forced => "forced",
            };
            let _ = write!(
                h,
                "<tr data-decision-id=\"{}\" data-agent=\"{}\" data-kind=\"{kind}\" data-propensity=\"{}\" \
                 data-reward=\"{}\"><td title=\"{}\">{}</td><td>{}</td><td>{kind}</td><td>{:.3}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td></tr>",
                d.id,
                esc(&d.agent),
                d.propensity,
                num(d.reward),
                esc(&d.time.to_rfc3339()),
                esc(&clock(d.time)),
                esc(&d.agent),
                d.propensity,
                d.policy_version,
                show(d.cost_weight),
                show(d.reward),
                esc(d.text.as_deref().unwrap_or("")),
            );
        }
        if self.dash.recent.is_empty() {
            h.push_str("<tr><td colspan=\"8\">no decision in this range</td></tr>");
        }
        h.push_str("</tbody></table></section>");
    }
}

/// The newest gate decision's compared estimates: the candidate and the current version, each a
/// point with its 95% interval.
fn ope_chart(g: &GateRecord) -> Result<String, ChartError> {
    font()?;
    let mut rows: Vec<(&str, f64, [f64; 2])> = Vec::new();
    if let (Some(v), Some(ci)) = (g.current_value, g.current_ci) {
        rows.push(("current", v, ci));
    }
    rows.push(("candidate", g.candidate_value, g.candidate_ci));
    let (lo, hi) =
        rows.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| (a.min(r.2[0]), b.max(r.2[1])));
    let pad = ((hi - lo) * 0.1).max(0.01);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, 140)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(80)
            .build_cartesian_2d((lo - pad)..(hi + pad), -0.5..(rows.len() as f64 - 0.5))
            .map_err(draw_err)?;
        let names: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
        chart
            .configure_mesh()
            .x_desc(format!("{} estimate (95% interval)", g.estimator.to_uppercase()))
            .y_labels(rows.len())
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(draw_err)?;
        for (i, (name, v, ci)) in rows.iter().enumerate() {
            let color = if *name == "candidate" { PALETTE[1] } else { PALETTE[0] };
            let y = i as f64;
            chart
                .draw_series([PathElement::new([(ci[0], y), (ci[1], y)], color.stroke_width(3))])
                .map_err(draw_err)?;
            chart.draw_series([Circle::new((*v, y), 5, color.filled())]).map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

const STYLE: &str = "<style>\
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:940px;padding:0 12px 40px;color:#222}\
h1{margin:16px 0 4px;font-size:22px}h2{margin:0 0 6px;font-size:18px}h3{font-size:15px;margin:12px 0 4px}\
section{border:1px solid #ddd;border-radius:6px;padding:10px 12px;margin:14px 0}\
figure{margin:6px 0}svg{max-width:100%;height:auto}\
table{border-collapse:collapse;font-size:13px;width:100%}th,td{text-align:left;padding:2px 6px;border-bottom:1px solid #eee}\
.key{display:inline-block;width:10px;height:10px;margin-right:6px}.warn{color:#a40}\
form{font-size:13px}input{width:6em}\
</style>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_the_query() {
        let p = UiParams::parse(None).expect("defaults");
        assert_eq!(p, UiParams { minutes: 60, bucket: 60, refresh: 0 });
        let p = UiParams::parse(Some("minutes=0&bucket=5&refresh=30")).expect("clamped");
        assert_eq!(p, UiParams { minutes: 1, bucket: 5, refresh: 30 });
        let p = UiParams::parse(Some("minutes=999999")).expect("clamped");
        assert_eq!((p.minutes, p.bucket), (MAX_MINUTES, MAX_MINUTES));
        assert_eq!(UiParams::parse(Some("minutes=10&bucket=9999")).expect("one bucket").bucket, 600);
        for bad in [
            "minutes=abc",
            "bucket=0",
            "bucket=-3",
            "refresh=-1",
            "refresh=1e3",
            "x=1",
            "minutes=1&minutes=2",
        ] {
            assert!(UiParams::parse(Some(bad)).is_err(), "{bad}");
        }
        let e = UiParams::parse(Some("minutes=43200&bucket=60")).expect_err("too many buckets");
        assert!(e.contains("at most 1000"), "{e}");
    }

    #[test]
    fn clock_shows_the_time_of_day() {
        assert_eq!(clock(Timestamp(1_764_158_940_123_456)), "12:09:00.123");
        assert_eq!(clock(Timestamp(1_764_158_940_000_000)), "12:09:00");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}

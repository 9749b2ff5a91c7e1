//! `GET /ui`: the dashboard — one server-rendered HTML page with inline SVG charts (plotters),
//! drawn from the decision log ([`mappo_log::DecisionLog::dashboard`]), so every replica shows
//! the same picture. No JavaScript: the refresh is a `<meta http-equiv="refresh">`.
//!
//! Panels, each an element with a stable id and its key numbers as `data-*` attributes and
//! tables (what tests and scripts read): `#decisions` (per bucket and agent, stacked; the shares
//! of sampled, greedy and forced decisions), `#reward` (mean reward per bucket with its 95%
//! interval; the share rewarded), `#versions` (published versions and gate decisions on the
//! time axis, as a table too; the shadow's agreement), `#ope` (the newest gate decision's
//! estimates of the candidate and the current version), `#cost` (for a policy whose agents have
//! costs: the cost per request per bucket and over the range, priced with the served version's
//! agent costs — decisions of agents it does not have are left out and named —, the quality
//! proxy beside it, the agents' costs, a per-bucket table `#cost-buckets`; and the cost weight λ
//! over time) and `#recent` (the newest 50 decisions).
//!
//! The quality proxy is what the rewards allow: for a one-step policy that takes λ the logged
//! reward is, by the project's convention, net of cost (`quality − λ·cost / max cost`, as in
//! training), so the page adds the cost term back (the *implied quality*) beside the mean logged
//! reward; for any other policy with costs it shows the mean logged reward, labelled as such.
//!
//! Query parameters: `minutes` (the range back from now, default 60, clamped to 1..=43200),
//! `bucket` (seconds per bucket, default about 60 buckets, at most [`MAX_BUCKETS`] buckets) and
//! `refresh` (seconds, 0 = never, the default); anything else is 422.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use mappo_log::{Dashboard, DashboardQuery, DecisionKind, GateRecord, Tally, Timestamp, share};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::engine::PolicyCosts;
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

/// A chart's series: each one's label and colour (shown under the chart).
type Legend = Vec<(&'static str, RGBColor)>;

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
    /// range in about 60, a multiple of 10 s); `refresh` is 0..=86400. Anything else (another
    /// name, a repeated name, not an integer) is an error message.
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
            // About 60 buckets, a multiple of the log's 10-s rollup (read without a scan).
            None => ((range_s / 60 + 9) / 10 * 10).max(10),
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
    let costs = st.engine.costs();
    let page =
        Page { dash: &dash, params, now, replica: &st.replica, serving: st.engine.version(), costs: &costs };
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

/// Decisions priced with the served policy's agent costs (a bucket's, or the whole range's), and
/// their rewards: what the cost panel shows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Priced {
    /// Every decision counted, priced or not.
    decisions: i64,
    /// Requests whose cost is known: decisions of the policy's agents (a cascade's first steps).
    requests: i64,
    /// What they cost, a cascade's escalations included.
    cost_sum: f64,
    /// A cascade's escalations (each calls the strong agent; counted in `cost_sum`).
    escalations: i64,
    /// Decisions of agents the policy does not have: their cost is unknown, left out.
    unpriced: i64,
    /// Rewarded decisions, unpriced ones aside.
    rewarded: i64,
    /// The sum of their rewards.
    reward_sum: f64,
    /// Rewarded decisions with an implied quality (`reward + λ·cost / max cost`).
    quality_n: i64,
    /// The sum of their implied qualities.
    quality_sum: f64,
    /// Of `quality_n`, those whose λ is their group's mean (the group mixes several λ and not all
    /// of its decisions are rewarded).
    estimated: i64,
    /// Rewarded decisions left out of the quality: their group has decisions without a λ.
    no_lambda: i64,
}

impl Priced {
    fn add(&mut self, o: &Priced) {
        self.decisions += o.decisions;
        self.requests += o.requests;
        self.cost_sum += o.cost_sum;
        self.escalations += o.escalations;
        self.unpriced += o.unpriced;
        self.rewarded += o.rewarded;
        self.reward_sum += o.reward_sum;
        self.quality_n += o.quality_n;
        self.quality_sum += o.quality_sum;
        self.estimated += o.estimated;
        self.no_lambda += o.no_lambda;
    }

    /// Adds the decisions `t` of one bucket, `agent` and kind, priced by `costs`; those of an
    /// agent `costs` does not have are counted in `unknown` too.
    fn add_group(
        &mut self,
        costs: &PolicyCosts,
        agent: &str,
        t: &Tally,
        unknown: &mut BTreeMap<String, i64>,
    ) {
        self.decisions += t.decisions;
        let cost = match costs.cost(agent) {
            Some(c) => c,
            None => {
                // A cascade's second step: accepting costs nothing more, escalating calls the
                // strong agent. Neither is a request of its own.
                let step = match (costs.escalates_to.as_deref(), agent) {
                    (Some(_), "accept") => Some(0.0),
                    (Some(strong), "escalate") => costs.cost(strong),
                    _ => None,
                };
                match step {
                    Some(extra) => {
                        self.cost_sum += t.decisions as f64 * extra;
                        if agent == "escalate" {
                            self.escalations += t.decisions;
                        }
                        self.rewarded += t.rewarded;
                        self.reward_sum += t.reward_sum;
                    }
                    None => {
                        self.unpriced += t.decisions;
                        *unknown.entry(agent.to_string()).or_default() += t.decisions;
                    }
                }
                return;
            }
        };
        self.requests += t.decisions;
        self.cost_sum += t.decisions as f64 * cost;
        self.rewarded += t.rewarded;
        self.reward_sum += t.reward_sum;
        // The implied quality: only where the reward is net of cost (a one-step policy that
        // takes λ), with the λ of the rewarded decisions.
        let max = costs.max_cost();
        if !costs.cost_input || costs.escalates_to.is_some() || t.rewarded == 0 || max <= 0.0 {
            return;
        }
        if t.cost_weighted < t.decisions {
            self.no_lambda += t.rewarded;
            return;
        }
        // Σλ over the rewarded decisions: exact when all are rewarded or λ is one value.
        let lambda_sum = match (t.cost_weight_min, t.cost_weight_max) {
            _ if t.rewarded == t.decisions => t.cost_weight_sum,
            (Some(lo), Some(hi)) if lo == hi => lo * t.rewarded as f64,
            _ => {
                self.estimated += t.rewarded;
                t.cost_weight_mean().unwrap_or(0.0) * t.rewarded as f64
            }
        };
        self.quality_n += t.rewarded;
        self.quality_sum += t.reward_sum + cost / max * lambda_sum;
    }

    /// Whether it holds no decision.
    fn is_empty(&self) -> bool {
        self.decisions == 0
    }

    /// The mean cost per request, `None` without a request.
    fn cost_per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.cost_sum / self.requests as f64)
    }

    /// The mean logged reward, `None` without one.
    fn reward_mean(&self) -> Option<f64> {
        (self.rewarded > 0).then(|| self.reward_sum / self.rewarded as f64)
    }

    /// The mean implied quality, `None` without one.
    fn quality_mean(&self) -> Option<f64> {
        (self.quality_n > 0).then(|| self.quality_sum / self.quality_n as f64)
    }
}

struct Page<'a> {
    dash: &'a Dashboard,
    params: UiParams,
    now: Timestamp,
    replica: &'a str,
    serving: i64,
    /// The served policy's agent costs.
    costs: &'a PolicyCosts,
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

    /// The decisions priced with the served policy's agent costs: the whole range, each bucket
    /// of the range (oldest first) and the decisions of agents the policy does not know, by
    /// agent.
    fn priced(&self) -> (Priced, Vec<(Timestamp, Priced)>, BTreeMap<String, i64>) {
        let mut buckets: BTreeMap<Timestamp, Priced> =
            self.dash.query.buckets().into_iter().map(|b| (b, Priced::default())).collect();
        let mut unknown = BTreeMap::new();
        for g in &self.dash.groups {
            buckets.entry(g.bucket).or_default().add_group(self.costs, &g.agent, &g.tally, &mut unknown);
        }
        let mut total = Priced::default();
        for p in buckets.values() {
            total.add(p);
        }
        (total, buckets.into_iter().collect(), unknown)
    }

    fn cost(&self, h: &mut String, t: &Tally) {
        let c = self.costs;
        let has_costs = c.has_costs();
        let (total, buckets, unknown) = self.priced();
        // What the quality proxy is: the implied quality when the rewards are net of cost.
        let net = has_costs && c.cost_input && c.escalates_to.is_none();
        let when = |v: Option<f64>| if has_costs { num(v) } else { String::new() };
        let _ = write!(
            h,
            "<section id=\"cost\" data-cost-weighted=\"{}\" data-cost-weight-mean=\"{}\" \
             data-cost-weight-min=\"{}\" data-cost-weight-max=\"{}\" data-agent-costs=\"{}\" \
             data-costs-version=\"{}\" data-cost-per-request=\"{}\" data-requests=\"{}\" \
             data-unpriced=\"{}\" data-escalations=\"{}\" data-reward-net-of-cost=\"{net}\" \
             data-reward-mean=\"{}\" data-rewarded=\"{}\" data-quality-mean=\"{}\" data-quality-n=\"{}\" \
             data-quality-estimated=\"{}\" data-quality-no-lambda=\"{}\"><h2>Cost, quality and λ</h2>",
            t.cost_weighted,
            num(t.cost_weight_mean()),
            num(t.cost_weight_min),
            num(t.cost_weight_max),
            if has_costs { "known" } else { "none" },
            c.version,
            when(total.cost_per_request()),
            total.requests,
            total.unpriced,
            total.escalations,
            when(total.reward_mean()),
            total.rewarded,
            if net { num(total.quality_mean()) } else { String::new() },
            total.quality_n,
            total.estimated,
            total.no_lambda,
        );
        match (has_costs, t.cost_weighted) {
            (true, _) => self.cost_and_quality(h, &total, &buckets, &unknown, net),
            (false, 0) => {
                let _ = write!(
                    h,
                    "<p>The served policy (version {}) is not cost-aware: it gives no agent a cost, so there \
                     is no cost per request or quality proxy to show, and no decision in this range logged a \
                     cost weight λ.</p></section>",
                    c.version
                );
                return;
            }
            (false, _) => {
                let _ = write!(
                    h,
                    "<p>The served policy (version {}) gives no agent a cost: there is no cost per request or \
                     quality proxy to show.</p>",
                    c.version
                );
            }
        }
        if t.cost_weighted == 0 {
            h.push_str("<p>No decision in this range logged a cost weight λ.</p></section>");
            return;
        }
        let _ = write!(
            h,
            "<h3>Cost weight λ</h3><p>{} decisions decided at λ: mean {}, from {} to {}.</p>",
            t.cost_weighted,
            show(t.cost_weight_mean()),
            show(t.cost_weight_min),
            show(t.cost_weight_max),
        );
        Self::figure(h, self.lambda_chart());
        h.push_str("</section>");
    }

    /// The cost per request and the quality proxy of a policy whose agents have costs: text,
    /// charts, the agents' costs and the numbers per bucket.
    fn cost_and_quality(
        &self,
        h: &mut String,
        total: &Priced,
        buckets: &[(Timestamp, Priced)],
        unknown: &BTreeMap<String, i64>,
        net: bool,
    ) {
        let c = self.costs;
        let _ = write!(
            h,
            "<p>Cost per request, priced with the agent costs of the served version {} (in the agents' \
             own cost unit): <b>{}</b> over {} requests",
            c.version,
            show(total.cost_per_request()),
            total.requests,
        );
        if let Some(strong) = &c.escalates_to {
            let _ = write!(
                h,
                " (a cascade: its first steps; each of the {} escalations adds {}'s cost)",
                total.escalations,
                esc(strong)
            );
        }
        h.push_str(".</p>");
        if !unknown.is_empty() {
            let names: Vec<&str> = unknown.keys().map(String::as_str).collect();
            let list: Vec<String> = unknown.iter().map(|(a, n)| format!("{} ({n})", esc(a))).collect();
            let _ = write!(
                h,
                "<p class=\"warn\" id=\"cost-unknown\" data-unpriced=\"{}\" data-agents=\"{}\">{} decisions \
                 went to agents that version {} does not have: {}. Their cost is unknown: they are left \
                 out of the cost per request, and of the reward and quality below.</p>",
                total.unpriced,
                esc(&names.join(",")),
                total.unpriced,
                c.version,
                list.join(", "),
            );
        }
        Self::figure(h, self.cost_per_request_chart(buckets));
        h.push_str("<h3>Quality proxy</h3>");
        if net {
            let _ = write!(
                h,
                "<p>A cost-aware router's reward — what the learner trains on and <code>/v1/feedback</code> expects \
                 — is by this project's convention net of cost: <i>quality − λ·cost / max cost</i> \
                 (docs/guide/llm-routing.md). The <b>implied quality</b> adds the cost term back with \
                 each decision's logged λ and its agent's cost (max cost {}): <b>{}</b> over {} rewarded \
                 decisions, beside the mean logged (net) reward <b>{}</b> over {}. It is a quality only \
                 if the rewards were sent net of cost.",
                c.max_cost(),
                show(total.quality_mean()),
                total.quality_n,
                show(total.reward_mean()),
                total.rewarded,
            );
            if total.estimated > 0 {
                let _ = write!(
                    h,
                    " For {} of them λ is estimated: their bucket, agent and kind mix several λ and not \
                     all of their decisions are rewarded, so the group's mean λ stands in.",
                    total.estimated
                );
            }
            if total.no_lambda > 0 {
                let _ = write!(
                    h,
                    " {} rewarded decisions are left out of the implied quality: decisions of their \
                     bucket, agent and kind logged no λ.",
                    total.no_lambda
                );
            }
            h.push_str("</p>");
        } else if c.escalates_to.is_some() {
            let _ = write!(
                h,
                "<p>Mean logged reward: <b>{}</b> over {} rewarded decisions (both steps of the cascade). \
                 A cascade's rewards are not split into quality and cost per decision, so no quality is \
                 derived from them: shown as logged.</p>",
                show(total.reward_mean()),
                total.rewarded,
            );
        } else {
            let _ = write!(
                h,
                "<p>Mean logged reward: <b>{}</b> over {} rewarded decisions. This policy does not take \
                 λ, so its rewards are not defined net of cost: shown as logged, beside the cost.</p>",
                show(total.reward_mean()),
                total.rewarded,
            );
        }
        match self.quality_chart(buckets, net) {
            Ok((svg, legend)) => {
                Self::figure(h, Ok(svg));
                h.push_str("<p class=\"legend\">");
                for (label, RGBColor(r, g, b)) in legend {
                    let _ = write!(
                        h,
                        "<span class=\"key\" style=\"background:rgb({r},{g},{b})\"></span>{} ",
                        esc(label)
                    );
                }
                h.push_str("</p>");
            }
            Err(e) => Self::figure(h, Err(e)),
        }
        self.agent_costs(h, unknown);
        let _ = write!(
            h,
            "<details id=\"cost-buckets\"><summary>per bucket</summary><table class=\"cost-buckets\"><thead>\
             <tr><th>bucket</th><th>requests</th><th>cost per request</th><th>unknown cost</th>\
             <th>mean reward</th><th>{}</th><th>mean λ</th></tr></thead><tbody>",
            if net { "implied quality" } else { "–" }
        );
        let lambda: BTreeMap<Timestamp, Option<f64>> =
            self.dash.by_bucket().into_iter().map(|(b, t)| (b, t.cost_weight_mean())).collect();
        let mut rows = 0;
        for (b, p) in buckets.iter().filter(|(_, p)| !p.is_empty()) {
            let l = lambda.get(b).copied().flatten();
            let q = if net { p.quality_mean() } else { None };
            let _ = write!(
                h,
                "<tr data-bucket-us=\"{}\" data-requests=\"{}\" data-cost-per-request=\"{}\" \
                 data-unpriced=\"{}\" data-reward-mean=\"{}\" data-quality-mean=\"{}\" \
                 data-cost-weight-mean=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td></tr>",
                b.0,
                p.requests,
                num(p.cost_per_request()),
                p.unpriced,
                num(p.reward_mean()),
                num(q),
                num(l),
                esc(&clock(*b)),
                p.requests,
                show(p.cost_per_request()),
                p.unpriced,
                show(p.reward_mean()),
                show(q),
                show(l),
            );
            rows += 1;
        }
        if rows == 0 {
            h.push_str("<tr><td colspan=\"7\">no decision in this range</td></tr>");
        }
        h.push_str("</tbody></table></details>");
    }

    /// The served policy's agents with their costs and decisions in the range, a cascade's second
    /// step's options, then the logged agents it does not have.
    fn agent_costs(&self, h: &mut String, unknown: &BTreeMap<String, i64>) {
        let c = self.costs;
        let decisions = self.dash.by_agent();
        let count = |a: &str| decisions.get(a).map_or(0, |t| t.decisions);
        let max = c.max_cost();
        h.push_str(
            "<table class=\"agent-costs\"><thead><tr><th>agent</th><th>cost per request</th>\
             <th>÷ max cost</th><th>decisions</th></tr></thead><tbody>",
        );
        for (agent, cost) in &c.agents {
            let _ = write!(
                h,
                "<tr data-cost-agent=\"{}\" data-cost=\"{cost}\" data-decisions=\"{}\"><td>{}</td><td>{}</td>\
                 <td>{:.3}</td><td>{}</td></tr>",
                esc(agent),
                count(agent),
                esc(agent),
                cost,
                if max > 0.0 { cost / max } else { 0.0 },
                count(agent),
            );
        }
        if let Some(strong) = &c.escalates_to {
            for (step, what) in
                [("accept", "0 (keeps the first answer)"), ("escalate", "calls the strong agent")]
            {
                if c.cost(step).is_none() && count(step) > 0 {
                    let _ = write!(
                        h,
                        "<tr data-cascade-step=\"{step}\" data-decisions=\"{}\"><td>{step}</td><td>{}</td>\
                         <td></td><td>{}</td></tr>",
                        count(step),
                        if step == "escalate" {
                            format!("{what}: {} ({})", esc(strong), c.cost(strong).unwrap_or(0.0))
                        } else {
                            what.to_string()
                        },
                        count(step),
                    );
                }
            }
        }
        for (agent, n) in unknown {
            let _ = write!(
                h,
                "<tr class=\"warn\" data-cost-agent=\"{}\" data-cost=\"\" data-decisions=\"{n}\"><td>{}</td>\
                 <td>unknown: not an agent of version {}</td><td></td><td>{n}</td></tr>",
                esc(agent),
                esc(agent),
                c.version,
            );
        }
        h.push_str("</tbody></table>");
    }

    /// Per bucket: its middle (minutes before now) and `value` of its priced decisions, where
    /// there is one.
    fn bucket_points(
        &self,
        buckets: &[(Timestamp, Priced)],
        value: impl Fn(&Priced) -> Option<f64>,
    ) -> Vec<(f64, f64)> {
        let half = self.bucket_minutes() / 2.0;
        buckets
            .iter()
            .filter_map(|(b, p)| {
                value(p).filter(|v| v.is_finite()).map(|v| (minutes_before(*b, self.now) + half, v))
            })
            .collect()
    }

    fn cost_per_request_chart(&self, buckets: &[(Timestamp, Priced)]) -> Result<String, ChartError> {
        let points = self.bucket_points(buckets, Priced::cost_per_request);
        let top = points.iter().map(|p| p.1).fold(self.costs.max_cost(), f64::max).max(1e-9);
        let axis =
            Axis { height: 200, y: 0.0..top * 1.08, desc: "cost per request", labels: 6, format: decimal };
        let color = PALETTE[5];
        self.time_chart(axis, |chart| {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(draw_err)?;
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(draw_err)?;
            Ok(())
        })
    }

    /// The mean logged reward per bucket and, when the rewards are net of cost, the implied
    /// quality; with each series' label and colour (the page's legend).
    fn quality_chart(
        &self,
        buckets: &[(Timestamp, Priced)],
        net: bool,
    ) -> Result<(String, Legend), ChartError> {
        let mut series = vec![(
            if net { "mean logged reward (net of cost)" } else { "mean logged reward" },
            PALETTE[0],
            self.bucket_points(buckets, Priced::reward_mean),
        )];
        if net {
            series.push((
                "implied quality: reward + λ·cost / max cost",
                PALETTE[2],
                self.bucket_points(buckets, Priced::quality_mean),
            ));
        }
        let (lo, hi) = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
        let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.08).max(0.05);
        let axis = Axis {
            height: 220,
            y: (lo - pad)..(hi + pad),
            desc: "reward / quality",
            labels: 6,
            format: decimal,
        };
        let chart = self.time_chart(axis, |chart| {
            for (_, color, points) in &series {
                let color = *color;
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                    .map_err(draw_err)?;
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(draw_err)?;
            }
            Ok(())
        });
        let legend: Legend = series.iter().map(|s| (s.0, s.1)).collect();
        chart.map(|svg| (svg, legend))
    }

    fn lambda_chart(&self) -> Result<String, ChartError> {
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
form{font-size:13px}input{width:6em}.legend{font-size:13px;margin:0 0 6px}\
details{margin:6px 0;font-size:13px}summary{cursor:pointer}\
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
        // Default buckets are whole multiples of the log's 10-s rollup.
        for (minutes, bucket) in [(1, 10), (5, 10), (15, 20), (90, 90), (1440, 1440)] {
            let p = UiParams::parse(Some(&format!("minutes={minutes}"))).expect("default bucket");
            assert_eq!(p.bucket, bucket, "{minutes} minutes");
        }
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

    fn costs(agents: &[(&str, f64)], cost_input: bool, escalates_to: Option<&str>) -> PolicyCosts {
        PolicyCosts {
            version: 3,
            agents: agents.iter().map(|(a, c)| (a.to_string(), *c)).collect(),
            cost_input,
            escalates_to: escalates_to.map(str::to_string),
        }
    }

    /// `n` decisions, `rewarded` of them rewarded with `reward_sum`, at the λ of `lambdas`
    /// (min, max and mean over all `n`; `None`: no λ logged).
    fn tally(n: i64, rewarded: i64, reward_sum: f64, lambdas: Option<(f64, f64, f64)>) -> Tally {
        let mut t = Tally { decisions: n, sampled: n, rewarded, reward_sum, ..Tally::default() };
        if let Some((lo, hi, mean)) = lambdas {
            t.cost_weighted = n;
            t.cost_weight_sum = mean * n as f64;
            t.cost_weight_min = Some(lo);
            t.cost_weight_max = Some(hi);
        }
        t
    }

    #[test]
    fn prices_decisions_with_the_served_costs() {
        let c = costs(&[("a", 1.0), ("b", 4.0)], true, None);
        let mut p = Priced::default();
        let mut unknown = BTreeMap::new();
        // λ one value: exact; all rewarded: exact (Σλ is the group's).
        p.add_group(&c, "a", &tally(3, 2, 1.0, Some((0.5, 0.5, 0.5))), &mut unknown);
        p.add_group(&c, "b", &tally(2, 2, 0.4, Some((0.1, 0.3, 0.2))), &mut unknown);
        // An agent the policy does not have: left out, named.
        p.add_group(&c, "gone", &tally(5, 5, 5.0, Some((0.5, 0.5, 0.5))), &mut unknown);
        assert_eq!((p.requests, p.unpriced), (5, 5));
        assert_eq!(unknown, BTreeMap::from([("gone".to_string(), 5)]));
        assert_eq!(p.cost_per_request(), Some((3.0 * 1.0 + 2.0 * 4.0) / 5.0));
        assert_eq!((p.rewarded, p.reward_mean()), (4, Some(1.4 / 4.0)));
        // a: 1.0 + 0.25·0.5·2; b: 0.4 + 1·(0.2·2).
        let q = p.quality_mean().expect("quality");
        assert!((q - (1.25 + 0.8) / 4.0).abs() < 1e-12, "{q}");
        assert_eq!((p.quality_n, p.estimated, p.no_lambda), (4, 0, 0));
        // Several λ, not all rewarded: the group's mean λ stands in, counted.
        p.add_group(&c, "b", &tally(4, 1, 0.5, Some((0.0, 1.0, 0.5))), &mut unknown);
        assert_eq!((p.quality_n, p.estimated), (5, 1));
        // Decisions without λ (a version that did not take it): out of the quality, counted.
        p.add_group(&c, "a", &tally(2, 1, 1.0, None), &mut unknown);
        assert_eq!((p.quality_n, p.no_lambda, p.requests, p.rewarded), (5, 1, 11, 6));
    }

    #[test]
    fn prices_a_cascade_per_request_and_derives_no_quality() {
        let c = costs(&[("weak", 1.0), ("strong", 10.0)], true, Some("strong"));
        let mut p = Priced::default();
        let mut unknown = BTreeMap::new();
        p.add_group(&c, "weak", &tally(10, 10, 5.0, Some((0.2, 0.2, 0.2))), &mut unknown);
        p.add_group(&c, "strong", &tally(2, 0, 0.0, Some((0.2, 0.2, 0.2))), &mut unknown);
        p.add_group(&c, "escalate", &tally(3, 3, 1.5, Some((0.2, 0.2, 0.2))), &mut unknown);
        p.add_group(&c, "accept", &tally(7, 0, 0.0, Some((0.2, 0.2, 0.2))), &mut unknown);
        // 12 requests (first steps): 10·1 + 2·10 + 3 escalations·10.
        assert_eq!((p.requests, p.escalations, p.unpriced), (12, 3, 0));
        assert_eq!(p.cost_per_request(), Some(60.0 / 12.0));
        assert!(unknown.is_empty());
        assert_eq!((p.rewarded, p.quality_mean()), (13, None));
        let mut only_accept = Priced::default();
        only_accept.add_group(&c, "accept", &tally(2, 0, 0.0, None), &mut unknown);
        assert!(!only_accept.is_empty() && only_accept.cost_per_request().is_none());
        // Without a cascade, `escalate` is an unknown agent.
        let plain = costs(&[("weak", 1.0), ("strong", 10.0)], true, None);
        let mut q = Priced::default();
        q.add_group(&plain, "escalate", &tally(3, 0, 0.0, None), &mut unknown);
        assert_eq!((q.unpriced, q.cost_per_request()), (3, None));
    }

    #[test]
    fn the_cost_panel_renders_every_case() {
        let now = Timestamp(1_764_158_940_000_000);
        let query = DashboardQuery::last_minutes(now, 10, 60);
        let bucket = query.bucket_of(Timestamp(now.0 - 90_000_000));
        let group = |agent: &str, t: Tally| mappo_log::DashboardGroup {
            bucket,
            agent: agent.into(),
            kind: DecisionKind::Sampled,
            tally: t,
        };
        let dash = Dashboard {
            query,
            groups: vec![
                group("a", tally(3, 2, 1.0, Some((0.5, 0.5, 0.5)))),
                group("gone <x>", tally(2, 0, 0.0, Some((0.5, 0.5, 0.5)))),
            ],
            cut_at: None,
            recent: Vec::new(),
            versions: Vec::new(),
            gates: Vec::new(),
        };
        let params = UiParams { minutes: 10, bucket: 60, refresh: 0 };
        let priced = costs(&[("a", 2.0), ("b", 4.0)], true, None);
        let page = Page { dash: &dash, params, now, replica: "r", serving: 3, costs: &priced }.render();
        assert!(
            page.contains("data-agent-costs=\"known\" data-costs-version=\"3\" data-cost-per-request=\"2\"")
        );
        assert!(page.contains("data-unpriced=\"2\" data-agents=\"gone &lt;x&gt;\""), "named, escaped");
        assert!(page.contains(&format!("<tr data-bucket-us=\"{}\" data-requests=\"3\"", bucket.0)));
        assert!(page.contains("data-reward-net-of-cost=\"true\""));
        assert!(!page.contains("chart-error"));
        // No costs: said, and nothing priced.
        let free = costs(&[("a", 0.0), ("b", 0.0)], false, None);
        let page = Page { dash: &dash, params, now, replica: "r", serving: 3, costs: &free }.render();
        assert!(page.contains("data-agent-costs=\"none\""));
        assert!(page.contains("gives no agent a cost"));
        assert!(page.contains("data-cost-per-request=\"\""));
        // Costs without λ (the rewards are not net of cost), and an empty range.
        let conv = costs(&[("a", 2.0), ("b", 4.0)], false, None);
        let empty = Dashboard { groups: Vec::new(), ..dash.clone() };
        let page = Page { dash: &empty, params, now, replica: "r", serving: 3, costs: &conv }.render();
        assert!(page.contains("data-reward-net-of-cost=\"false\""));
        assert!(page.contains("not defined net of cost"));
        assert!(page.contains("no decision in this range"));
        assert!(!page.contains("chart-error"));
    }
}

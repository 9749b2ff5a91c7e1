//! `metrics.jsonl`, a run's log: the lines the run loop writes and the one reader of them, so
//! that the field names live in one place.
//!
//! Every line is one JSON object. `{"kind":"update", ...}` carries [`UpdateMetrics`]'s fields
//! plus `train_seconds` (training seconds of the current call, evaluation excluded; a resumed run
//! starts again from 0) and `updates_per_s`; `{"kind":"eval", ...}` carries `update`,
//! `train_seconds` and [`EvalReport`]'s fields. A NaN (a `mean_return` when no episode ended) is
//! written as `null`.
//!
//! [`MetricsLog::read`] turns the file into the named [`Series`] of [`SERIES`] — what
//! `mappo plot` draws.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{EvalReport, TrainError, UpdateMetrics};

/// The log's file name in a run directory.
pub const FILE: &str = "metrics.jsonl";

/// One `{"kind":"update"}` line.
#[derive(Serialize)]
pub(crate) struct UpdateLine<'a> {
    pub kind: &'static str,
    #[serde(flatten)]
    pub m: &'a UpdateMetrics,
    pub train_seconds: f64,
    pub updates_per_s: f64,
}

/// One `{"kind":"eval"}` line.
#[derive(Serialize)]
pub(crate) struct EvalLine<'a> {
    pub kind: &'static str,
    pub update: u64,
    pub train_seconds: f64,
    #[serde(flatten)]
    pub r: &'a EvalReport,
}

/// The kind of line a series is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LineKind {
    /// `{"kind":"update"}`: every `train.log_interval` updates.
    Update,
    /// `{"kind":"eval"}`: the periodic greedy evaluation, every `train.eval_interval` updates.
    Eval,
}

impl LineKind {
    /// The `kind` field's value.
    pub fn tag(self) -> &'static str {
        match self {
            LineKind::Update => "update",
            LineKind::Eval => "eval",
        }
    }
}

/// A plottable quantity of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeriesSpec {
    /// Its name: the field's name, prefixed `eval.` for the evaluation's fields.
    pub name: &'static str,
    /// The lines it is read from.
    pub kind: LineKind,
    /// The JSON field.
    pub field: &'static str,
    /// A title for a plot.
    pub title: &'static str,
}

const fn update(field: &'static str, title: &'static str) -> SeriesSpec {
    SeriesSpec { name: field, kind: LineKind::Update, field, title }
}

/// Every series a log may hold, in plotting order. `mean_return` is read only where it differs
/// from `mean_reward` (multi-step envs: in a one-step env every episode is one reward).
pub const SERIES: &[SeriesSpec] = &[
    update("mean_reward", "mean reward (training batch)"),
    update("mean_return", "mean return (episodes ended in the batch)"),
    update("entropy", "policy entropy"),
    update("policy_loss", "policy loss (clipped surrogate)"),
    update("value_loss", "value loss"),
    update("approx_kl", "approx. KL(old ‖ new)"),
    update("clipfrac", "clip fraction"),
    update("explained_variance", "explained variance"),
    update("grad_norm", "gradient norm (before clipping)"),
    SeriesSpec {
        name: "eval.oracle_agreement",
        kind: LineKind::Eval,
        field: "oracle_agreement",
        title: "eval: oracle agreement (label reward: accuracy)",
    },
    SeriesSpec {
        name: "eval.normalized_reward",
        kind: LineKind::Eval,
        field: "normalized_reward",
        title: "eval: normalized reward (0 random, 1 oracle)",
    },
    SeriesSpec {
        name: "eval.mean_reward",
        kind: LineKind::Eval,
        field: "mean_reward",
        title: "eval: mean reward (episodes: return)",
    },
];

/// The fields every line of a kind has besides the series.
const UPDATE_FIELD: &str = "update";
const SECONDS_FIELD: &str = "train_seconds";
const KIND_FIELD: &str = "kind";

/// One logged value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// The update it was logged at.
    pub update: u64,
    /// Training seconds at that update, summed over the run's resumed calls (each call's
    /// `train_seconds` starts again from 0; a drop starts a new call).
    pub seconds: f64,
    /// The value.
    pub value: f64,
}

/// A series read from the log: its spec and its points in file order (`null` values left out).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// What it is.
    pub spec: SeriesSpec,
    /// Its points.
    pub points: Vec<Point>,
}

/// A run's `metrics.jsonl`, read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsLog {
    /// The series with at least one point, in [`SERIES`] order.
    pub series: Vec<Series>,
    /// Update lines read.
    pub update_lines: usize,
    /// Eval lines read.
    pub eval_lines: usize,
    /// The 1-based number of a last line left out because it is cut short (no newline after it
    /// and not JSON: what a crash mid-write leaves).
    pub truncated_line: Option<usize>,
}

impl MetricsLog {
    /// Reads `path` (a `metrics.jsonl`).
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        Self::parse(&text, path)
    }

    /// Reads the text of a log; `path` only names the file in errors. Blank lines and lines of
    /// other kinds are passed over; a line that is not a JSON object, lacks `update` or
    /// `train_seconds`, or holds a series field that is neither a number nor `null` is an error
    /// naming the line, except a cut-short last line ([`MetricsLog::truncated_line`]).
    pub fn parse(text: &str, path: &Path) -> Result<Self, TrainError> {
        let err = |line: Option<usize>, problem: String| TrainError::Metrics {
            path: path.display().to_string(),
            line,
            problem,
        };
        let mut points: Vec<Vec<Point>> = vec![Vec::new(); SERIES.len()];
        let (mut update_lines, mut eval_lines, mut truncated_line) = (0, 0, None);
        let mut clock = Clock::default();
        let lines: Vec<&str> = text.lines().collect();
        let mut seen_any = false;
        for (i, raw) in lines.iter().enumerate() {
            let line_no = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            seen_any = true;
            let obj = match serde_json::from_str::<Value>(raw) {
                Ok(Value::Object(o)) => o,
                Ok(_) => return Err(err(Some(line_no), "not a JSON object".into())),
                Err(e) => {
                    if i + 1 == lines.len() && !text.ends_with('\n') {
                        truncated_line = Some(line_no);
                        continue;
                    }
                    return Err(err(Some(line_no), format!("not JSON: {e}")));
                }
            };
            let kind = match obj.get(KIND_FIELD).and_then(Value::as_str) {
                Some(k) if k == LineKind::Update.tag() => LineKind::Update,
                Some(k) if k == LineKind::Eval.tag() => LineKind::Eval,
                Some(_) => continue,
                None => return Err(err(Some(line_no), format!("no `{KIND_FIELD}` string"))),
            };
            let update = obj
                .get(UPDATE_FIELD)
                .and_then(Value::as_u64)
                .ok_or_else(|| err(Some(line_no), format!("no `{UPDATE_FIELD}` count")))?;
            let raw_seconds = number(&obj, SECONDS_FIELD)
                .map_err(|p| err(Some(line_no), p))?
                .ok_or_else(|| err(Some(line_no), format!("no `{SECONDS_FIELD}` number")))?;
            let seconds = clock.seconds(raw_seconds);
            match kind {
                LineKind::Update => update_lines += 1,
                LineKind::Eval => eval_lines += 1,
            }
            for (spec, pts) in SERIES.iter().zip(&mut points) {
                if spec.kind != kind {
                    continue;
                }
                if let Some(value) = number(&obj, spec.field).map_err(|p| err(Some(line_no), p))? {
                    pts.push(Point { update, seconds, value });
                }
            }
        }
        if !seen_any || (update_lines + eval_lines == 0 && truncated_line.is_some()) {
            return Err(err(
                None,
                "empty: the run has logged nothing yet (a line every train.log_interval updates)".into(),
            ));
        }
        if update_lines + eval_lines == 0 {
            return Err(err(None, "no update or eval line: not the metrics of `mappo train`".into()));
        }
        let mut series: Vec<Series> = SERIES
            .iter()
            .zip(points)
            .filter(|(_, p)| !p.is_empty())
            .map(|(spec, points)| Series { spec: *spec, points })
            .collect();
        drop_repeated_mean_return(&mut series);
        Ok(MetricsLog { series, update_lines, eval_lines, truncated_line })
    }

    /// The series named `name` (a [`SeriesSpec::name`]), when the log holds it.
    pub fn series(&self, name: &str) -> Option<&Series> {
        self.series.iter().find(|s| s.spec.name == name)
    }
}

/// Sums `train_seconds` over the calls of a resumed run.
#[derive(Default)]
struct Clock {
    offset: f64,
    last: f64,
}

impl Clock {
    fn seconds(&mut self, raw: f64) -> f64 {
        if raw < self.last {
            self.offset += self.last;
        }
        self.last = raw;
        self.offset + raw
    }
}

/// `Ok(None)` for a missing field or `null`; an error for anything else that is not a number.
fn number(obj: &Map<String, Value>, field: &str) -> Result<Option<f64>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("`{field}` is not a number: {v}")),
    }
}

/// Leaves out `mean_return` where it is `mean_reward` again at every update (one-step envs).
fn drop_repeated_mean_return(series: &mut Vec<Series>) {
    let find = |s: &[Series], n: &str| s.iter().position(|x| x.spec.name == n);
    let (Some(ret), Some(rew)) = (find(series, "mean_return"), find(series, "mean_reward")) else {
        return;
    };
    let same = series[ret].points.iter().all(|p| {
        series[rew]
            .points
            .iter()
            .any(|q| q.update == p.update && (q.value - p.value).abs() <= 1e-9 * q.value.abs().max(1.0))
    });
    if same {
        series.remove(ret);
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.display().to_string(), message: e.to_string() }
}

/// Writes one line.
pub(crate) fn write_line(log: &mut impl Write, path: &Path, v: &impl Serialize) -> Result<(), TrainError> {
    let s = serde_json::to_string(v).map_err(|e| io_err(path, e))?;
    writeln!(log, "{s}").map_err(|e| io_err(path, e))
}

/// The first logged evaluation at or above `target`: `(update, train_seconds)`.
pub(crate) fn first_crossing(earlier: &[Value], target: f64) -> Option<(u64, f64)> {
    earlier.iter().find_map(|v| {
        let is_eval = v.get(KIND_FIELD).and_then(Value::as_str) == Some(LineKind::Eval.tag());
        let agreement = v.get("oracle_agreement").and_then(Value::as_f64)?;
        let update = v.get(UPDATE_FIELD).and_then(Value::as_u64)?;
        let secs = v.get(SECONDS_FIELD).and_then(Value::as_f64).unwrap_or(f64::NAN);
        (is_eval && agreement >= target).then_some((update, secs))
    })
}

/// Keeps the lines of the log at `path` whose `update` is at most `upto` and returns them parsed.
pub(crate) fn truncate(path: &Path, upto: u64) -> Result<Vec<Value>, TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut kept_text = String::new();
    let mut kept = Vec::new();
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else { continue };
        if v.get(UPDATE_FIELD).and_then(Value::as_u64).is_some_and(|u| u <= upto) {
            kept_text.push_str(l);
            kept_text.push('\n');
            kept.push(v);
        }
    }
    mappo_config::write_atomic(path, kept_text.as_bytes()).map_err(|e| io_err(path, e))?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(update: u64) -> UpdateMetrics {
        UpdateMetrics {
            update,
            mean_reward: 0.5,
            mean_return: 0.5,
            episodes: 3,
            entropy: 1.2,
            policy_loss: -0.01,
            value_loss: 0.2,
            approx_kl: 1e-4,
            clipfrac: 0.1,
            explained_variance: 0.3,
            grad_norm: 0.9,
            lr_actor: 1e-3,
            lr_critic: 1e-3,
            epochs: 4,
        }
    }

    fn report() -> EvalReport {
        EvalReport {
            n: 10,
            mean_reward: 0.4,
            oracle_reward: 0.9,
            random_reward: 0.1,
            normalized_reward: 0.375,
            oracle_agreement: 0.6,
        }
    }

    fn line(v: &impl Serialize) -> String {
        serde_json::to_string(v).expect("serialise")
    }

    fn parse(text: &str) -> Result<MetricsLog, TrainError> {
        MetricsLog::parse(text, Path::new("m.jsonl"))
    }

    #[test]
    fn every_series_field_is_written_by_its_line() {
        let m = metrics(1);
        let r = report();
        let u: Value = serde_json::from_str(&line(&UpdateLine {
            kind: "update",
            m: &m,
            train_seconds: 1.0,
            updates_per_s: 2.0,
        }))
        .expect("json");
        let e: Value =
            serde_json::from_str(&line(&EvalLine { kind: "eval", update: 1, train_seconds: 1.0, r: &r }))
                .expect("json");
        for (v, kind) in [(&u, LineKind::Update), (&e, LineKind::Eval)] {
            assert_eq!(v[KIND_FIELD], kind.tag());
            assert!(v[UPDATE_FIELD].is_u64() && v[SECONDS_FIELD].is_f64());
            for s in SERIES.iter().filter(|s| s.kind == kind) {
                assert!(v[s.field].is_f64(), "{} is not in a {} line: {v}", s.field, kind.tag());
            }
        }
    }

    #[test]
    fn written_lines_read_back_as_series() {
        let mut text = String::new();
        for u in 1..=3 {
            let mut m = metrics(u);
            m.entropy = u as f64;
            m.mean_return = f64::NAN; // no episode ended: written as null, left out
            if u == 2 {
                m.mean_return = 7.0;
            }
            let l = UpdateLine { kind: "update", m: &m, train_seconds: u as f64, updates_per_s: 1.0 };
            text += &format!("{}\n", line(&l));
        }
        let r = report();
        text += &format!("{}\n\n", line(&EvalLine { kind: "eval", update: 3, train_seconds: 3.0, r: &r }));
        text += "{\"kind\":\"future\",\"x\":1}\n";
        let log = parse(&text).expect("parse");
        assert_eq!((log.update_lines, log.eval_lines, log.truncated_line), (3, 1, None));
        let entropy = log.series("entropy").expect("entropy");
        assert_eq!(entropy.points.iter().map(|p| p.value).collect::<Vec<_>>(), [1.0, 2.0, 3.0]);
        let ret = log.series("mean_return").expect("mean_return differs from mean_reward");
        assert_eq!(ret.points, [Point { update: 2, seconds: 2.0, value: 7.0 }]);
        let agree = log.series("eval.oracle_agreement").expect("eval");
        assert_eq!(agree.points, [Point { update: 3, seconds: 3.0, value: 0.6 }]);
        assert_eq!(log.series.len(), SERIES.len());
    }

    #[test]
    fn mean_return_equal_to_mean_reward_is_left_out() {
        let m = metrics(1);
        let l = UpdateLine { kind: "update", m: &m, train_seconds: 1.0, updates_per_s: 1.0 };
        let log = parse(&format!("{}\n", line(&l))).expect("parse");
        assert!(log.series("mean_return").is_none());
        assert!(log.series("mean_reward").is_some());
        assert!(log.series("eval.oracle_agreement").is_none());
    }

    #[test]
    fn seconds_add_up_over_resumed_calls() {
        let text = [(5, 1.0), (10, 2.0), (15, 0.5), (20, 1.5)]
            .iter()
            .map(|(u, s)| {
                format!("{{\"kind\":\"update\",\"update\":{u},\"train_seconds\":{s},\"entropy\":1}}\n")
            })
            .collect::<String>();
        let log = parse(&text).expect("parse");
        let secs: Vec<f64> = log.series[0].points.iter().map(|p| p.seconds).collect();
        assert_eq!(secs, [1.0, 2.0, 2.5, 3.5]);
    }

    #[test]
    fn bad_logs_are_errors_naming_the_line() {
        let good = "{\"kind\":\"update\",\"update\":1,\"train_seconds\":0.1,\"entropy\":1}\n";
        let cases = [
            ("", "empty"),
            ("\n \n", "empty"),
            ("{\"kind\":\"upd", "empty"),
            ("{\"kind\":\"other\"}\n", "no update or eval line"),
            (&format!("{good}{{oops\n{good}"), "line 2: not JSON"),
            (&format!("{good}[1]\n"), "line 2: not a JSON object"),
            (&format!("{good}{{\"update\":2}}\n"), "line 2: no `kind`"),
            (&format!("{good}{{\"kind\":\"eval\",\"train_seconds\":1}}\n"), "line 2: no `update`"),
            (&format!("{good}{{\"kind\":\"eval\",\"update\":2}}\n"), "line 2: no `train_seconds`"),
            (
                &format!(
                    "{good}{{\"kind\":\"update\",\"update\":2,\"train_seconds\":1,\"entropy\":\"x\"}}\n"
                ),
                "line 2: `entropy` is not a number",
            ),
            // A cut-short last line that does end with a newline was not left by a crash.
            (&format!("{good}{{\"kind\":\"upd\n"), "line 2: not JSON"),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with("m.jsonl") && e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_cut_short_last_line_is_left_out_and_reported() {
        let good = "{\"kind\":\"update\",\"update\":1,\"train_seconds\":0.1,\"entropy\":1}\n";
        let log = parse(&format!("{good}{good}{{\"kind\":\"update\",\"upd")).expect("parse");
        assert_eq!(log.truncated_line, Some(3));
        assert_eq!(log.series("entropy").expect("entropy").points.len(), 2);
    }
}

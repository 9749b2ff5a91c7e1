//! `mappo plot`: the training curves of real runs, checked against their `metrics.jsonl` read
//! here independently — the series drawn, each one's point count and first and last values, one
//! SVG polyline per series per run whose points follow the values, and a PNG that decodes to
//! the size reported — plus an overlay of two runs and the errors.

mod common;
use common::{json, mappo, stderr, stdout, train};

use std::path::Path;

use serde_json::Value;

/// The series `mappo plot` may draw, in panel order: (name, line kind, field).
const SERIES: &[(&str, &str, &str)] = &[
    ("mean_reward", "update", "mean_reward"),
    ("mean_return", "update", "mean_return"),
    ("entropy", "update", "entropy"),
    ("policy_loss", "update", "policy_loss"),
    ("value_loss", "update", "value_loss"),
    ("approx_kl", "update", "approx_kl"),
    ("clipfrac", "update", "clipfrac"),
    ("explained_variance", "update", "explained_variance"),
    ("grad_norm", "update", "grad_norm"),
    ("eval.oracle_agreement", "eval", "oracle_agreement"),
    ("eval.normalized_reward", "eval", "normalized_reward"),
    ("eval.mean_reward", "eval", "mean_reward"),
];

/// A series read from metrics.jsonl by this test: (update, value) pairs, nulls left out.
type Points = Vec<(u64, f64)>;

fn read_metrics(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().map(json).collect()
}

/// What the test expects drawn for a run: every series with a point, in panel order, except
/// `mean_return` when it is `mean_reward` again (a one-step env).
fn expected(lines: &[Value]) -> Vec<(&'static str, Points)> {
    let mut out: Vec<(&'static str, Points)> = SERIES
        .iter()
        .map(|&(name, kind, field)| {
            let pts = lines
                .iter()
                .filter(|l| l["kind"] == kind)
                .filter_map(|l| Some((l["update"].as_u64().expect("update"), l[field].as_f64()?)))
                .collect();
            (name, pts)
        })
        .filter(|(_, p): &(_, Points)| !p.is_empty())
        .collect();
    let get = |out: &[(&str, Points)], n: &str| out.iter().find(|s| s.0 == n).map(|s| s.1.clone());
    if get(&out, "mean_return") == get(&out, "mean_reward") {
        out.retain(|s| s.0 != "mean_return");
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(1.0)
}

/// The `--json` report's series of run `i` agree with `want`: names in order, point counts,
/// first and last update and value.
fn assert_report_matches(report: &Value, i: usize, want: &[(&str, Points)]) {
    let got = report["runs"][i]["series"].as_array().expect("series");
    let names: Vec<&str> = got.iter().map(|s| s["name"].as_str().expect("name")).collect();
    let want_names: Vec<&str> = want.iter().map(|s| s.0).collect();
    assert_eq!(names, want_names, "run {i}'s series");
    for (g, (name, pts)) in got.iter().zip(want) {
        assert_eq!(g["points"].as_u64(), Some(pts.len() as u64), "{name}: point count");
        for (end, p) in [("first", pts.first()), ("last", pts.last())] {
            let p = p.expect("a point");
            assert_eq!(g[end]["update"].as_u64(), Some(p.0), "{name}: {end} update");
            let v = g[end]["value"].as_f64().expect("value");
            assert!(close(v, p.1), "{name}: {end} value {v} vs {} in metrics.jsonl", p.1);
        }
    }
}

/// The SVG's polylines drawn in `colour` (`#RRGGBB`), each as its points in pixels.
fn polylines(svg: &str, colour: &str) -> Vec<Vec<(f64, f64)>> {
    svg.split("<polyline")
        .skip(1)
        .filter(|p| p.contains(&format!("stroke=\"{colour}\"")))
        .map(|p| {
            let pts = p.split("points=\"").nth(1).and_then(|s| s.split('"').next()).expect("points");
            pts.split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').expect("x,y");
                    (x.parse().expect("x"), y.parse().expect("y"))
                })
                .collect()
        })
        .collect()
}

/// One polyline per series of the run, in panel order, each with the series' point count; x
/// (updates) going right, and y going up where the value does (down where it does) wherever the
/// value moves by more than 2% of the series' range.
fn assert_svg_matches(svg: &str, colour: &str, want: &[(&str, Points)]) {
    let lines = polylines(svg, colour);
    assert_eq!(lines.len(), want.len(), "one {colour} polyline per series");
    for (line, (name, pts)) in lines.iter().zip(want) {
        assert_eq!(line.len(), pts.len(), "{name}: polyline points");
        let (lo, hi) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        for (k, w) in line.windows(2).enumerate() {
            assert!(w[1].0 > w[0].0, "{name}: x goes right with the update");
            let dv = pts[k + 1].1 - pts[k].1;
            if dv.abs() > 0.02 * (hi - lo) {
                assert!(
                    (w[1].1 - w[0].1) * dv < 0.0,
                    "{name}: point {k}→{}: value {dv:+} but pixels {w:?}",
                    k + 1
                );
            }
        }
    }
}

#[test]
fn plot_draws_a_real_run_as_svg_and_png_matching_its_metrics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(&run, &["train.total_updates=60", "train.log_interval=5", "train.eval_interval=20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = read_metrics(&run);
    let want = expected(&lines);
    // Update lines every 5 updates and an evaluation every 20: both kinds are drawn.
    assert_eq!(want.iter().find(|s| s.0 == "entropy").map(|s| s.1.len()), Some(12));
    assert_eq!(want.iter().find(|s| s.0 == "eval.oracle_agreement").map(|s| s.1.len()), Some(3));
    assert!(!want.iter().any(|s| s.0 == "mean_return"), "one-step env: mean_return repeats mean_reward");

    let (svg, png) = (tmp.path().join("curves.svg"), tmp.path().join("curves.png"));
    let (svg_s, png_s, run_s) =
        (svg.to_str().expect("utf-8"), png.to_str().expect("utf-8"), run.to_str().expect("utf-8"));
    let o = mappo(&["plot", run_s, "--output", svg_s, "--output", png_s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = json(stdout(&o).trim());
    assert_eq!(report["outputs"], serde_json::json!([svg_s, png_s]));
    assert_eq!(report["x"], "update");
    let names: Vec<&str> = want.iter().map(|s| s.0).collect();
    assert_eq!(report["plotted"], serde_json::json!(names));
    assert_eq!(report["left_out"], serde_json::json!(["mean_return"]));
    assert_eq!(report["runs"][0]["dir"], run_s);
    assert_eq!(report["runs"][0]["update_lines"].as_u64(), Some(12));
    assert_eq!(report["runs"][0]["eval_lines"].as_u64(), Some(3));
    assert_report_matches(&report, 0, &want);
    assert!(stderr(&o).contains("11 series drawn"), "stderr says what was drawn: {}", stderr(&o));

    let (w, h) = (report["width"].as_u64().expect("width"), report["height"].as_u64().expect("height"));
    let text = std::fs::read_to_string(&svg).expect("the SVG");
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "a whole SVG");
    assert!(text.contains(&format!("width=\"{w}\"")) && text.contains(&format!("height=\"{h}\"")));
    assert!(text.contains(run_s), "the legend names the run directory");
    assert!(text.contains("policy entropy") && text.contains("eval: oracle agreement"), "panel titles");
    let colour = report["runs"][0]["colour"].as_str().expect("colour");
    assert_svg_matches(&text, colour, &want);

    let bytes = std::fs::read(&png).expect("the PNG");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG signature");
    let img =
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).expect("decodes").to_rgb8();
    assert_eq!((u64::from(img.width()), u64::from(img.height())), (w, h));
    let hex = |p: &image::Rgb<u8>| format!("#{:02X}{:02X}{:02X}", p[0], p[1], p[2]);
    let drawn = img.pixels().filter(|p| hex(p) == colour).count();
    assert!(drawn > 2000, "the curves are drawn in the run's colour: {drawn} pixels");

    // Without --output: RUN_DIR/curves.svg, its path on stdout. By seconds: the first point's
    // seconds are the first line's train_seconds.
    let o = mappo(&["plot", run_s, "--x", "seconds", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = json(stdout(&o).trim());
    assert_eq!(report["outputs"], serde_json::json!([run.join("curves.svg")]));
    assert!(run.join("curves.svg").is_file());
    let first = &report["runs"][0]["series"][0]["first"];
    assert!(close(first["seconds"].as_f64().expect("s"), lines[0]["train_seconds"].as_f64().expect("s")));
    let o = mappo(&["plot", run_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), run.join("curves.svg").to_str().expect("utf-8"));
}

#[test]
fn plot_overlays_two_runs_in_their_own_colours() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("seed-1"), tmp.path().join("seed-2"));
    let o = train(&a, &["train.total_updates=50", "train.log_interval=5", "train.eval_interval=25"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Another seed, fewer updates and no evaluation: its series differ in length and in kind.
    let o = train(
        &b,
        &["train.total_updates=30", "train.log_interval=10", "train.eval_interval=0", "train.seed=2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (wa, wb) = (expected(&read_metrics(&a)), expected(&read_metrics(&b)));
    assert!(wa.len() > wb.len(), "only the first run has eval series");
    let out = tmp.path().join("both.svg");
    let (a_s, b_s, out_s) = (a.to_str().expect("a"), b.to_str().expect("b"), out.to_str().expect("o"));

    let o = mappo(&["plot", a_s, b_s]);
    assert!(
        !o.status.success() && stderr(&o).contains("--output"),
        "several runs need --output: {}",
        stderr(&o)
    );

    let o = mappo(&["plot", a_s, b_s, "-o", out_s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = json(stdout(&o).trim());
    let names: Vec<&str> = wa.iter().map(|s| s.0).collect();
    assert_eq!(report["plotted"], serde_json::json!(names), "the union of the runs' series");
    assert_eq!(
        (report["runs"][0]["dir"].as_str(), report["runs"][1]["dir"].as_str()),
        (Some(a_s), Some(b_s))
    );
    assert_report_matches(&report, 0, &wa);
    assert_report_matches(&report, 1, &wb);
    let (ca, cb) =
        (report["runs"][0]["colour"].as_str().expect("c"), report["runs"][1]["colour"].as_str().expect("c"));
    assert_ne!(ca, cb);
    let svg = std::fs::read_to_string(&out).expect("the SVG");
    assert!(svg.contains(a_s) && svg.contains(b_s), "the legend names both runs");
    assert_svg_matches(&svg, ca, &wa);
    assert_svg_matches(&svg, cb, &wb);
}

#[test]
fn plot_errors_are_clear() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = |name: &str, metrics: Option<&str>| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        if let Some(m) = metrics {
            std::fs::write(d.join("metrics.jsonl"), m).expect("write");
        }
        d.to_str().expect("utf-8").to_string()
    };
    let good =
        |u: u64| format!("{{\"kind\":\"update\",\"update\":{u},\"train_seconds\":0.5,\"entropy\":1.3}}\n");
    let fails = |args: &[&str], want: &[&str]| {
        let o = mappo(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{args:?} should say {w:?}: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    };
    let missing = tmp.path().join("nope");
    fails(&["plot", missing.to_str().expect("utf-8")], &["nope", "no such run directory"]);
    let empty_dir = dir("no-metrics", None);
    fails(&["plot", &empty_dir], &["no-metrics", "no metrics.jsonl"]);
    fails(&["plot", &dir("empty", Some(""))], &["metrics.jsonl", "empty"]);
    let bad = dir("bad", Some(&format!("{}{{\"kind\":\"update\",\"upd\n{}", good(5), good(10))));
    fails(&["plot", &bad], &["metrics.jsonl: line 2: not JSON"]);
    let ok = dir("ok", Some(&good(5)));
    fails(&["plot", &ok, "--output", "curves.gif"], &["--output", ".png or .svg", "curves.gif"]);

    // A crash mid-write leaves a cut-short last line: left out, with a warning naming it.
    let cut = dir("cut", Some(&format!("{}{}{{\"kind\":\"update\",\"up", good(5), good(10))));
    let o = mappo(&["plot", &cut, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("line 3 is cut short"), "{}", stderr(&o));
    let report = json(stdout(&o).trim());
    assert_eq!(report["runs"][0]["truncated_line"].as_u64(), Some(3));
    assert_eq!(report["plotted"], serde_json::json!(["entropy"]));
    assert_eq!(report["runs"][0]["series"][0]["points"].as_u64(), Some(2));
}

//! Progress on stderr: bars on a terminal, periodic log lines otherwise.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use mappo_train::{EvalReport, Observer, UpdateMetrics};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Progress bars (stderr is a terminal).
    Bar,
    /// An info line every few seconds (stderr is a file or a pipe).
    Lines,
    /// Nothing (`--quiet`).
    Off,
}

impl Mode {
    /// Bars on a terminal, lines elsewhere, nothing when quiet.
    pub fn detect(quiet: bool) -> Self {
        use std::io::IsTerminal;
        if quiet {
            Self::Off
        } else if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Lines
        }
    }
}

/// Seconds between progress lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Training progress: a bar of updates with the mean reward and the last agreement.
pub struct TrainProgress {
    bar: ProgressBar,
    last_agreement: Option<f64>,
}

impl TrainProgress {
    /// A bar for `total` updates starting at `at` (hidden unless `mode` is [`Mode::Bar`]: the
    /// run loop logs its own lines every `train.log_interval` updates).
    pub fn new(mode: Mode, total: u64, at: u64) -> Self {
        let bar = if mode == Mode::Bar {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} updates ({per_sec}, eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        bar.set_position(at);
        Self { bar, last_agreement: None }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for TrainProgress {
    fn on_update(&mut self, m: &UpdateMetrics, _secs: f64) {
        self.bar.set_position(m.update);
        if m.update.is_multiple_of(10) {
            let agree = self.last_agreement.map(|a| format!(" agree {a:.3}")).unwrap_or_default();
            // Multi-step episodes: the mean episode return; one-step ones: the mean reward (equal).
            let message = if m.episodes > 0 && m.episodes < usize::MAX && m.mean_return != m.mean_reward {
                format!("return {:.3}{agree}", m.mean_return)
            } else {
                format!("reward {:.3}{agree}", m.mean_reward)
            };
            self.bar.set_message(message);
        }
    }
    fn on_eval(&mut self, _u: u64, r: &EvalReport) {
        self.last_agreement = Some(r.oracle_agreement);
    }
}

/// Progress of embedding work (`what`, done, total).
pub struct EmbedProgress {
    mode: Mode,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl EmbedProgress {
    /// Nothing shown yet.
    pub fn new(mode: Mode) -> Self {
        Self { mode, bar: None, last_line: None }
    }

    /// Reports `done` of `total` texts.
    pub fn update(&mut self, what: &str, done: usize, total: usize) {
        match self.mode {
            Mode::Off => {}
            Mode::Lines => {
                let due = self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY);
                if done == 0 && self.last_line.is_none() || due && done < total || done >= total && total > 0
                {
                    tracing::info!("{what}: {done}/{total} texts");
                    self.last_line = Some(Instant::now());
                }
                if done >= total {
                    self.last_line = None;
                }
            }
            Mode::Bar => {
                let bar = self.bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(total as u64);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:40.green/blue}] {pos}/{len} texts ({per_sec}, eta {eta})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b
                });
                bar.set_length(total as u64);
                bar.set_message(what.to_string());
                bar.set_position(done as u64);
                if done >= total {
                    bar.finish_and_clear();
                    self.bar = None;
                }
            }
        }
    }

    /// Removes a bar left open.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

//! Ctrl-C and SIGTERM during training: the first one is acknowledged at once
//! and stops the run after the current update (with a checkpoint); a second
//! Ctrl-C exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::{EXIT_INTERRUPTED, EXIT_TERMINATED};

/// The stop request shared with the run loop, and which signal made it.
#[derive(Clone)]
pub struct StopRequest {
    /// Set on the first signal; the run loop polls it after each update.
    pub flag: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl StopRequest {
    /// Installs the handlers (a thread waiting on SIGINT and SIGTERM).
    pub fn install() -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicI32::new(0));
        match Signals::new([SIGINT, SIGTERM]) {
            Ok(mut signals) => {
                let (flag, signal) = (flag.clone(), signal.clone());
                std::thread::spawn(move || {
                    for sig in signals.forever() {
                        if flag.swap(true, Ordering::SeqCst) {
                            eprintln!(
                                "second signal: exiting now, without a checkpoint of the current update"
                            );
                            std::process::exit(if sig == SIGTERM {
                                EXIT_TERMINATED
                            } else {
                                EXIT_INTERRUPTED
                            });
                        }
                        signal.store(sig, Ordering::SeqCst);
                        let name = if sig == SIGTERM { "SIGTERM" } else { "Ctrl-C" };
                        eprintln!(
                            "{name}: stopping after the current update and writing a checkpoint \
                             (Ctrl-C again to exit at once)"
                        );
                    }
                });
            }
            Err(e) => tracing::warn!("cannot install the Ctrl-C/SIGTERM handler: {e}"),
        }
        Self { flag, signal }
    }

    /// The exit status for a run that stopped on request.
    pub fn exit_code(&self) -> i32 {
        if self.signal.load(Ordering::SeqCst) == SIGTERM { EXIT_TERMINATED } else { EXIT_INTERRUPTED }
    }
}

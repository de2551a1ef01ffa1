//! Progress of a run as it happens: indicatif bars on a terminal, plain lines otherwise,
//! nothing with `-q`. Reports consume the finished run; this is only the live view.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a run tells its watcher.
pub trait Progress: Sync {
    /// A new phase begins, with `total` steps (0: no count).
    fn phase(&self, name: &str, total: u64);
    /// `n` more steps of the phase are done.
    fn advance(&self, n: u64);
    /// The last phase is over.
    fn finish(&self);
}

/// Says nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// One line per phase on standard error, with its duration: for logs and CI.
#[derive(Debug)]
pub struct Lines {
    started: Mutex<Option<(String, Instant)>>,
}

impl Lines {
    pub fn new() -> Self {
        Lines { started: Mutex::new(None) }
    }

    fn end_phase(&self) {
        let mut started = self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((name, at)) = started.take() {
            let _ = writeln!(std::io::stderr(), "[run] {name}: done in {} ms", at.elapsed().as_millis());
        }
    }
}

impl Default for Lines {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Lines {
    fn phase(&self, name: &str, total: u64) {
        self.end_phase();
        let count = if total > 0 { format!(" ({total})") } else { String::new() };
        let _ = writeln!(std::io::stderr(), "[run] {name}{count}");
        *self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((name.to_string(), Instant::now()));
    }

    fn advance(&self, _: u64) {}

    fn finish(&self) {
        self.end_phase();
    }
}

/// An indicatif bar per phase, drawn on standard error.
#[derive(Debug)]
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new() -> Self {
        Bars { bar: Mutex::new(None) }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bars {
    fn phase(&self, name: &str, total: u64) {
        let mut slot = self.bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bar) = slot.take() {
            bar.finish();
        }
        let bar = if total > 0 {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        };
        let template = if total > 0 {
            "{spinner} {msg:<20} [{bar:30}] {pos}/{len} {elapsed}"
        } else {
            "{spinner} {msg:<20} {elapsed}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(name.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        *slot = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            bar.finish_and_clear();
        }
    }
}

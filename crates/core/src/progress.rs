//! The terminal's progress bars in one place. Every bar joins one
//! `MultiProgress`, so a log line printed through [`suspend`] lands above
//! the bars instead of through them; [`set_quiet`] hides every bar of the
//! process (what `--quiet` does), and without a terminal (logs, CI) the
//! bars draw nothing.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static QUIET: AtomicBool = AtomicBool::new(false);

fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Hides every progress bar made from now on (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether [`set_quiet`] hid the bars.
pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// The label column every bar starts with, so bars of different stages
/// line up.
pub const LABEL: &str = "{prefix:>18}";

/// A bar over `total` steps labelled `label`, drawn with `template` after
/// the label (indicatif's template syntax); hidden when `quiet` or after
/// [`set_quiet`].
pub fn bar(total: u64, label: &str, template: &str, quiet: bool) -> ProgressBar {
    if quiet || is_quiet() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(&format!("{LABEL} {template}"))
        .unwrap_or_else(|e| panic!("progress template {template:?}: {e}"))
        .progress_chars("=> ");
    let bar = bars().add(ProgressBar::new(total));
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// A bar for a loop over `total` batches of evaluation (feature
/// extraction, scoring): count, elapsed time and estimate.
pub fn eval_bar(total: u64, label: &str) -> ProgressBar {
    bar(
        total,
        label,
        "[{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise}",
        false,
    )
}

/// Prints `msg` as a line on standard error above the bars (nothing
/// after [`set_quiet`]).
pub fn line(msg: impl std::fmt::Display) {
    if !is_quiet() {
        suspend(|| eprintln!("{msg}"));
    }
}

/// Runs `f` (which prints) with the bars cleared, then redraws them.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    bars().suspend(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hides_bars_and_suspend_runs_the_closure() {
        let shown = bar(3, "t", "{pos}", true);
        assert!(shown.is_hidden(), "quiet argument");
        set_quiet(true);
        assert!(eval_bar(3, "t").is_hidden(), "process-wide quiet");
        set_quiet(false);
        assert_eq!(suspend(|| 41 + 1), 42);
    }
}

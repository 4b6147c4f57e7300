//! Progress output: an indicatif bar per epoch on a terminal, one plain line per epoch
//! otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use lossbench_experiment::EpochRecord;

/// Reports training progress.
#[derive(Debug)]
pub struct Progress {
    interactive: bool,
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise.
    #[must_use]
    pub fn auto() -> Self {
        Self {
            interactive: std::io::stderr().is_terminal(),
            quiet: false,
            bar: None,
        }
    }

    /// No output at all (tests).
    #[must_use]
    pub fn quiet() -> Self {
        Self {
            interactive: false,
            quiet: true,
            bar: None,
        }
    }

    /// A line of information.
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// An epoch starts.
    pub fn start_epoch(&mut self, label: &str, epoch: u32, epochs: u32, batches: usize) {
        if self.quiet || !self.interactive {
            return;
        }
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{label} epoch {epoch}/{epochs}"));
        bar.enable_steady_tick(Duration::from_millis(500));
        self.bar = Some(bar);
    }

    /// Training read back after `done` batches of the epoch.
    pub fn batch(&self, mean_loss: f64, top1: f64, images_per_second: f64, done: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "loss {mean_loss:.4} acc {top1:.3} {images_per_second:.0} img/s"
            ));
            bar.set_position(done as u64);
        }
    }

    /// An epoch finished and was saved.
    pub fn end_epoch(&mut self, label: &str, epochs: u32, r: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let test = match (
            r.test_top1,
            r.test_top5,
            r.target_angle_deg,
            r.nearest_other_angle_deg,
        ) {
            (Some(top1), Some(top5), Some(target), Some(nearest)) => format!(
                "test top-1 {top1:.3} top-5 {top5:.3} | angle to class {target:.1}°, nearest other {nearest:.1}°"
            ),
            // The open protocol: unseen test classes, retrieval only.
            _ => format!(
                "test MAP@R {} Recall@1 {}",
                r.test_map_at_r.map_or("—".into(), |v| format!("{v:.3}")),
                r.test_recall_at_1.map_or("—".into(), |v| format!("{v:.3}"))
            ),
        };
        self.line(&format!(
            "{label} epoch {}/{epochs}: train loss {:.4} top-1 {:.3} | {test} | {:.1} s, {:.0} img/s",
            r.epoch, r.train_loss, r.train_top1, r.epoch_seconds, r.images_per_second
        ));
    }
}

//! Learning rate per optimiser step: linear warm-up, then multistep, cosine or constant.

use lossbench_experiment::{Schedule, TrainingConfig};

/// The learning rate of every step of a run.
#[derive(Debug, Clone)]
pub struct LrSchedule {
    base: f64,
    schedule: Schedule,
    warmup_steps: u64,
    steps_per_epoch: u64,
    total_steps: u64,
}

impl LrSchedule {
    /// The schedule of a run of `epochs` epochs of `steps_per_epoch` steps.
    #[must_use]
    pub fn new(training: &TrainingConfig, epochs: u32, steps_per_epoch: u64) -> Self {
        let steps_per_epoch = steps_per_epoch.max(1);
        Self {
            base: training.lr,
            schedule: training.schedule.clone(),
            warmup_steps: u64::from(training.warmup_epochs) * steps_per_epoch,
            steps_per_epoch,
            total_steps: u64::from(epochs) * steps_per_epoch,
        }
    }

    /// Learning rate of step `step` (0-based).
    #[must_use]
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match &self.schedule {
            Schedule::Constant => self.base,
            Schedule::Multistep { milestones, gamma } => {
                let epoch = step / self.steps_per_epoch;
                let passed = milestones
                    .iter()
                    .filter(|&&m| u64::from(m) <= epoch)
                    .count();
                self.base * gamma.powi(passed as i32)
            }
            Schedule::Cosine { min_lr } => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = (step - self.warmup_steps) as f64 / span as f64;
                min_lr
                    + (self.base - min_lr)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn training(schedule: Schedule, warmup_epochs: u32) -> TrainingConfig {
        TrainingConfig {
            epochs: 10,
            batch_size: 1,
            eval_batch_size: 1,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
            warmup_epochs,
            schedule,
            precision: "f32".into(),
            head_lr_scale: 1.0,
        }
    }

    #[test]
    fn warmup_then_multistep() {
        let s = LrSchedule::new(
            &training(
                Schedule::Multistep {
                    milestones: vec![3, 6],
                    gamma: 0.2,
                },
                1,
            ),
            10,
            4,
        );
        for (t, want) in [0.025, 0.05, 0.075, 0.1].into_iter().enumerate() {
            assert!(
                (s.at(t as u64) - want).abs() < 1e-15,
                "step {t}: {}",
                s.at(t as u64)
            );
        }
        assert_eq!(s.at(4), 0.1);
        assert!((s.at(12) - 0.02).abs() < 1e-15); // epoch 3
        assert!((s.at(24) - 0.004).abs() < 1e-15); // epoch 6
    }

    #[test]
    fn cosine_runs_from_lr_to_min_lr() {
        let s = LrSchedule::new(&training(Schedule::Cosine { min_lr: 0.001 }, 0), 10, 10);
        assert!((s.at(0) - 0.1).abs() < 1e-15);
        assert!((s.at(50) - (0.001 + 0.099 * 0.5)).abs() < 1e-12);
        assert!((s.at(100) - 0.001).abs() < 1e-12);
    }
}

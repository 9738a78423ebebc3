//! Order statistics over samples.

/// The `p`-th percentile (0..=100) of `samples`, linearly interpolated between
/// closest ranks (numpy's default). `None` for no samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

/// Most distinct error messages kept per measurement.
pub const MAX_ERROR_SAMPLES: usize = 5;

/// What workers of a load run gathered: one sample (ms) per completed item,
/// the errors (a few of their messages), and when the last item completed.
#[derive(Default)]
pub struct Tally {
    pub samples_ms: Vec<f64>,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub last_done: Option<std::time::Instant>,
}

impl Tally {
    /// Counts an error and keeps its message if there is room.
    pub fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        let text = format!("{e:#}");
        if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&text) {
            self.error_samples.push(text);
        }
    }

    /// Records one completed item that took until `done`.
    pub fn done(&mut self, sample_ms: f64, done: std::time::Instant) {
        self.samples_ms.push(sample_ms);
        self.last_done = Some(done);
    }

    /// Adds another worker's tally to this one.
    pub fn merge(&mut self, other: Tally) {
        self.samples_ms.extend(other.samples_ms);
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// The median of `samples`.
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn p90_interpolates() {
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(percentile(&v, 90.0), Some(10.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(11.0));
    }
}

//! The learning rate schedule: transformers' `get_linear_schedule_with_warmup`,
//! stepped once after each optimizer step as the Trainer does.

/// The factor on the base learning rate after `step` scheduler steps: a
/// linear rise from 0 over `warmup` steps, then a linear fall to 0 at `total`.
pub fn linear_with_warmup(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let left = total.saturating_sub(step) as f64;
    (left / total.saturating_sub(warmup).max(1) as f64).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::linear_with_warmup as f;

    #[test]
    fn warms_up_then_decays_to_zero() {
        // transformers' values for warmup 2, total 6: 0, .5, 1, .75, .5, .25, 0.
        let got: Vec<f64> = (0..=6).map(|s| f(s, 2, 6)).collect();
        assert_eq!(got, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(f(0, 0, 4), 1.0);
        assert_eq!(f(9, 0, 4), 0.0);
    }
}

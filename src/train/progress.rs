//! How a run looks: on a terminal, one status line redrawn in place (step,
//! epoch, loss, learning rate, images/s, ETA); elsewhere, a plain log line
//! every logging step. Evaluations, skips and saves get lines of their own.

use std::io::Write;

use super::{Event, StepReport};

pub struct Progress<W: Write> {
    out: W,
    tty: bool,
    logging_steps: usize,
    /// Whether the last thing written is a status line still open.
    open: bool,
}

/// `1h02m`, `3m04s`, `12s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The status of one step, without the line ending.
pub fn status(s: &StepReport) -> String {
    let rate = if s.elapsed_s > 0.0 {
        s.images as f64 / s.elapsed_s
    } else {
        0.0
    };
    let done = s.step.saturating_sub(s.start_step).max(1);
    let eta = s.elapsed_s / done as f64 * s.total.saturating_sub(s.step) as f64;
    format!(
        "step {}/{} epoch {:.2} loss {:.4} lr {:.3e} {:.1} img/s ETA {}",
        s.step,
        s.total,
        s.epoch,
        s.loss,
        s.learning_rate,
        rate,
        duration(eta)
    )
}

impl<W: Write> Progress<W> {
    pub fn new(out: W, tty: bool, logging_steps: usize) -> Self {
        Self {
            out,
            tty,
            logging_steps: logging_steps.max(1),
            open: false,
        }
    }

    fn line(&mut self, text: &str) {
        if self.open {
            let _ = writeln!(self.out);
            self.open = false;
        }
        let _ = writeln!(self.out, "{text}");
    }

    pub fn event(&mut self, event: &Event) {
        match event {
            Event::Step(s) if self.tty => {
                let bar = bar(s.step, s.total, 20);
                let _ = write!(self.out, "\r\x1b[2K{bar} {}", status(s));
                let _ = self.out.flush();
                self.open = true;
            }
            Event::Step(s) => {
                if s.step % self.logging_steps == 0 || s.step == s.total {
                    self.line(&status(s));
                }
            }
            Event::Skipped { image, reason } => {
                self.line(&format!("skipped {}: {reason}", image.display()))
            }
            Event::Eval { step, report } => self.line(&format!(
                "eval at step {step}: zero-shot accuracy {:.4} over {} images and {} captions; \
                 image→text R@1 {:.4} R@5 {:.4}; text→image R@1 {:.4} R@5 {:.4}",
                report.zero_shot_accuracy,
                report.images,
                report.captions,
                report.image_to_text_recall_at_1,
                report.image_to_text_recall_at_5,
                report.text_to_image_recall_at_1,
                report.text_to_image_recall_at_5,
            )),
            Event::Saved(dir) => self.line(&format!("saved {}", dir.display())),
        }
    }

    /// Ends an open status line.
    pub fn finish(&mut self) {
        if self.open {
            let _ = writeln!(self.out);
            self.open = false;
        }
    }
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!("[{}{}]", "#".repeat(filled), " ".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_output_logs_every_logging_step() {
        let mut buf = Vec::new();
        let mut p = Progress::new(&mut buf, false, 2);
        for step in 1..=3 {
            p.event(&Event::Step(StepReport {
                step,
                start_step: 0,
                total: 3,
                epoch: step as f64 / 3.0,
                loss: 1.5,
                grad_norm: 1.0,
                learning_rate: 5e-5,
                images: step * 8,
                elapsed_s: step as f64,
            }));
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("step 2/3 epoch 0.67 loss 1.5000"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("8.0 img/s ETA 0s"), "{}", lines[1]);
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(bar(1, 4, 8), "[##      ]");
    }
}

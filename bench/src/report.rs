//! The figures of one run, side by side with the reference, as a table and as
//! JSON.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// One measured quantity. `key` is what the reference script reports it
/// under; either side may be missing (not measured there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub key: String,
    pub section: String,
    pub label: String,
    pub unit: String,
    pub better: Better,
    pub dualsight: Option<f64>,
    pub reference: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Figure {
    /// How many times better dualsight is (>1: dualsight better):
    /// ours/ref when higher is better, ref/ours when lower is better.
    pub fn advantage(&self) -> Option<f64> {
        let (a, b) = (self.dualsight?, self.reference?);
        let r = match self.better {
            Better::Higher => a / b,
            Better::Lower => b / a,
        };
        r.is_finite().then_some(r)
    }
}

/// A figure as the reference script reports it (the same fields, one value).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RefFigure {
    pub key: String,
    #[serde(default)]
    pub section: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub better: Option<Better>,
    pub value: Option<f64>,
    #[serde(default)]
    pub note: Option<String>,
    /// For a figure we have no twin of (another way to do the same work, such
    /// as decoding without a process pool): the key of ours it is compared
    /// with. It is shown under that figure, with its value as ours.
    #[serde(default)]
    pub versus: Option<String>,
}

/// Collects figures in the order they were measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures(pub Vec<Figure>);

impl Figures {
    pub fn add(
        &mut self,
        key: impl Into<String>,
        section: &str,
        label: impl Into<String>,
        unit: &str,
        better: Better,
        value: f64,
    ) -> &mut Figure {
        self.0.push(Figure {
            key: key.into(),
            section: section.into(),
            label: label.into(),
            unit: unit.into(),
            better,
            dualsight: Some(value),
            reference: None,
            note: None,
        });
        self.0.last_mut().expect("just pushed")
    }

    pub fn get(&self, key: &str) -> Option<&Figure> {
        self.0.iter().find(|f| f.key == key)
    }

    /// Puts each reference value beside ours (same key). A reference figure
    /// we do not have is added with its own label: under the figure it is
    /// `versus` (compared with that one's value), else after the last figure
    /// of its section, or at the end.
    pub fn merge_reference(&mut self, refs: &[RefFigure]) {
        for r in refs {
            if let Some(f) = self.0.iter_mut().find(|f| f.key == r.key) {
                f.reference = r.value;
                if let Some(n) = &r.note {
                    f.note = Some(match f.note.take() {
                        Some(ours) => format!("{ours}; reference: {n}"),
                        None => format!("reference: {n}"),
                    });
                }
                continue;
            }
            // No twin: the figure it is `versus` (if we have it) lends its
            // value, section, unit and direction, and the row goes under it.
            let versus = r
                .versus
                .as_deref()
                .and_then(|k| self.0.iter().position(|f| f.key == k));
            let ours = versus.map(|i| &self.0[i]);
            let section = ours
                .map(|o| o.section.clone())
                .or_else(|| r.section.clone())
                .unwrap_or_else(|| "reference only".into());
            let dualsight = ours.and_then(|o| o.dualsight);
            let fig = Figure {
                key: r.key.clone(),
                label: r.label.clone().unwrap_or_else(|| r.key.clone()),
                unit: r
                    .unit
                    .clone()
                    .or_else(|| ours.map(|o| o.unit.clone()))
                    .unwrap_or_default(),
                better: r
                    .better
                    .or(ours.map(|o| o.better))
                    .unwrap_or(Better::Higher),
                dualsight,
                reference: r.value,
                // Beside a value of ours, say whose the note is.
                note: r.note.as_ref().map(|n| match dualsight {
                    Some(_) => format!("reference: {n}"),
                    None => n.clone(),
                }),
                section,
            };
            let after = versus.or_else(|| self.0.iter().rposition(|f| f.section == fig.section));
            match after {
                Some(i) => self.0.insert(i + 1, fig),
                None => self.0.push(fig),
            }
        }
    }

    /// A Markdown table (readable as plain text too), one sub-heading row per
    /// section. `reference`: include the reference and ratio columns.
    pub fn table(&self, reference: bool) -> String {
        let mut rows: Vec<Vec<String>> = Vec::new();
        let header: Vec<String> = if reference {
            vec![
                "figure",
                "unit",
                "dualsight",
                "reference",
                "ratio (>1: dualsight better)",
            ]
        } else {
            vec!["figure", "unit", "dualsight"]
        }
        .into_iter()
        .map(String::from)
        .collect();
        let mut section = "";
        for f in &self.0 {
            if f.section != section {
                section = &f.section;
                let mut r = vec![format!("**{section}**")];
                r.resize(header.len(), String::new());
                rows.push(r);
            }
            let label = match &f.note {
                Some(n) => format!("{} ({n})", f.label),
                None => f.label.clone(),
            };
            let mut r = vec![label, f.unit.clone(), fmt_opt(f.dualsight)];
            if reference {
                r.push(fmt_opt(f.reference));
                r.push(match f.advantage() {
                    Some(a) => format!("{a:.2}×"),
                    None => "–".into(),
                });
            }
            rows.push(r);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                rows.iter()
                    .chain(std::iter::once(&header))
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |r: &[String]| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    let pad = widths[c] - s.chars().count();
                    if c == 0 {
                        format!("{s}{}", " ".repeat(pad))
                    } else {
                        format!("{}{s}", " ".repeat(pad))
                    }
                })
                .collect();
            format!("| {} |", cells.join(" | "))
        };
        let mut out = line(&header);
        out.push('\n');
        let seps: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(c, w)| {
                if c == 0 {
                    "-".repeat(*w)
                } else {
                    format!("{}:", "-".repeat(w.saturating_sub(1)))
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", seps.join(" | ")));
        for r in &rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

/// About four significant digits, no exponent for the usual ranges.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        format!("{x}")
    } else if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map(fmt_num).unwrap_or_else(|| "–".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figs() -> Figures {
        let mut f = Figures::default();
        f.add("v.b1", "vision", "batch 1", "images/s", Better::Higher, 4.0);
        f.add("q.p50", "query", "p50", "ms", Better::Lower, 20.0);
        f
    }

    #[test]
    fn advantage_is_above_one_when_dualsight_wins() {
        let mut f = figs();
        f.merge_reference(&[
            RefFigure {
                key: "v.b1".into(),
                value: Some(2.0),
                ..Default::default()
            },
            RefFigure {
                key: "q.p50".into(),
                value: Some(40.0),
                note: Some("numpy exact".into()),
                ..Default::default()
            },
        ]);
        assert_eq!(f.get("v.b1").unwrap().advantage(), Some(2.0));
        assert_eq!(f.get("q.p50").unwrap().advantage(), Some(2.0));
        assert_eq!(
            f.get("q.p50").unwrap().note.as_deref(),
            Some("reference: numpy exact")
        );
        let mut lone = figs();
        lone.0[0].reference = Some(0.0);
        assert_eq!(lone.0[0].advantage(), None, "division by zero is no ratio");
    }

    #[test]
    fn reference_only_figures_join_their_section() {
        let mut f = figs();
        f.merge_reference(&[RefFigure {
            key: "v.extra".into(),
            section: Some("vision".into()),
            label: Some("hnswlib".into()),
            unit: Some("q/s".into()),
            better: Some(Better::Higher),
            value: Some(1.0),
            ..Default::default()
        }]);
        let keys: Vec<&str> = f.0.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["v.b1", "v.extra", "q.p50"]);
        assert_eq!(f.0[1].dualsight, None);
    }

    #[test]
    fn a_versus_figure_is_compared_with_the_one_it_names() {
        let mut f = figs();
        f.add("z", "last", "z", "s", Better::Lower, 1.0);
        f.merge_reference(&[RefFigure {
            key: "v.plain".into(),
            label: Some("plain loop".into()),
            value: Some(1.0),
            versus: Some("v.b1".into()),
            note: Some("no store".into()),
            ..Default::default()
        }]);
        let keys: Vec<&str> = f.0.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["v.b1", "v.plain", "q.p50", "z"]);
        let plain = f.get("v.plain").unwrap();
        assert_eq!(
            (plain.section.as_str(), plain.unit.as_str()),
            ("vision", "images/s")
        );
        assert_eq!(
            plain.advantage(),
            Some(4.0),
            "ours 4.0 against 1.0, higher is better"
        );
        assert_eq!(plain.note.as_deref(), Some("reference: no store"));
        assert_eq!(
            f.get("v.b1").unwrap().reference,
            None,
            "its own twin is untouched"
        );

        // Naming a figure we do not have, it joins its section as before.
        let mut g = figs();
        g.merge_reference(&[RefFigure {
            key: "v.plain".into(),
            section: Some("query".into()),
            value: Some(1.0),
            versus: Some("missing".into()),
            ..Default::default()
        }]);
        assert_eq!(g.get("v.plain").unwrap().dualsight, None);
        assert_eq!(g.0.last().unwrap().key, "v.plain");
    }

    #[test]
    fn table_is_aligned_markdown() {
        let mut f = figs();
        f.0[0].reference = Some(2.0);
        let t = f.table(true);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 4, "{t}");
        assert!(lines[0].starts_with("| figure"));
        assert!(lines[1].starts_with("| ---"));
        assert!(lines[2].contains("**vision**"));
        assert!(
            lines[3].contains("4.000") && lines[3].contains("2.000") && lines[3].contains("2.00×")
        );
        assert!(lines[5].contains("–"), "no reference: dash");
        let w = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == w), "{t}");
        let plain = f.table(false);
        assert!(!plain.contains("reference"));
    }

    #[test]
    fn numbers_keep_four_digits() {
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(123.46), "123.5");
        assert_eq!(fmt_num(12.346), "12.35");
        assert_eq!(fmt_num(1.2346), "1.235");
        assert_eq!(fmt_num(0.9876), "0.988");
        assert_eq!(fmt_num(0.0012), "1.20e-3");
        assert_eq!(fmt_num(0.0), "0");
    }
}

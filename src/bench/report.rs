//! The bench's result: rows of figures, each beside its floor, printed as Markdown and saved as
//! JSON with the same content.

use serde::Serialize;

/// What a number measures; decides how it is printed.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Micros,
    Millis,
    PerSecond,
    Percent,
    MiB,
}

/// One number with its unit.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Figure {
    pub value: f64,
    pub unit: Unit,
}

impl Figure {
    pub fn micros(value: f64) -> Figure {
        Figure { value, unit: Unit::Micros }
    }
    pub fn millis(value: f64) -> Figure {
        Figure { value, unit: Unit::Millis }
    }
    pub fn per_second(value: f64) -> Figure {
        Figure { value, unit: Unit::PerSecond }
    }
    pub fn percent(value: f64) -> Figure {
        Figure { value, unit: Unit::Percent }
    }
    pub fn mib(value: f64) -> Figure {
        Figure { value, unit: Unit::MiB }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.value;
        if !v.is_finite() {
            return write!(f, "n/a");
        }
        match self.unit {
            Unit::Micros => write!(f, "{} µs", thousands(v)),
            Unit::Millis if v >= 10_000.0 => write!(f, "{:.2} s", v / 1e3),
            Unit::Millis if v < 10.0 => write!(f, "{v:.1} ms"),
            Unit::Millis => write!(f, "{} ms", thousands(v)),
            Unit::PerSecond => write!(f, "{}/s", thousands(v)),
            Unit::Percent => write!(f, "{v:.2} %"),
            Unit::MiB => write!(f, "{v:.1} MiB"),
        }
    }
}

/// `12345.6` → `12,346`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// A median (and p99 where it applies) beside the floor it is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub median: Figure,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<Figure>,
    /// What the floor is, measured in the same run.
    pub floor_what: String,
    pub floor: Option<Figure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_p99: Option<Figure>,
    /// The target, as text, and whether this run met it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

impl Row {
    pub fn new(section: &'static str, what: impl Into<String>, median: Figure) -> Row {
        Row { section, what: what.into(), median, p99: None, floor_what: String::new(), floor: None, floor_p99: None, target: None, met: None }
    }
    pub fn p99(mut self, p99: Figure) -> Row {
        self.p99 = Some(p99);
        self
    }
    pub fn floor(mut self, what: impl Into<String>, median: Figure, p99: Option<Figure>) -> Row {
        self.floor_what = what.into();
        self.floor = Some(median);
        self.floor_p99 = p99;
        self
    }
    pub fn target(mut self, text: impl Into<String>, met: bool) -> Row {
        self.target = Some(text.into());
        self.met = Some(met);
        self
    }
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// How the figures were taken (tools, settings, machine).
    pub settings: Vec<String>,
    pub rows: Vec<Row>,
    /// Sections that could not run, and why.
    pub skipped: Vec<String>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        eprintln!("  {}: {} {}", row.section, row.what, row.median);
        self.rows.push(row);
    }

    /// One table per section, in the order they ran.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# rayfine bench\n\n");
        for line in &self.settings {
            out.push_str(&format!("- {line}\n"));
        }
        let mut sections: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !sections.contains(&row.section) {
                sections.push(row.section);
            }
        }
        for section in sections {
            out.push_str(&format!("\n## {section}\n\n| what | median | p99 | floor | floor median | floor p99 | target | met |\n|---|---:|---:|---|---:|---:|---|:---:|\n"));
            for row in self.rows.iter().filter(|r| r.section == section) {
                let opt = |f: Option<Figure>| f.map(|f| f.to_string()).unwrap_or_default();
                let met = match row.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                };
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    row.what,
                    row.median,
                    opt(row.p99),
                    row.floor_what,
                    opt(row.floor),
                    opt(row.floor_p99),
                    row.target.as_deref().unwrap_or(""),
                    met
                ));
            }
        }
        if !self.skipped.is_empty() {
            out.push_str("\n## Not measured\n\n");
            for line in &self.skipped {
                out.push_str(&format!("- {line}\n"));
            }
        }
        out
    }
}

/// A duration in milliseconds, the unit the start-up and build rows collect.
pub fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The middle value (the upper one of an even count); NaN when empty.
pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 50.0)
}

/// Nearest-rank percentile; NaN when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_print_in_their_unit() {
        assert_eq!(Figure::micros(161.4).to_string(), "161 µs");
        assert_eq!(Figure::per_second(29028.2).to_string(), "29,028/s");
        assert_eq!(Figure::millis(465.0).to_string(), "465 ms");
        assert_eq!(Figure::millis(2.34).to_string(), "2.3 ms");
        assert_eq!(Figure::millis(12_345.0).to_string(), "12.35 s");
        assert_eq!(Figure::percent(100.0).to_string(), "100.00 %");
        assert_eq!(Figure::micros(f64::NAN).to_string(), "n/a");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&samples), 3.0);
        assert_eq!(percentile(&samples, 99.0), 5.0);
        assert_eq!(percentile(&samples, 0.0), 1.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn markdown_has_a_table_per_section_with_the_floor() {
        let mut report = Report::default();
        report.rows.push(Row::new("Call cost", "sync", Figure::micros(100.0)).p99(Figure::micros(150.0)).floor("echo", Figure::micros(60.0), None).target("≤ 90 µs", false));
        let text = report.markdown();
        assert!(text.contains("## Call cost"), "{text}");
        assert!(text.contains("| sync | 100 µs | 150 µs | echo | 60 µs |  | ≤ 90 µs | **no** |"), "{text}");
    }
}

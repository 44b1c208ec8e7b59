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
    /// How long each part of the run took, in seconds, in the order they ran: the bench is meant
    /// to take under five minutes, and this says which part made a slow machine's run longer.
    pub seconds: Vec<(String, f64)>,
}

impl Report {
    /// Notes that the part `what` of the run began at `since` and has just ended.
    pub fn took(&mut self, what: &str, since: std::time::Instant) {
        self.seconds.push((what.to_string(), since.elapsed().as_secs_f64()));
    }

    /// The times of `took`, as one line of the settings.
    pub fn times_line(&self) -> Option<String> {
        if self.seconds.is_empty() {
            return None;
        }
        let parts: Vec<String> = self.seconds.iter().map(|(what, s)| format!("{what} {s:.0} s")).collect();
        Some(format!("time by part: {}", parts.join(", ")))
    }

    pub fn push(&mut self, row: Row) {
        eprintln!("  {}: {} {}", row.section, row.what, row.median);
        self.rows.push(row);
    }

    /// One table per section, in the order they ran.
    pub fn markdown(&self) -> String {
        let opt = |f: Option<Figure>| f.map(|f| f.to_string()).unwrap_or_default();
        let lines = self.rows.iter().map(|row| {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let cells = [row.what.clone(), row.median.to_string(), opt(row.p99), row.floor_what.clone(), opt(row.floor), opt(row.floor_p99), row.target.clone().unwrap_or_default(), met.to_string()];
            (row.section, cells.to_vec())
        });
        document("rayfine bench", &self.settings, &["what", "median", "p99", "floor", "floor median", "floor p99", "target", "met"], lines, &self.skipped)
    }
}

/// Both reports' Markdown: a title, the settings, one table per section in the order the rows
/// first name them (`header` names the columns; text columns are left-aligned, figures right,
/// the last centred), then what was not measured.
fn document(title: &str, settings: &[String], header: &[&str], rows: impl Iterator<Item = (&'static str, Vec<String>)>, skipped: &[String]) -> String {
    let mut out = format!("# {title}\n\n");
    for line in settings {
        out.push_str(&format!("- {line}\n"));
    }
    let rows: Vec<(&'static str, Vec<String>)> = rows.collect();
    let mut sections: Vec<&str> = Vec::new();
    for (section, _) in &rows {
        if !sections.contains(section) {
            sections.push(section);
        }
    }
    let text_columns = ["what", "floor", "target"];
    let alignment: Vec<&str> = header
        .iter()
        .enumerate()
        .map(|(i, name)| if i + 1 == header.len() { ":---:" } else if text_columns.contains(name) { "---" } else { "---:" })
        .collect();
    for section in sections {
        out.push_str(&format!("\n## {section}\n\n| {} |\n|{}|\n", header.join(" | "), alignment.join("|")));
        for (_, cells) in rows.iter().filter(|(s, _)| *s == section) {
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    if !skipped.is_empty() {
        out.push_str("\n## Not measured\n\n");
        for line in skipped {
            out.push_str(&format!("- {line}\n"));
        }
    }
    out
}

/// One row over several runs (`rayfine bench --repeat N`): the median of its medians, their
/// spread, and the ratio to the floor measured in each run (a run's figure over its own floor,
/// which cancels the drift of a noisy machine better than comparing medians across runs).
#[derive(Debug, Clone, Serialize)]
pub struct RepeatedRow {
    pub section: &'static str,
    pub what: String,
    /// How many runs measured it.
    pub runs: usize,
    pub median: Figure,
    pub lowest: Figure,
    pub highest: Figure,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<Figure>,
    pub floor_what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<Figure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_p99: Option<Figure>,
    /// The median, lowest and highest of each run's figure ÷ its floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<[f64; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// In how many runs the target was met.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met_in: Option<usize>,
}

/// Several runs' rows, summarised.
#[derive(Debug, Default, Serialize)]
pub struct Repeated {
    pub settings: Vec<String>,
    pub rows: Vec<RepeatedRow>,
    /// Every run's reasons for what it could not measure, each once.
    pub skipped: Vec<String>,
}

impl Repeated {
    /// Rows are matched by section and wording, in the order the first run printed them.
    pub fn of(reports: &[Report]) -> Repeated {
        let mut summary = Repeated::default();
        if let Some(first) = reports.first() {
            // Each run's part times are in the JSON; the Markdown shows the first run's.
            summary.settings = first.settings.iter().map(|line| line.replacen("time by part: ", "time by part, first run: ", 1)).collect();
        }
        summary.settings.push(format!("{} runs: each figure is the median over the runs, with the lowest and highest; the ratio is each run's figure over that run's floor", reports.len()));
        let mut keys: Vec<(&'static str, &str)> = Vec::new();
        for row in reports.iter().flat_map(|r| &r.rows) {
            if !keys.contains(&(row.section, row.what.as_str())) {
                keys.push((row.section, row.what.as_str()));
            }
        }
        for (section, what) in keys {
            let rows: Vec<&Row> = reports.iter().flat_map(|r| &r.rows).filter(|r| r.section == section && r.what == what).collect();
            let first = rows[0];
            let figure = |value: f64| Figure { value, unit: first.median.unit };
            // The median over the runs of an optional figure, in its own unit (a throughput
            // row's p99 is a latency, not calls/s).
            let median_of = |pick: fn(&Row) -> Option<Figure>| {
                let values: Vec<f64> = rows.iter().filter_map(|r| pick(r).map(|f| f.value)).collect();
                pick(first).map(|f| Figure { value: median(&values), unit: f.unit })
            };
            let medians: Vec<f64> = rows.iter().map(|r| r.median.value).collect();
            let ratios: Vec<f64> = rows.iter().filter_map(|r| Some(r.median.value / r.floor?.value)).filter(|x| x.is_finite()).collect();
            let lowest_highest = |values: &[f64]| [percentile(values, 0.0), percentile(values, 100.0)];
            let [lowest, highest] = lowest_highest(&medians);
            summary.rows.push(RepeatedRow {
                section,
                what: what.to_string(),
                runs: rows.len(),
                median: figure(median(&medians)),
                lowest: figure(lowest),
                highest: figure(highest),
                p99: median_of(|r| r.p99),
                floor_what: first.floor_what.clone(),
                floor: median_of(|r| r.floor),
                floor_p99: median_of(|r| r.floor_p99),
                ratio: (!ratios.is_empty()).then(|| {
                    let [lowest, highest] = lowest_highest(&ratios);
                    [median(&ratios), lowest, highest]
                }),
                target: first.target.clone(),
                met_in: first.met.map(|_| rows.iter().filter(|r| r.met == Some(true)).count()),
            });
        }
        for line in reports.iter().flat_map(|r| &r.skipped) {
            if !summary.skipped.contains(line) {
                summary.skipped.push(line.clone());
            }
        }
        summary
    }

    /// One table per section, as [`Report::markdown`], with spread, ratio and runs met.
    pub fn markdown(&self) -> String {
        let opt = |f: Option<Figure>| f.map(|f| f.to_string()).unwrap_or_default();
        let lines = self.rows.iter().map(|row| {
            let ratio = row.ratio.map(|[m, lo, hi]| format!("{m:.2}× ({lo:.2} – {hi:.2})")).unwrap_or_default();
            let met = row.met_in.map(|k| format!("{k}/{}", row.runs)).unwrap_or_default();
            let cells = [
                row.what.clone(),
                row.median.to_string(),
                format!("{} – {}", row.lowest, row.highest),
                opt(row.p99),
                row.floor_what.clone(),
                opt(row.floor),
                opt(row.floor_p99),
                ratio,
                row.target.clone().unwrap_or_default(),
                met,
            ];
            (row.section, cells.to_vec())
        });
        let header = ["what", "median", "lowest – highest", "p99", "floor", "floor median", "floor p99", "ratio to floor (lowest – highest)", "target", "met in"];
        document("rayfine bench (repeated)", &self.settings, &header, lines, &self.skipped)
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
    fn repeated_runs_give_the_median_spread_ratio_and_runs_met() {
        let run = |value: f64, floor: f64| {
            let mut report = Report::default();
            report.rows.push(Row::new("Call cost", "sync", Figure::micros(value)).p99(Figure::micros(value * 2.0)).floor("echo", Figure::micros(floor), None).target("≤ 1.2× echo", value <= 1.2 * floor));
            report.skipped.push("Docker: none".into());
            report
        };
        // The second run is on a noisier machine: slower, but so is its floor.
        let summary = Repeated::of(&[run(100.0, 90.0), run(200.0, 190.0), run(120.0, 80.0)]);
        assert_eq!(summary.rows.len(), 1);
        let row = &summary.rows[0];
        assert_eq!((row.runs, row.median.value, row.lowest.value, row.highest.value), (3, 120.0, 100.0, 200.0));
        assert_eq!(row.p99.map(|f| f.value), Some(240.0));
        assert_eq!(row.floor.map(|f| f.value), Some(90.0));
        let [ratio, lowest, highest] = row.ratio.unwrap();
        // 100/90, 200/190 and 120/80: the noisy run's ratio is the lowest, not an outlier.
        assert!((ratio - 100.0 / 90.0).abs() < 1e-9 && (lowest - 200.0 / 190.0).abs() < 1e-9 && (highest - 1.5).abs() < 1e-9, "{:?}", row.ratio);
        assert_eq!(row.met_in, Some(2));
        assert_eq!(summary.skipped, ["Docker: none"]);
        let text = summary.markdown();
        assert!(text.contains("| sync | 120 µs | 100 µs – 200 µs | 240 µs | echo | 90 µs |  | 1.11× (1.05 – 1.50) | ≤ 1.2× echo | 2/3 |"), "{text}");
    }

    #[test]
    fn a_repeated_throughput_row_keeps_its_latency_p99_in_microseconds() {
        let run = || {
            let mut report = Report::default();
            report.rows.push(Row::new("Throughput", "64 connections", Figure::per_second(40_000.0)).p99(Figure::micros(4_500.0)).floor("echo", Figure::per_second(90_000.0), Some(Figure::micros(4_400.0))));
            report
        };
        let summary = Repeated::of(&[run(), run()]);
        let row = &summary.rows[0];
        assert_eq!(row.p99.map(|f| f.to_string()), Some("4,500 µs".to_string()));
        assert_eq!(row.floor_p99.map(|f| f.to_string()), Some("4,400 µs".to_string()));
        assert_eq!(row.floor.map(|f| f.to_string()), Some("90,000/s".to_string()));
    }

    #[test]
    fn markdown_has_a_table_per_section_with_the_floor() {
        let mut report = Report::default();
        report.rows.push(Row::new("Call cost", "sync", Figure::micros(100.0)).p99(Figure::micros(150.0)).floor("echo", Figure::micros(60.0), None).target("≤ 90 µs", false));
        let text = report.markdown();
        assert!(text.contains("## Call cost"), "{text}");
        assert!(text.contains("| sync | 100 µs | 150 µs | echo | 60 µs |  | ≤ 90 µs | **no** |"), "{text}");
        assert!(text.contains("| what | median | p99 | floor | floor median | floor p99 | target | met |\n|---|---:|---:|---|---:|---:|---|:---:|\n"), "{text}");
    }
}

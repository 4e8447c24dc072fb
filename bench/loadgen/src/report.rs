//! The results: P-lines, the Markdown table, the raw rounds, the latency plot, the README.

use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Figure {
    pub id: &'static str,
    pub measure: String,
    pub value: f64,
    pub unit: &'static str,
    pub goal: &'static str,
    pub met: bool,
    /// The rounds behind the value, for people.
    pub rounds: String,
}

pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Figure {
    pub fn line(&self) -> String {
        format!(
            "{} {} {} goal {} {}",
            self.id,
            fmt_num(self.value),
            self.unit,
            self.goal,
            if self.met { "met" } else { "missed" }
        )
    }
}

pub struct Report {
    pub date: String,
    pub stamp: String,
    pub machine: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    pub raw: serde_json::Value,
    pub run_secs: f64,
}

impl Report {
    pub fn table(&self, plot: &str) -> String {
        let mut s = String::new();
        let m: Vec<String> = self
            .machine
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let v: Vec<String> = self
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "Run {} · {}", self.stamp, m.join(" · "));
        let _ = writeln!(
            s,
            "({}; `scripts/bench` took {:.0} s)\n",
            v.join(", "),
            self.run_secs
        );
        let _ = writeln!(s, "| id | measure | value | goal | result | rounds |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for f in &self.figures {
            let _ = writeln!(
                s,
                "| {} | {} | {} {} | {} | {} | {} |",
                f.id,
                f.measure,
                fmt_num(f.value),
                f.unit,
                f.goal,
                if f.met { "met" } else { "**missed**" },
                f.rounds
            );
        }
        let _ = writeln!(s, "\n![Relay latency]({plot})");
        s
    }

    pub fn markdown(&self, plot: &str, rounds_file: &str) -> String {
        let mut s = format!("# Palisade benchmark, {}\n\n", self.date);
        s.push_str(&self.table(plot));
        s.push_str("\n## How the figures were made\n\n");
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(
            s,
            "\nEvery round's raw numbers are in [`{rounds_file}`]({rounds_file})."
        );
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A percentile plot of relay latency (x: percentile on a log scale of 1/(1-p); y:
/// milliseconds on a log scale), one line per series.
pub fn latency_svg(title: &str, series: &[(&str, &str, Vec<u32>)]) -> String {
    let (w, h) = (800.0f64, 440.0f64);
    let (l, r, t, b) = (70.0, 210.0, 40.0, 50.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let max_us = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .max()
        .unwrap_or(1000)
        .max(1000);
    let min_us = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .min()
        .unwrap_or(100)
        .clamp(1, 1000);
    let y_lo = (min_us as f64 / 1000.0).log10().floor();
    let y_hi = (max_us as f64 / 1000.0).log10().ceil().max(y_lo + 1.0);
    let x_hi = 4.0; // 99.99th percentile
    let xp = |p: f64| l + pw * ((1.0 / (1.0 - p)).log10() / x_hi).min(1.0);
    let yp = |ms: f64| t + ph * (1.0 - ((ms.max(1e-3)).log10() - y_lo) / (y_hi - y_lo));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        l + pw / 2.0,
        esc(title)
    );
    // Grid: percentiles.
    for (p, label) in [
        (0.0, "0"),
        (0.5, "50"),
        (0.9, "90"),
        (0.99, "99"),
        (0.999, "99.9"),
        (0.9999, "99.99"),
    ] {
        let x = xp(p);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            t + ph,
            t + ph + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile of messages</text>"#,
        l + pw / 2.0,
        h - 10.0
    );
    // Grid: milliseconds, decades with 2 and 5 marks.
    let mut d = y_lo;
    while d <= y_hi {
        for m in [1.0, 2.0, 5.0] {
            let ms = 10f64.powf(d) * m;
            if ms.log10() > y_hi + 1e-9 {
                break;
            }
            let y = yp(ms);
            let stroke = if m == 1.0 { "#ccc" } else { "#eee" };
            let _ = writeln!(
                s,
                r#"<line x1="{l}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/>"#,
                l + pw
            );
            let label = if ms >= 1.0 {
                format!("{ms:.0}")
            } else {
                format!("{ms}")
            };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
                l - 6.0,
                y + 4.0
            );
        }
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">relay latency (ms)</text>"#,
        t + ph / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    for (i, (name, color, samples)) in series.iter().enumerate() {
        let mut v = samples.clone();
        v.sort_unstable();
        if v.is_empty() {
            continue;
        }
        let n = v.len();
        let mut pts = String::new();
        // Sample the curve on a log grid of percentiles.
        let steps = 400;
        for k in 0..=steps {
            let x = x_hi * k as f64 / steps as f64;
            let p = 1.0 - 10f64.powf(-x);
            let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            let _ = write!(pts, "{:.1},{:.1} ", xp(p), yp(v[idx] as f64 / 1000.0));
            if idx == n - 1 {
                break;
            }
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>"#
        );
        let ly = t + 20.0 + i as f64 * 40.0;
        let p99 = crate::stats::percentile(&v, 99.0) as f64 / 1000.0;
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" fill="#555">n={n}, p99 {p99:.1} ms</text>"##,
            l + pw + 12.0,
            l + pw + 32.0,
            l + pw + 38.0,
            ly + 4.0,
            esc(name),
            l + pw + 38.0,
            ly + 19.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Replace the text between the two markers in a README with `body`.
pub fn update_readme(path: &Path, body: &str) -> Result<(), String> {
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        return Err(format!("{}: no {BEGIN} … {END} markers", path.display()));
    };
    if b < a {
        return Err(format!("{}: markers out of order", path.display()));
    }
    let out = format!("{}{BEGIN}\n{body}{}", &text[..a], &text[b..]);
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}

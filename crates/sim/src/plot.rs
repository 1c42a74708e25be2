//! Plots of reports as standalone SVG: time to first token per region, the day's timeline, and
//! several scenarios side by side. Plain text in, plain text out; no fonts or scripts fetched.

use crate::report::Report;
use std::fmt::Write;

const WIDTH: f64 = 760.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 24.0;
const BLUE: &str = "#1f5fa8";
const ORANGE: &str = "#b34d00";
const GREY: &str = "#d0d0d0";
const INK: &str = "#1a1a1a";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn open(height: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12" fill="{INK}">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>
"#,
        escape(title)
    );
    s
}

/// A round step for an axis reaching `max`, about `ticks` of them.
fn step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power)
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Horizontal bars per row: for each row, `values` drawn as bars of each series' colour.
fn bars(title: &str, unit: &str, rows: &[(String, Vec<f64>)], series: &[(&str, &str)]) -> String {
    let row_h = 8.0 * series.len() as f64 + 8.0;
    let top = 48.0;
    let height = top + row_h * rows.len() as f64 + 40.0;
    let max = rows.iter().flat_map(|(_, v)| v.iter().copied()).fold(0.0, f64::max).max(1e-9);
    let step = step(max, 6.0);
    let axis_max = (max / step).ceil() * step;
    // Room on the left for the longest row name (about 7 px a character at 12 px).
    let left = rows
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .map_or(LEFT, |n| (n as f64 * 7.0 + 14.0).max(LEFT));
    let plot_w = WIDTH - left - RIGHT;
    let x = |v: f64| left + v / axis_max * plot_w;
    let mut s = open(height, title);
    // Legend.
    let mut lx = left;
    for (name, colour) in series {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="30" width="10" height="10" fill="{colour}"/><text x="{}" y="39">{}</text>"#,
            lx + 14.0,
            escape(name)
        );
        lx += 24.0 + 7.0 * name.len() as f64;
    }
    let bottom = top + row_h * rows.len() as f64;
    let mut tick = 0.0;
    while tick <= axis_max + step / 2.0 {
        let tx = x(tick);
        let _ = writeln!(
            s,
            r#"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{bottom}" stroke="{GREY}"/><text x="{tx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 14.0,
            label(tick)
        );
        tick += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        bottom + 32.0,
        escape(unit)
    );
    for (i, (name, values)) in rows.iter().enumerate() {
        let y0 = top + row_h * i as f64 + 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y0 + row_h / 2.0,
            escape(name)
        );
        for (j, v) in values.iter().enumerate() {
            let colour = series.get(j).map_or(BLUE, |s| s.1);
            let _ = writeln!(
                s,
                r#"<rect x="{left}" y="{:.1}" width="{:.1}" height="7" fill="{colour}"><title>{} {}: {v:.1}</title></rect>"#,
                y0 + 8.0 * j as f64,
                (x(*v) - left).max(0.5),
                escape(name),
                escape(series.get(j).map_or("", |s| s.0)),
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Time to first token per region, p50 and p99, regions ordered by p50.
pub fn ttft_by_region(report: &Report, title: &str) -> String {
    let mut rows: Vec<(String, Vec<f64>)> = report
        .regions
        .iter()
        .filter(|r| r.outcome.requests > 0)
        .map(|r| (r.name.clone(), vec![r.outcome.ttft_ms.p50, r.outcome.ttft_ms.p99]))
        .collect();
    rows.sort_by(|a, b| a.1[0].total_cmp(&b.1[0]).then(a.0.cmp(&b.0)));
    bars(title, "time to first token, ms", &rows, &[("p50", BLUE), ("p99", ORANGE)])
}

/// The day: arrivals per second and machines on, against simulated hours.
pub fn timeline(report: &Report, title: &str) -> String {
    let height = 300.0;
    let (top, bottom) = (48.0, height - 40.0);
    let plot_w = WIDTH - LEFT - 60.0;
    let end_h = report.duration_s / 3600.0;
    let max_rate = report.timeline.iter().map(|p| p.arrivals_per_s).fold(0.0, f64::max).max(1e-9);
    let max_on = report.timeline.iter().map(|p| p.machines_on as f64).fold(0.0, f64::max).max(1.0);
    let (rate_step, on_step) = (step(max_rate, 5.0), step(max_on, 5.0));
    let (rate_top, on_top) = ((max_rate / rate_step).ceil() * rate_step, (max_on / on_step).ceil() * on_step);
    let x = |t_s: f64| LEFT + t_s / 3600.0 / end_h.max(1e-9) * plot_w;
    let y = |v: f64, top_v: f64| bottom - v / top_v * (bottom - top);
    let mut s = open(height, title);
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="30" width="10" height="10" fill="{BLUE}"/><text x="{}" y="39">arrivals per second (left)</text><rect x="{}" y="30" width="10" height="10" fill="{ORANGE}"/><text x="{}" y="39">machines on (right)</text>"#,
        LEFT + 14.0,
        LEFT + 200.0,
        LEFT + 214.0
    );
    for i in 0..=5 {
        let frac = i as f64 / 5.0;
        let yy = bottom - frac * (bottom - top);
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{GREY}"/><text x="{}" y="{:.1}" text-anchor="end">{}</text><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            label(rate_top * frac),
            LEFT + plot_w + 6.0,
            yy + 4.0,
            label(on_top * frac)
        );
    }
    let hours_step = step(end_h, 8.0);
    let mut h = 0.0;
    while h <= end_h + 1e-9 {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(h * 3600.0),
            bottom + 14.0,
            label(h)
        );
        h += hours_step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">simulated hours (0 = midnight UTC)</text>"#,
        LEFT + plot_w / 2.0,
        bottom + 32.0
    );
    let line = |points: Vec<(f64, f64)>, colour: &str| {
        let path: Vec<String> = points.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        )
    };
    let rates = report.timeline.iter().map(|p| (x(p.t_s), y(p.arrivals_per_s, rate_top))).collect();
    let on = report
        .timeline
        .iter()
        .map(|p| (x(p.t_s), y(p.machines_on as f64, on_top)))
        .collect();
    let _ = writeln!(s, "{}", line(rates, BLUE));
    let _ = writeln!(s, "{}", line(on, ORANGE));
    s.push_str("</svg>\n");
    s
}

/// Several scenarios side by side: time to first token (p50, p99 over all callers) and cost
/// per million tokens.
pub fn compare(reports: &[(String, Report)]) -> (String, String) {
    let ttft: Vec<(String, Vec<f64>)> = reports
        .iter()
        .map(|(name, r)| (name.clone(), vec![r.overall.ttft_ms.p50, r.overall.ttft_ms.p99]))
        .collect();
    let cost: Vec<(String, Vec<f64>)> = reports
        .iter()
        .map(|(name, r)| {
            let per_m = |usd: f64| {
                if r.overall.tokens > 0 {
                    usd / (r.overall.tokens as f64 / 1e6)
                } else {
                    0.0
                }
            };
            (name.clone(), vec![per_m(r.cost.gpu_usd), per_m(r.cost.egress_usd)])
        })
        .collect();
    (
        bars("Time to first token, all callers", "ms", &ttft, &[("p50", BLUE), ("p99", ORANGE)]),
        bars("Cost per million output tokens", "USD", &cost, &[("GPU", BLUE), ("egress", ORANGE)]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(step(93.0, 6.0), 20.0);
        assert_eq!(step(0.7, 5.0), 0.2);
        assert_eq!(step(1000.0, 5.0), 200.0);
        assert_eq!(escape("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}

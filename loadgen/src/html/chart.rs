//! Hand-written SVG charts for the HTML report: a line chart (several named series over time,
//! with gaps where a value is missing) and a bar chart (a distribution). No crate and no
//! script: the page must open offline, years later, exactly as written.
//!
//! Every number written into the SVG goes through one formatting function, so a non-finite
//! value can never reach the file (a browser drops an element with `NaN` in it, silently).

use std::fmt::Write as _;

use super::escape;

/// Width of every chart, in SVG units (the page scales it to its column).
pub const WIDTH: f64 = 640.0;
/// Height of every chart.
pub const HEIGHT: f64 = 280.0;
/// The plot box: left edge (room for the y tick labels).
pub const PLOT_LEFT: f64 = 64.0;
/// The plot box: right edge.
pub const PLOT_RIGHT: f64 = WIDTH - 16.0;
/// The plot box: top edge (below the title and the unit).
pub const PLOT_TOP: f64 = 48.0;
/// The plot box: bottom edge (above the x tick labels and the legend).
pub const PLOT_BOTTOM: f64 = HEIGHT - 60.0;

/// About how many ticks an axis gets; [`nice_ticks`] picks a round step near it.
const Y_TICKS: usize = 5;
const X_TICKS: usize = 8;

/// One line of a [`LineChart`].
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Its name in the legend.
    pub name: &'a str,
    /// Its stroke colour (a CSS colour).
    pub color: &'a str,
    /// Drawn dashed: a reference (a limit, a target) rather than a measurement.
    pub dashed: bool,
    /// (x, y) in x order; `None` (or a non-finite value) leaves a gap.
    pub points: Vec<(f64, Option<f64>)>,
}

/// A chart of series over time (x in seconds).
#[derive(Debug, Clone)]
pub struct LineChart<'a> {
    /// Shown above the plot.
    pub title: &'a str,
    /// The y axis' unit, shown above it.
    pub y_unit: &'a str,
    /// The lines, drawn in order (the last on top).
    pub series: Vec<Series<'a>>,
}

/// One bar of a [`bar_chart`]: `value` over `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// Left edge, in x units.
    pub from: f64,
    /// Right edge.
    pub to: f64,
    /// Height.
    pub value: f64,
}

/// Round tick values covering `lo..=hi`, about `target` of them: a step of 1, 2, 2.5 or 5
/// times a power of ten, the first tick at or below `lo` and the last at or above `hi` (so
/// 0..97 gives 0, 20, ..., 100). A degenerate or non-finite range gives ticks over 0..1 or
/// `lo..lo + 1`.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, mut hi) = if lo.is_finite() && hi.is_finite() {
        (lo.min(hi), lo.max(hi))
    } else {
        (0.0, 1.0)
    };
    if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
        hi = lo + 1.0;
    }
    let step = nice_step((hi - lo) / target.max(1) as f64);
    // A hair of slack so that 99.99999 / 20 does not round up to an extra tick.
    let first = (lo / step + 1e-9).floor();
    let last = (hi / step - 1e-9).ceil();
    if !(step.is_finite() && step > 0.0 && first.is_finite() && last.is_finite())
        || last - first > 1000.0
    {
        return vec![0.0, 1.0];
    }
    // k × step rounded to the step's decimals, not a running sum: 3 × 0.1 is 0.3, not
    // 0.30000000000000004.
    let scale = 10f64.powi(decimals_for(step) as i32);
    (first as i64..=last as i64)
        .map(|k| (k as f64 * step * scale).round() / scale + 0.0)
        .collect()
}

/// 1, 2, 2.5 or 5 times a power of ten, the smallest at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    // The slack keeps 0.2 / 0.1 = 2.0000000000000004 a 2.
    let fraction = raw / magnitude - 1e-9;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 2.5 {
        2.5
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Decimals needed to write every multiple of `step` exactly (0.25 needs 2, 20 none).
fn decimals_for(step: f64) -> usize {
    (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0)
        })
        .unwrap_or(6)
}

/// A tick label: `value` with the decimals its step needs; never `-0`.
fn tick_label(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value + 0.0);
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        text.trim_start_matches('-').to_owned()
    } else {
        text
    }
}

/// A number as written into the SVG: one decimal, and 0 for anything non-finite (a last line
/// of defence: callers leave non-finite values out).
fn coord(v: f64) -> String {
    format!("{:.1}", if v.is_finite() { v } else { 0.0 })
}

/// A linear map from an axis' ticks (their first and last are its ends) to pixels.
struct Axis {
    ticks: Vec<f64>,
    decimals: usize,
    from_px: f64,
    to_px: f64,
}

impl Axis {
    fn new(lo: f64, hi: f64, target: usize, from_px: f64, to_px: f64) -> Axis {
        let ticks = nice_ticks(lo, hi, target);
        let step = match ticks.as_slice() {
            [a, b, ..] => b - a,
            _ => 1.0,
        };
        Axis {
            decimals: decimals_for(step),
            ticks,
            from_px,
            to_px,
        }
    }

    fn lo(&self) -> f64 {
        self.ticks.first().copied().unwrap_or(0.0)
    }

    fn hi(&self) -> f64 {
        self.ticks.last().copied().unwrap_or(1.0)
    }

    /// The pixel of `v`, held inside the axis.
    fn px(&self, v: f64) -> f64 {
        let span = self.hi() - self.lo();
        let t = if span > 0.0 {
            ((v - self.lo()) / span).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.from_px + t * (self.to_px - self.from_px)
    }
}

/// The frame every chart shares: the SVG element, title, unit, grid, tick labels and axes.
fn open_frame(out: &mut String, title: &str, y_unit: &str, x_unit: &str, x: &Axis, y: &Axis) {
    let _ = write!(
        out,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img" aria-label="{title}">"#,
        w = WIDTH,
        h = HEIGHT,
        title = escape(title)
    );
    let _ = write!(
        out,
        r#"<text class="title" x="8" y="20">{}</text><text class="unit" x="8" y="{}">{}</text>"#,
        escape(title),
        coord(PLOT_TOP - 12.0),
        escape(y_unit)
    );
    for &tick in &y.ticks {
        let py = coord(y.px(tick));
        let _ = write!(
            out,
            r#"<line class="grid" x1="{}" x2="{}" y1="{py}" y2="{py}"/><text class="tick" x="{}" y="{}" text-anchor="end">{}</text>"#,
            coord(PLOT_LEFT),
            coord(PLOT_RIGHT),
            coord(PLOT_LEFT - 6.0),
            coord(y.px(tick) + 4.0),
            tick_label(tick, y.decimals)
        );
    }
    for &tick in &x.ticks {
        let px = x.px(tick);
        let _ = write!(
            out,
            r#"<line class="axis" x1="{p}" x2="{p}" y1="{}" y2="{}"/><text class="tick" x="{p}" y="{}" text-anchor="middle">{}</text>"#,
            coord(PLOT_BOTTOM),
            coord(PLOT_BOTTOM + 4.0),
            coord(PLOT_BOTTOM + 17.0),
            tick_label(tick, x.decimals),
            p = coord(px),
        );
    }
    let _ = write!(
        out,
        r#"<line class="axis" x1="{l}" x2="{r}" y1="{b}" y2="{b}"/><line class="axis" x1="{l}" x2="{l}" y1="{t}" y2="{b}"/><text class="unit" x="{r}" y="{}" text-anchor="end">{}</text>"#,
        coord(PLOT_BOTTOM + 32.0),
        escape(x_unit),
        l = coord(PLOT_LEFT),
        r = coord(PLOT_RIGHT),
        t = coord(PLOT_TOP),
        b = coord(PLOT_BOTTOM),
    );
}

/// "no data", in the middle of an empty plot.
fn no_data(out: &mut String) {
    let _ = write!(
        out,
        r#"<text class="empty" x="{}" y="{}" text-anchor="middle">no data</text>"#,
        coord((PLOT_LEFT + PLOT_RIGHT) / 2.0),
        coord((PLOT_TOP + PLOT_BOTTOM) / 2.0)
    );
}

/// Draws a line chart: y from 0 (or below, for negative values) to the largest value, x over
/// the points' range, one polyline per unbroken run of a series (a lone point is a dot), and
/// a legend under the plot.
pub fn line_chart(chart: &LineChart<'_>) -> String {
    let finite = |v: f64| v.is_finite().then_some(v);
    // Runs of drawable points per series: a gap where y is missing or x or y not finite.
    let runs: Vec<Vec<Vec<(f64, f64)>>> = chart
        .series
        .iter()
        .map(|s| {
            let mut runs = vec![Vec::new()];
            for &(x, y) in &s.points {
                match (finite(x), y.and_then(finite)) {
                    (Some(x), Some(y)) => runs.last_mut().expect("never empty").push((x, y)),
                    _ if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
                    _ => {}
                }
            }
            runs.retain(|r| !r.is_empty());
            runs
        })
        .collect();
    let all = || runs.iter().flatten().flatten();
    let has_data = all().next().is_some();
    let (x_lo, x_hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(x, _)| {
        (lo.min(x), hi.max(x))
    });
    let (y_lo, y_hi) = all().fold((0.0f64, 0.0f64), |(lo, hi), &(_, y)| (lo.min(y), hi.max(y)));
    let (x_lo, x_hi) = if has_data { (x_lo, x_hi) } else { (0.0, 1.0) };
    let x = Axis::new(x_lo, x_hi, X_TICKS, PLOT_LEFT, PLOT_RIGHT);
    let y = Axis::new(y_lo, y_hi, Y_TICKS, PLOT_BOTTOM, PLOT_TOP);
    let mut out = String::new();
    open_frame(&mut out, chart.title, chart.y_unit, "time (s)", &x, &y);
    if !has_data {
        no_data(&mut out);
    }
    for (series, runs) in chart.series.iter().zip(&runs) {
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let color = escape(series.color);
        for run in runs {
            if let [(px, py)] = run.as_slice() {
                let _ = write!(
                    out,
                    r#"<circle cx="{}" cy="{}" r="2.5" fill="{color}"/>"#,
                    coord(x.px(*px)),
                    coord(y.px(*py))
                );
                continue;
            }
            let points: Vec<String> = run
                .iter()
                .map(|&(px, py)| format!("{},{}", coord(x.px(px)), coord(y.px(py))))
                .collect();
            let _ = write!(
                out,
                r#"<polyline class="series" points="{}" stroke="{color}"{dash}/>"#,
                points.join(" ")
            );
        }
    }
    legend(&mut out, &chart.series);
    out.push_str("</svg>");
    out
}

/// The legend: a swatch and a name per series, left to right under the plot.
fn legend(out: &mut String, series: &[Series<'_>]) {
    let y = HEIGHT - 12.0;
    let mut at = PLOT_LEFT;
    for s in series {
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<line x1="{}" x2="{}" y1="{yl}" y2="{yl}" stroke="{}" stroke-width="2"{dash}/><text class="legend" x="{}" y="{}">{}</text>"#,
            coord(at),
            coord(at + 18.0),
            escape(s.color),
            coord(at + 24.0),
            coord(y),
            escape(s.name),
            yl = coord(y - 4.0),
        );
        // About 6.5 units per character of the legend's 11-unit font.
        at += 24.0 + 6.5 * s.name.chars().count() as f64 + 18.0;
    }
}

/// Draws a bar chart of `bars` (a histogram): x over the bars' extent, y from 0 to the
/// tallest; each bar has a tooltip with its range and value.
pub fn bar_chart(title: &str, x_unit: &str, y_unit: &str, color: &str, bars: &[Bar]) -> String {
    let bars: Vec<Bar> = bars
        .iter()
        .copied()
        .filter(|b| b.from.is_finite() && b.to.is_finite() && b.value.is_finite())
        .collect();
    let (x_lo, x_hi) = bars
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), b| {
            (lo.min(b.from), hi.max(b.to))
        });
    let (x_lo, x_hi) = if bars.is_empty() {
        (0.0, 1.0)
    } else {
        (x_lo, x_hi)
    };
    let y_hi = bars.iter().fold(0.0f64, |hi, b| hi.max(b.value));
    let x = Axis::new(x_lo, x_hi, X_TICKS, PLOT_LEFT, PLOT_RIGHT);
    let y = Axis::new(0.0, y_hi, Y_TICKS, PLOT_BOTTOM, PLOT_TOP);
    let mut out = String::new();
    open_frame(&mut out, title, y_unit, x_unit, &x, &y);
    if bars.is_empty() {
        no_data(&mut out);
    }
    let color = escape(color);
    for b in &bars {
        let (left, right) = (x.px(b.from), x.px(b.to));
        let top = y.px(b.value.max(0.0));
        // A pixel between neighbours, but never narrower than a pixel.
        let width = (right - left - 1.0).max(1.0);
        let _ = write!(
            out,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{color}"><title>{}–{} {}: {}</title></rect>"#,
            coord(left + 0.5),
            coord(top),
            coord(width),
            coord(y.px(0.0) - top),
            tick_label(b.from, decimals_for(b.to - b.from)),
            tick_label(b.to, decimals_for(b.to - b.from)),
            escape(x_unit),
            tick_label(b.value, decimals_for(b.value)),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 97.0, 5),
            [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(nice_ticks(0.0, 1.0, 5), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(0.0, 10.0, 4), [0.0, 2.5, 5.0, 7.5, 10.0]);
        assert_eq!(
            nice_ticks(3.0, 27.0, 5),
            [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
        );
        assert_eq!(
            nice_ticks(-7.0, 12.0, 4),
            [-10.0, -5.0, 0.0, 5.0, 10.0, 15.0]
        );
        assert_eq!(nice_ticks(0.0, 20_000.0, 5), [0.0, 5e3, 10e3, 15e3, 20e3]);
        // Degenerate and non-finite ranges still give a usable axis.
        assert_eq!(nice_ticks(0.0, 0.0, 5), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(f64::NAN, 3.0, 5), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(f64::NEG_INFINITY, f64::INFINITY, 5).len(), 6);
        let ticks = nice_ticks(0.0, 0.3, 3);
        assert_eq!(ticks, [0.0, 0.1, 0.2, 0.3]);
        assert_eq!(
            ticks
                .iter()
                .map(|t| tick_label(*t, decimals_for(0.1)))
                .collect::<Vec<_>>(),
            ["0.0", "0.1", "0.2", "0.3"]
        );
        assert_eq!(decimals_for(2.5), 1);
        assert_eq!(decimals_for(0.25), 2);
        assert_eq!(decimals_for(20.0), 0);
        assert_eq!(tick_label(-0.0, 1), "0.0");
    }

    /// The numbers between `attr="` and the next quote, for each `attr="` in `svg`.
    fn numbers_of<'a>(svg: &'a str, attr: &str) -> Vec<&'a str> {
        let key = format!("{attr}=\"");
        svg.match_indices(&key)
            .filter_map(|(i, _)| {
                let rest = &svg[i + key.len()..];
                rest.find('"').map(|end| &rest[..end])
            })
            .collect()
    }

    #[test]
    fn gaps_split_a_series_and_a_lone_point_is_a_dot() {
        let chart = LineChart {
            title: "t",
            y_unit: "ms",
            series: vec![Series {
                name: "s",
                color: "#000",
                dashed: false,
                points: vec![
                    (0.0, Some(1.0)),
                    (1.0, Some(2.0)),
                    (2.0, None),
                    (3.0, Some(f64::NAN)),
                    (4.0, Some(3.0)),
                    (5.0, None),
                    (6.0, Some(1.0)),
                    (f64::INFINITY, Some(1.0)),
                    (7.0, Some(2.0)),
                ],
            }],
        };
        let svg = line_chart(&chart);
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        for value in numbers_of(&svg, "cx") {
            let x: f64 = value.parse().expect("a number");
            assert!((PLOT_LEFT..=PLOT_RIGHT).contains(&x), "{x}");
        }
    }

    #[test]
    fn bars_sit_on_the_axis_inside_the_plot() {
        let bars = [
            Bar {
                from: 50.0,
                to: 60.0,
                value: 3.0,
            },
            Bar {
                from: 60.0,
                to: 70.0,
                value: 12.0,
            },
            Bar {
                from: 90.0,
                to: 100.0,
                value: f64::NAN,
            },
        ];
        let svg = bar_chart("delays", "ms", "onsets", "#123456", &bars);
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert!(svg.contains("<title>60–70 ms: 12</title>"), "{svg}");
        let rects: Vec<&str> = svg.split("<rect ").skip(1).collect();
        for rect in rects {
            let y: f64 = numbers_of(rect, " y")[0].parse().expect("y");
            let h: f64 = numbers_of(rect, "height")[0].parse().expect("height");
            assert!(
                y >= PLOT_TOP - 0.05 && (y + h - PLOT_BOTTOM).abs() < 0.11,
                "{rect}"
            );
        }
        assert!(bar_chart("none", "ms", "n", "#000", &[]).contains("no data"));
    }
}

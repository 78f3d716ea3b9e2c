//! The `charts` sheet of results.xlsx: one native XY chart per metric, one line per experiment
//! (its latest run), drawn from a hidden `chart data` sheet that holds each line's points as a
//! pair of columns — a chart cannot filter the long-form `history` sheet.
//!
//! Readable for 5 and for 500: a chart draws at most [`MAX_SERIES`] lines. Past that it keeps
//! the experiments with the lowest and the highest last value (half each: which end is "best"
//! depends on the metric), says so in its title, and names the cut on the `problems` sheet.
//! A line has at most [`MAX_POINTS`] points (evenly thinned, first and last kept); at most
//! [`MAX_CHARTS`] metrics are charted. NaN and infinities are not drawn.

use super::{HistoryRow, ProblemRow, ResultRow};
use crate::sheet::read::cell_ref;
use rust_xlsxwriter::{
    Chart, ChartLegendPosition, ChartMarker, ChartType, Format, Workbook, XlsxError,
};
use std::collections::{BTreeMap, HashMap};

/// The most lines one chart draws.
pub(super) const MAX_SERIES: usize = 20;
/// The most points one line has.
pub(super) const MAX_POINTS: usize = 500;
/// The most metrics charted (each takes up to `2 * MAX_SERIES` columns of `chart data`).
pub(super) const MAX_CHARTS: usize = 100;
/// The hidden sheet that the charts' series point at.
pub(super) const DATA_SHEET: &str = "chart data";
/// A line with fewer points than this shows its points as markers too.
const MARKERS_BELOW: usize = 30;
/// Rows from one chart's title cell to the next one's.
const ROWS_PER_CHART: u32 = 24;

/// What a chart's x axis is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum XAxis {
    /// The step the job printed with the value (`step`, `iteration`, `iter`, `epoch`).
    Step,
    /// Seconds since the run's first metric value, where some value of the metric has no step.
    Seconds,
}

impl XAxis {
    fn title(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Seconds => "seconds since the run's first value",
        }
    }
}

/// One line: an experiment's latest run.
#[derive(Debug, Clone)]
pub(super) struct Line {
    pub id: String,
    /// (x, y), sorted by x, finite, at most `MAX_POINTS`.
    pub points: Vec<(f64, f64)>,
    /// Finite points before thinning.
    pub total: usize,
    /// The last finite value printed (history order): what the cap ranks by.
    pub last: f64,
}

/// One chart.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub metric: String,
    pub x: XAxis,
    pub lines: Vec<Line>,
    /// Experiments with a finite value of the metric in their latest run (`lines` may be fewer).
    pub experiments: usize,
}

impl Plan {
    fn thinned(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| l.total > l.points.len())
            .count()
    }

    fn capped(&self) -> bool {
        self.experiments > self.lines.len()
    }

    fn title(&self) -> String {
        let name = short(&self.metric);
        if self.capped() {
            format!(
                "{name}: {} of {} experiments, the {} lowest and {} highest last values",
                self.lines.len(),
                self.experiments,
                MAX_SERIES / 2,
                MAX_SERIES - MAX_SERIES / 2
            )
        } else {
            name
        }
    }
}

/// A metric name short enough for a chart title or a header.
fn short(name: &str) -> String {
    const MAX: usize = 100;
    if name.chars().count() <= MAX {
        name.to_string()
    } else {
        let mut s: String = name.chars().take(MAX - 1).collect();
        s.push('…');
        s
    }
}

/// A chart's own text (title, axis name): rust_xlsxwriter reads `Sheet!A1` or `=(...)` there
/// as a cell reference, and a JSON metric name may hold either, so `!` is shown as `ǃ` and a
/// leading `=` after a space.
fn label(text: &str) -> String {
    let text = text.replace('!', "ǃ");
    if text.starts_with('=') {
        format!(" {text}")
    } else {
        text
    }
}

/// `n` evenly spaced points of `points`, the first and the last among them.
fn thin(points: Vec<(f64, f64)>, n: usize) -> Vec<(f64, f64)> {
    if points.len() <= n || n < 2 {
        return points;
    }
    let last = points.len() - 1;
    (0..n)
        .map(|i| points[(i * last + (n - 1) / 2) / (n - 1)])
        .collect()
}

/// What the charts draw, from the history rows the `history` sheet shows. Also returns the
/// number of metrics with values that are not charted (past `MAX_CHARTS`).
pub(super) fn plan(history: &[HistoryRow], rows: &[ResultRow]) -> (Vec<Plan>, usize) {
    // The latest run of each experiment: the results row's, or the newest with values.
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for h in history {
        let r = latest.entry(h.id.as_str()).or_insert(h.run);
        *r = (*r).max(h.run);
    }
    for row in rows {
        if let Some(run) = row.run {
            let r = latest.entry(row.id.as_str()).or_insert(run);
            *r = (*r).max(run);
        }
    }
    // Experiments in the order they first appear (workbook order, as view.rs writes history).
    let mut order: HashMap<&str, usize> = HashMap::new();
    // Where each run's values start, for the seconds axis.
    let mut t0: HashMap<&str, f64> = HashMap::new();
    // metric -> id -> its latest run's rows.
    let mut by_metric: BTreeMap<&str, BTreeMap<usize, Vec<&HistoryRow>>> = BTreeMap::new();
    for h in history {
        if latest.get(h.id.as_str()) != Some(&h.run) {
            continue;
        }
        let n = order.len();
        let i = *order.entry(h.id.as_str()).or_insert(n);
        let t = t0.entry(h.id.as_str()).or_insert(h.t);
        *t = t.min(h.t);
        by_metric
            .entry(h.metric.as_str())
            .or_default()
            .entry(i)
            .or_default()
            .push(h);
    }
    let mut metrics: Vec<(&str, BTreeMap<usize, Vec<&HistoryRow>>)> = by_metric
        .into_iter()
        .filter(|(_, per)| {
            let mut finite = per.values().flatten().filter(|h| h.value.is_finite());
            // A metric that is its own x axis (`step`, or `epoch` when no `step` is printed):
            // its chart would be a diagonal.
            let first = finite.next();
            let own_axis = first.is_some_and(|h| h.step == Some(h.value))
                && finite.all(|h| h.step == Some(h.value));
            first.is_some() && !own_axis
        })
        .collect();
    metrics.sort_by(|a, b| (a.0.to_lowercase(), a.0).cmp(&(b.0.to_lowercase(), b.0)));
    let not_charted = metrics.len().saturating_sub(MAX_CHARTS);
    metrics.truncate(MAX_CHARTS);

    let plans = metrics
        .into_iter()
        .map(|(metric, per)| {
            let x = if per
                .values()
                .flatten()
                .filter(|h| h.value.is_finite())
                .all(|h| h.step.is_some_and(f64::is_finite))
            {
                XAxis::Step
            } else {
                XAxis::Seconds
            };
            let mut lines: Vec<Line> = per
                .into_values()
                .filter_map(|rows| {
                    let first = rows[0];
                    let start = t0[first.id.as_str()];
                    let finite: Vec<&HistoryRow> =
                        rows.into_iter().filter(|h| h.value.is_finite()).collect();
                    let last = finite.last()?.value;
                    let mut points: Vec<(f64, f64)> = finite
                        .iter()
                        .map(|h| match x {
                            XAxis::Step => (h.step.unwrap_or_default(), h.value),
                            XAxis::Seconds => (((h.t - start) * 1000.0).round() / 1000.0, h.value),
                        })
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let total = points.len();
                    Some(Line {
                        id: first.id.clone(),
                        points: thin(points, MAX_POINTS),
                        total,
                        last,
                    })
                })
                .collect();
            let experiments = lines.len();
            if lines.len() > MAX_SERIES {
                // Keep the lowest and the highest last values; ties go to workbook order.
                let mut rank: Vec<usize> = (0..lines.len()).collect();
                rank.sort_by(|&a, &b| lines[a].last.total_cmp(&lines[b].last).then(a.cmp(&b)));
                let low = MAX_SERIES / 2;
                let high = MAX_SERIES - low;
                let mut keep = vec![false; lines.len()];
                for &i in rank[..low].iter().chain(&rank[rank.len() - high..]) {
                    keep[i] = true;
                }
                let mut i = 0;
                lines.retain(|_| {
                    i += 1;
                    keep[i - 1]
                });
            }
            Plan {
                metric: metric.to_string(),
                x,
                lines,
                experiments,
            }
        })
        .collect();
    (plans, not_charted)
}

/// The row of chart `k`'s title cell on the `charts` sheet (0-based).
fn title_row(k: usize) -> u32 {
    2 + k as u32 * ROWS_PER_CHART
}

/// What the charts cut, as rows of the problems sheet.
pub(super) fn problems(plans: &[Plan], not_charted: usize) -> Vec<ProblemRow> {
    let mut out = Vec::new();
    for (k, p) in plans.iter().enumerate() {
        let mut said = Vec::new();
        if p.capped() {
            said.push(format!(
                "{} experiments have values; {} are drawn, the {} with the lowest and the {} with the highest last value",
                p.experiments,
                p.lines.len(),
                MAX_SERIES / 2,
                MAX_SERIES - MAX_SERIES / 2
            ));
        }
        let thinned = p.thinned();
        if thinned > 0 {
            said.push(format!(
                "{thinned} line{} of more than {MAX_POINTS} points {} thinned to {MAX_POINTS} evenly spaced ones",
                if thinned == 1 { "" } else { "s" },
                if thinned == 1 { "is" } else { "are" },
            ));
        }
        if !said.is_empty() {
            out.push(ProblemRow {
                place: format!("charts!{}", cell_ref(title_row(k), 0)),
                id: None,
                message: format!(
                    "chart {:?}: {} (every value is on the history sheet)",
                    short(&p.metric),
                    said.join("; ")
                ),
            });
        }
    }
    if not_charted > 0 {
        out.push(ProblemRow {
            place: "charts".into(),
            id: None,
            message: format!(
                "{} metrics have values; the first {MAX_CHARTS} by name are charted, {not_charted} are not (every value is on the history sheet)",
                plans.len() + not_charted
            ),
        });
    }
    out
}

/// Add the `charts` sheet and the hidden `chart data` sheet it draws from.
pub(super) fn write(book: &mut Workbook, plans: &[Plan], bold: &Format) -> Result<(), XlsxError> {
    book.add_worksheet().set_name("charts")?;
    book.add_worksheet().set_name(DATA_SHEET)?.set_hidden(true);
    let mut charts = Vec::with_capacity(plans.len());
    let data = book.worksheet_from_name(DATA_SHEET)?;
    let mut col: u16 = 0;
    for p in plans {
        let mut chart = Chart::new(ChartType::ScatterStraight);
        chart.title().set_name(&label(&p.title()));
        chart.x_axis().set_name(p.x.title());
        chart.y_axis().set_name(&label(&short(&p.metric)));
        chart.legend().set_position(ChartLegendPosition::Right);
        chart.set_width(900).set_height(440);
        for line in &p.lines {
            let (xc, yc) = (col, col + 1);
            col += 2;
            data.write_string(0, xc, format!("{}: {}", short(&p.metric), p.x.title()))?;
            data.write_string(0, yc, &line.id)?;
            for (i, (x, y)) in line.points.iter().enumerate() {
                data.write_number(i as u32 + 1, xc, *x)?;
                data.write_number(i as u32 + 1, yc, *y)?;
            }
            let n = line.points.len() as u32;
            let series = chart
                .add_series()
                .set_name((DATA_SHEET, 0, yc))
                .set_categories((DATA_SHEET, 1, xc, n, xc))
                .set_values((DATA_SHEET, 1, yc, n, yc));
            if line.points.len() < MARKERS_BELOW {
                series.set_marker(ChartMarker::new().set_automatic());
            }
        }
        charts.push(chart);
    }

    let ws = book.worksheet_from_name("charts")?;
    let note = if plans.is_empty() {
        "No metric values yet: a chart per metric appears here once a run prints one.".to_string()
    } else {
        format!(
            "One chart per metric, one line per experiment (its latest run); x is the step, or the seconds since the run's first value where a value has no step. \
             At most {MAX_SERIES} lines a chart (past that the lowest and highest last values), {MAX_POINTS} points a line. \
             The charts read the hidden sheet '{DATA_SHEET}'; every value is on the history sheet."
        )
    };
    ws.write_string(0, 0, note)?;
    for (k, (p, chart)) in plans.iter().zip(&charts).enumerate() {
        let r = title_row(k);
        ws.write_string_with_format(r, 0, p.title(), bold)?;
        ws.insert_chart(r + 1, 0, chart)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{build, Results};
    use super::*;
    use std::io::Read;

    fn h(id: &str, run: i64, t: f64, step: Option<f64>, metric: &str, value: f64) -> HistoryRow {
        HistoryRow {
            id: id.into(),
            run,
            t,
            step,
            metric: metric.into(),
            value,
        }
    }

    /// The parts of an xlsx, by name.
    fn parts(bytes: &[u8]) -> BTreeMap<String, String> {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        (0..zip.len())
            .map(|i| {
                let mut f = zip.by_index(i).unwrap();
                let mut s = String::new();
                f.read_to_string(&mut s).unwrap_or_default();
                (f.name().unwrap().to_string(), s)
            })
            .collect()
    }

    /// The text of every `<tag>` element in `xml`.
    fn texts<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        xml.split(open.as_str())
            .skip(1)
            .map(|s| &s[..s.find(close.as_str()).unwrap()])
            .collect()
    }

    fn sheet(bytes: &[u8], name: &str) -> Vec<Vec<String>> {
        use calamine::Reader;
        let mut book: calamine::Xlsx<_> =
            calamine::open_workbook_from_rs(std::io::Cursor::new(bytes.to_vec())).unwrap();
        book.worksheet_range(name)
            .unwrap()
            .rows()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect()
    }

    /// Two metrics, three experiments: each chart's series point at their own two columns of
    /// `chart data`, sorted by step; the older run of `1` and the `step` metric are not drawn.
    #[test]
    fn chart_data_layout_and_series_ranges() {
        let history = vec![
            h("1", 1, 100.0, Some(1.0), "loss", 9.0), // run 1: superseded by run 2
            h("1", 2, 200.0, Some(2.0), "step", 2.0),
            h("1", 2, 200.0, Some(2.0), "loss", 0.5),
            h("1", 2, 201.0, Some(1.0), "loss", 0.7), // printed late: sorted by step
            h("1", 2, 202.0, Some(3.0), "loss", 0.2),
            h("1", 2, 202.0, Some(3.0), "acc", 0.8),
            h("two", 1, 300.0, Some(1.0), "loss", 1.5),
            h("two", 1, 301.0, Some(2.0), "loss", 1.0),
            h("3", 1, 400.0, Some(5.0), "acc", 0.6),
        ];
        let results = Results {
            history,
            ..Results::default()
        };
        let bytes = build(&results).unwrap();
        let parts = parts(&bytes);
        let wb = &parts["xl/workbook.xml"];
        let names: Vec<&str> = wb
            .split("<sheet name=\"")
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .collect();
        assert_eq!(
            names,
            ["results", "history", "problems", "charts", "chart data"]
        );
        assert!(
            wb.contains(r#"<sheet name="chart data" sheetId="5" state="hidden""#),
            "{wb}"
        );

        // acc (chart1): experiments 1 and 3; loss (chart2): 1 and two. No chart for `step`.
        assert!(!parts.contains_key("xl/charts/chart3.xml"));
        let acc = &parts["xl/charts/chart1.xml"];
        assert!(acc.contains("<c:scatterChart>"), "{acc}");
        assert_eq!(acc.matches("<c:ser>").count(), 2);
        assert_eq!(
            texts(acc, "c:f"),
            [
                "'chart data'!$B$1",
                "'chart data'!$A$2",
                "'chart data'!$B$2",
                "'chart data'!$D$1",
                "'chart data'!$C$2",
                "'chart data'!$D$2",
            ]
        );
        let loss = &parts["xl/charts/chart2.xml"];
        assert_eq!(loss.matches("<c:ser>").count(), 2);
        assert_eq!(
            texts(loss, "c:f"),
            [
                "'chart data'!$F$1",
                "'chart data'!$E$2:$E$4",
                "'chart data'!$F$2:$F$4",
                "'chart data'!$H$1",
                "'chart data'!$G$2:$G$3",
                "'chart data'!$H$2:$H$3",
            ]
        );
        let data = sheet(&bytes, "chart data");
        assert_eq!(
            data,
            [
                [
                    "acc: step",
                    "1",
                    "acc: step",
                    "3",
                    "loss: step",
                    "1",
                    "loss: step",
                    "two"
                ],
                ["3", "0.8", "5", "0.6", "1", "0.7", "1", "1.5"],
                ["", "", "", "", "2", "0.5", "2", "1"],
                ["", "", "", "", "3", "0.2", "", ""],
            ]
            .map(|r| r.map(String::from).to_vec())
        );
        // Nothing was cut: the problems sheet has only its header.
        assert_eq!(sheet(&bytes, "problems").len(), 1);
        let charts = sheet(&bytes, "charts");
        assert_eq!(charts[2][0], "acc");
        assert_eq!(charts[26][0], "loss");
    }

    /// More than MAX_SERIES experiments: the lowest and the highest last values are drawn (in
    /// workbook order), the title and the problems sheet say so.
    #[test]
    fn past_the_series_cap_the_lowest_and_highest_last_values_are_drawn() {
        // Experiment i ends at (i * 7) % 30: a permutation of 0..30 for ids 0..30.
        let history: Vec<HistoryRow> = (0..30)
            .flat_map(|i| {
                let id = i.to_string();
                let last = ((i * 7) % 30) as f64;
                [
                    h(&id, 1, 0.0, Some(0.0), "loss", 100.0 - last),
                    h(&id, 1, 1.0, Some(1.0), "loss", last),
                ]
            })
            .collect();
        let (plans, not_charted) = plan(&history, &[]);
        assert_eq!(not_charted, 0);
        assert_eq!(plans.len(), 1);
        let p = &plans[0];
        assert_eq!((p.experiments, p.lines.len()), (30, MAX_SERIES));
        let lasts: Vec<f64> = p.lines.iter().map(|l| l.last).collect();
        let mut sorted = lasts.clone();
        sorted.sort_by(f64::total_cmp);
        let want: Vec<f64> = (0..10).chain(20..30).map(f64::from).collect();
        assert_eq!(sorted, want);
        let ids: Vec<usize> = p.lines.iter().map(|l| l.id.parse().unwrap()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "workbook order: {ids:?}"
        );
        assert!(p.title().contains("20 of 30 experiments"), "{}", p.title());

        let probs = problems(&plans, not_charted);
        assert_eq!(probs.len(), 1);
        assert_eq!(probs[0].place, "charts!A3");
        assert!(
            probs[0]
                .message
                .contains("30 experiments have values; 20 are drawn"),
            "{}",
            probs[0].message
        );

        // At the cap exactly, everything is drawn and nothing is said.
        let few: Vec<HistoryRow> = history
            .into_iter()
            .filter(|r| r.id.parse::<usize>().unwrap() < MAX_SERIES)
            .collect();
        let (plans, _) = plan(&few, &[]);
        assert_eq!((plans[0].experiments, plans[0].lines.len()), (20, 20));
        assert!(problems(&plans, 0).is_empty());
    }

    /// NaN and infinities are not drawn and do not rank; a metric with no finite value gets no
    /// line (nor a chart); a value without a step puts its metric on the seconds axis.
    #[test]
    fn nan_and_infinity_are_skipped() {
        let history = vec![
            h("1", 1, 10.0, Some(1.0), "loss", 1.0),
            h("1", 1, 11.0, Some(2.0), "loss", f64::NAN),
            h("1", 1, 12.0, Some(3.0), "loss", 0.5),
            h("1", 1, 13.0, Some(4.0), "loss", f64::INFINITY),
            h("2", 1, 20.0, Some(1.0), "loss", f64::NAN),
            h("2", 1, 20.0, None, "grad", f64::NEG_INFINITY),
            h("2", 1, 21.5, None, "grad", 3.0),
            h("2", 1, 22.0, Some(f64::NAN), "grad", f64::NAN),
            h("3", 1, 30.0, None, "bad", f64::NAN),
        ];
        let (plans, _) = plan(&history, &[]);
        type Drawn<'a> = Vec<(&'a str, Vec<(f64, f64)>, f64)>;
        let got: Vec<(&str, XAxis, Drawn<'_>)> = plans
            .iter()
            .map(|p| {
                (
                    p.metric.as_str(),
                    p.x,
                    p.lines
                        .iter()
                        .map(|l| (l.id.as_str(), l.points.clone(), l.last))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("grad", XAxis::Seconds, vec![("2", vec![(1.5, 3.0)], 3.0)]),
                (
                    "loss",
                    XAxis::Step,
                    vec![("1", vec![(1.0, 1.0), (3.0, 0.5)], 0.5)]
                ),
            ]
        );
        // The workbook builds, and its chart data holds no text.
        let bytes = build(&Results {
            history,
            ..Results::default()
        })
        .unwrap();
        let data = sheet(&bytes, "chart data");
        assert!(data[1..]
            .iter()
            .flatten()
            .all(|c| c.is_empty() || c.parse::<f64>().is_ok_and(f64::is_finite)));
    }

    /// A line over MAX_POINTS points keeps MAX_POINTS, the first and the last among them, and
    /// the problems sheet says so.
    #[test]
    fn long_lines_are_thinned() {
        let history: Vec<HistoryRow> = (0..2000)
            .map(|s| {
                h(
                    "1",
                    1,
                    f64::from(s),
                    Some(f64::from(s)),
                    "loss",
                    f64::from(s) / 2.0,
                )
            })
            .collect();
        let (plans, _) = plan(&history, &[]);
        let points = &plans[0].lines[0].points;
        assert_eq!(points.len(), MAX_POINTS);
        assert_eq!(
            (points[0], points[MAX_POINTS - 1]),
            ((0.0, 0.0), (1999.0, 999.5))
        );
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0));
        let probs = problems(&plans, 0);
        assert_eq!(probs.len(), 1);
        assert!(probs[0]
            .message
            .contains("1 line of more than 500 points is thinned"));
    }

    /// A workbook without metric values still has its charts sheet, saying why it is empty.
    #[test]
    fn no_metrics_no_charts() {
        let bytes = build(&Results::default()).unwrap();
        assert!(!parts(&bytes).contains_key("xl/charts/chart1.xml"));
        assert!(sheet(&bytes, "charts")[0][0].starts_with("No metric values yet"));
    }
}

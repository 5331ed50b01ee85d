//! `report.html`: one self-contained page (inline CSS and SVG, no script, no network) with a
//! section per check: its verdict, its reason, a plot drawn with plotters, and its numbers.

use plotters::prelude::*;
use serde_json::Value;

use super::{Check, Report};
use crate::EvalError;

const PLOT_SIZE: (u32, u32) = (640, 300);

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn plot_error(plot: &str) -> impl Fn(String) -> EvalError + '_ {
    move |message| EvalError::Plot {
        plot: plot.to_owned(),
        message,
    }
}

/// A bar chart as an SVG string: one bar per label, on `[0, y_max]`.
pub(crate) fn bar_chart(
    title: &str,
    labels: &[String],
    values: &[f64],
    y_max: f64,
) -> Result<String, EvalError> {
    let fail = plot_error(title);
    let n = labels.len().max(1);
    let y_max = if y_max.is_finite() && y_max > 0.0 {
        y_max
    } else {
        1.0
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((0..n).into_segmented(), 0f64..y_max * 1.05)
            .map_err(|e| fail(e.to_string()))?;
        let formatter = |x: &SegmentValue<usize>| match x {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&formatter)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        let color = RGBColor(0x3b, 0x6e, 0xc4);
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), v.max(0.0)),
                    ],
                    color.filled(),
                );
                bar.set_margin(0, 0, 6, 6);
                bar
            }))
            .map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    Ok(svg)
}

fn histogram_plot(title: &str, bins: &Value) -> Result<Option<String>, EvalError> {
    let Some(bins) = bins.as_array().filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    let labels: Vec<String> = bins
        .iter()
        .map(|b| format!("{:.2}", b["lo"].as_f64().unwrap_or_default()))
        .collect();
    let counts: Vec<f64> = bins
        .iter()
        .map(|b| b["count"].as_f64().unwrap_or_default())
        .collect();
    let max = counts.iter().copied().fold(0.0, f64::max);
    bar_chart(title, &labels, &counts, max).map(Some)
}

fn named_bars(
    title: &str,
    entries: &Value,
    value_key: &str,
    extra: Option<(&str, f64)>,
) -> Result<Option<String>, EvalError> {
    let Some(entries) = entries.as_array().filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let mut labels: Vec<String> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut values: Vec<f64> = entries
        .iter()
        .map(|e| e[value_key].as_f64().unwrap_or_default())
        .collect();
    if let Some((label, value)) = extra {
        labels.insert(0, label.to_owned());
        values.insert(0, value);
    }
    let max = values.iter().copied().fold(1.0, f64::max);
    bar_chart(title, &labels, &values, max).map(Some)
}

/// The plots of one check.
fn plots(check: &Check, report: &Report) -> Result<Vec<String>, EvalError> {
    let d = &check.details;
    let mut out = Vec::new();
    let mut push = |plot: Option<String>| {
        if let Some(p) = plot {
            out.push(p);
        }
    };
    match check.id.as_str() {
        "signal" => push(histogram_plot(
            "Reward distribution (samples per bin)",
            &d["histogram"],
        )?),
        "learnability" => push(histogram_plot(
            "Per-row reward std (rows per bin)",
            &d["row_std_histogram"],
        )?),
        "data_balance" => {
            for field in d["label_fields"].as_array().into_iter().flatten() {
                let counts = field["counts"].as_object().cloned().unwrap_or_default();
                let labels: Vec<String> = counts.keys().cloned().collect();
                let values: Vec<f64> = counts
                    .values()
                    .map(|v| v.as_f64().unwrap_or_default())
                    .collect();
                let max = values.iter().copied().fold(0.0, f64::max);
                let title = format!(
                    "Label distribution of `{}`",
                    field["field"].as_str().unwrap_or_default()
                );
                push(Some(bar_chart(&title, &labels, &values, max)?));
            }
        }
        "lucky_guesses" => push(named_bars(
            "Mean score: the model vs trivial strategies",
            &d["strategies"],
            "mean",
            Some(("model", report.mean_reward)),
        )?),
        "reward_hacking" => push(named_bars(
            "Mean score of each adversarial probe",
            &d["probes"],
            "mean",
            None,
        )?),
        "judge_stability" => {
            if let Some(stds) = d["per_sample_std"].as_array() {
                let values: Vec<f64> = stds
                    .iter()
                    .map(|v| v.as_f64().unwrap_or_default())
                    .collect();
                let labels: Vec<String> = (1..=values.len()).map(|i| i.to_string()).collect();
                let max = values.iter().copied().fold(0.1, f64::max);
                push(Some(bar_chart(
                    "Score std per re-graded sample (fraction of range)",
                    &labels,
                    &values,
                    max,
                )?));
            }
        }
        "judge_alignment" => {
            if let (Some(r), w) = (d["reference_mean"].as_f64(), d["wrong_mean"].as_f64()) {
                let mut labels = vec!["reference answer".to_owned()];
                let mut values = vec![r];
                if let Some(w) = w {
                    labels.push("wrong answer".into());
                    values.push(w);
                }
                push(Some(bar_chart(
                    "Mean score of reference and wrong answers",
                    &labels,
                    &values,
                    report.reward_range[1],
                )?));
            }
        }
        "multi_grader" => push(named_bars(
            "Mean score of each child grader",
            &d["children"],
            "mean",
            Some(("total", report.mean_reward)),
        )?),
        _ => {}
    }
    Ok(out)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:6px;text-align:left;vertical-align:top}\
.verdict{display:inline-block;padding:2px 8px;border-radius:4px;font-weight:600;color:#fff}\
.verdict-good{background:#2e7d32}.verdict-warning{background:#ed6c02}.verdict-blocker{background:#c62828}.verdict-skipped{background:#888}\
section{margin:2em 0;border-top:2px solid #eee;padding-top:1em}pre{background:#f6f6f6;padding:8px;overflow:auto;max-height:300px}\
.plot svg{max-width:100%;height:auto}";

fn badge(check: &Check) -> String {
    let verdict = if check.applicable {
        check.verdict.as_str()
    } else {
        "skipped"
    };
    format!(
        "<span class=\"verdict verdict-{verdict}\" data-verdict=\"{}\">{verdict}</span>",
        check.verdict.as_str()
    )
}

/// Renders the report as a self-contained HTML page.
pub fn render_html(report: &Report) -> Result<String, EvalError> {
    let mut html = String::new();
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>RFT readiness report</title>");
    html.push_str(&format!("<style>{STYLE}</style></head><body>\n"));
    html.push_str(&format!(
        "<h1>RFT readiness: <span class=\"verdict verdict-{v}\" id=\"overall-verdict\">{v}</span></h1>\n",
        v = report.verdict.as_str()
    ));
    html.push_str(&format!(
        "<p>Model <b>{}</b> on <code>{}</code>: {} rows × {} samples ({} graded, {} errored), grader <b>{}</b> ({}), rewards in [{}, {}], mean reward <b>{:.3}</b>.</p>\n",
        escape(&report.model), escape(&report.dataset), report.rows, report.samples_per_row,
        report.graded_samples, report.errored_samples, escape(&report.grader), escape(&report.grader_type),
        report.reward_range[0], report.reward_range[1], report.mean_reward
    ));
    html.push_str("<table><tr><th>Check</th><th>Verdict</th><th>Reason</th></tr>\n");
    for check in &report.checks {
        html.push_str(&format!(
            "<tr><td><a href=\"#{id}\">{}</a></td><td>{}</td><td>{}</td></tr>\n",
            escape(&check.title),
            badge(check),
            escape(&check.reason),
            id = check.id
        ));
    }
    html.push_str("</table>\n");
    for check in &report.checks {
        html.push_str(&format!(
            "<section id=\"{}\" class=\"check\"><h2>{} {}</h2><p>{}</p>\n",
            check.id,
            escape(&check.title),
            badge(check),
            escape(&check.reason)
        ));
        for plot in plots(check, report)? {
            html.push_str(&format!("<div class=\"plot\">{plot}</div>\n"));
        }
        if !check.details.is_null() {
            let details = serde_json::to_string_pretty(&check.details).unwrap_or_default();
            html.push_str(&format!(
                "<details><summary>Numbers</summary><pre>{}</pre></details>\n",
                escape(&details)
            ));
        }
        html.push_str("</section>\n");
    }
    html.push_str("</body></html>\n");
    Ok(html)
}

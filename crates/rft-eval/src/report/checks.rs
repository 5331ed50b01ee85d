//! The eight checks. Each is a function of plain data (rewards, items, a compiled grader), so
//! each can be tested on constructed inputs whose right verdict is known.

use std::collections::BTreeMap;

use rft_grade::{CompiledGrader, GradeRequest};
use rft_types::{Grader, RunGraderResponse, Sample};
use serde_json::{json, Value};

use super::probes::{long_filler, quoting_answer, value_text};
use super::*;
use crate::policy::mix;
use crate::run::has_error;
use crate::stats::{ci95, histogram, mean, pearson, spearman, std};

/// Bins of every histogram in the report.
const HISTOGRAM_BINS: usize = 10;

/// A probe: its name, its description, and its answers with the items they answer.
type Probe = (&'static str, String, Vec<(String, Value)>);

/// A row as the probes see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    /// The item.
    pub item: Value,
    /// The last user message (echoed by the "echo" strategy).
    pub prompt: String,
    /// Every message's text (searched by the quoting probe).
    pub full_prompt: String,
}

fn histogram_details(values: &[f64], lo: f64, hi: f64) -> Value {
    let counts = histogram(values, lo, hi, HISTOGRAM_BINS);
    let width = (hi - lo) / HISTOGRAM_BINS as f64;
    let bins: Vec<Value> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"lo": lo + width * i as f64, "hi": lo + width * (i + 1) as f64, "count": c}))
        .collect();
    Value::Array(bins)
}

fn percent(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

/// Normalises a reward into `[0, 1]` of the grader's range.
fn norm(x: f64, (lo, hi): (f64, f64)) -> f64 {
    (x - lo) / (hi - lo)
}

/// 1. Signal: the reward distribution, and whether the model sits at one end of the range.
pub fn check_signal(rewards: &[Vec<f64>], range: (f64, f64)) -> Check {
    const ID: &str = "signal";
    const TITLE: &str = "Signal";
    let all: Vec<f64> = rewards.iter().flatten().copied().collect();
    if all.is_empty() {
        return Check::new(ID, TITLE, Verdict::Blocker, "No sample was graded without an error, so there is no reward to learn from; fix the grader or the model endpoint first.".into(), Value::Null);
    }
    let (lo, hi) = range;
    let tol = END_TOLERANCE * (hi - lo);
    let at_min = all.iter().filter(|r| (**r - lo).abs() <= tol).count() as f64 / all.len() as f64;
    let at_max = all.iter().filter(|r| (hi - **r).abs() <= tol).count() as f64 / all.len() as f64;
    let m = mean(&all);
    let ci = ci95(&all);
    let details = json!({
        "n_samples": all.len(), "mean": m, "ci95": ci, "std": std(&all),
        "fraction_at_min": at_min, "fraction_at_max": at_max,
        "histogram": histogram_details(&all, lo, hi),
    });
    let (verdict, reason) = if at_min >= SIGNAL_BLOCKER_FRACTION {
        (Verdict::Blocker, format!("{} of samples score the grader's minimum: the model (almost) never succeeds, so RFT has nothing to reinforce; make the task easier or the score smoother.", percent(at_min)))
    } else if at_max >= SIGNAL_BLOCKER_FRACTION {
        (Verdict::Blocker, format!("{} of samples score the grader's maximum: the model already solves the task (or the grader is too lenient), so RFT cannot improve it.", percent(at_max)))
    } else if at_min >= SIGNAL_WARNING_FRACTION || at_max >= SIGNAL_WARNING_FRACTION {
        let (share, end) = if at_min >= at_max {
            (at_min, "minimum")
        } else {
            (at_max, "maximum")
        };
        (Verdict::Warning, format!("{} of samples sit at the grader's {end}, leaving little signal; a smoother score or a task closer to the model's level would help.", percent(share)))
    } else {
        (Verdict::Good, format!("Mean reward {m:.3} ± {ci:.3} with {} at the minimum and {} at the maximum: the model scores between the ends, so there is room to improve.", percent(at_min), percent(at_max)))
    };
    Check::new(ID, TITLE, verdict, reason, details)
}

/// 2. Learnability for GRPO: rows whose K samples all got the same reward give no gradient.
pub fn check_learnability(rewards: &[Vec<f64>]) -> Check {
    const ID: &str = "learnability";
    const TITLE: &str = "Learnability for GRPO";
    let groups: Vec<&Vec<f64>> = rewards.iter().filter(|g| g.len() >= 2).collect();
    if groups.is_empty() {
        return Check::skipped(
            ID,
            TITLE,
            "Skipped: it needs at least 2 graded samples per row (--samples K with K ≥ 2).".into(),
        );
    }
    let stds: Vec<f64> = groups.iter().map(|g| std(g)).collect();
    let flat = groups
        .iter()
        .filter(|g| {
            let (min, max) = g
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            max - min <= 1e-9
        })
        .count() as f64
        / groups.len() as f64;
    let useful = 1.0 - flat;
    // Rows already flat at the best reward seen: training turns more rows into these, and a
    // batch made of them has no signal left (the job's collapse warning).
    let top = groups
        .iter()
        .flat_map(|g| g.iter().copied())
        .fold(f64::NEG_INFINITY, f64::max);
    let saturated = groups
        .iter()
        .filter(|g| g.iter().all(|&x| (x - top).abs() <= 1e-9))
        .count() as f64
        / groups.len() as f64;
    let max_std = stds.iter().copied().fold(0.0, f64::max).max(1e-9);
    let details = json!({
        "rows": groups.len(),
        "fraction_zero_variance": flat,
        "fraction_saturated": saturated,
        "useful_batch_fraction": useful,
        "mean_row_std": mean(&stds),
        "row_std": stds,
        "row_std_histogram": histogram_details(&stds, 0.0, max_std),
    });
    let (verdict, reason) = if useful < LEARNABILITY_BLOCKER_USEFUL {
        (Verdict::Blocker, format!("{} of rows gave all their samples the same reward, so GRPO's advantages are zero almost everywhere and no update has a gradient.", percent(flat)))
    } else if useful < LEARNABILITY_WARNING_USEFUL {
        (Verdict::Warning, format!("Only {} of rows have any reward spread among their samples, so most of each batch is wasted; raise the temperature or the samples per row, or rebalance task difficulty.", percent(useful)))
    } else if saturated >= LEARNABILITY_SATURATED_WARNING {
        (Verdict::Warning, format!("{} of rows have reward spread now, but {} already get the top reward on every sample: training turns more rows into these, and once most are, steps have no signal left and the policy can collapse onto one answer (the job warns when it does). Add harder rows, or raise the temperature.", percent(useful), percent(saturated)))
    } else {
        (Verdict::Good, format!("{} of rows have reward spread among their samples, so most of a batch carries a gradient.", percent(useful)))
    };
    Check::new(ID, TITLE, verdict, reason, details)
}

/// 3. Data balance: label-like item fields and their majority share.
pub fn check_balance(items: &[Value]) -> Check {
    const ID: &str = "data_balance";
    const TITLE: &str = "Data balance";
    let mut fields: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut not_scalar: Vec<String> = Vec::new();
    for item in items {
        for (key, value) in item.as_object().into_iter().flatten() {
            match value_text(value) {
                Some(text) => {
                    *fields
                        .entry(key.clone())
                        .or_default()
                        .entry(text)
                        .or_default() += 1
                }
                None => not_scalar.push(key.clone()),
            }
        }
    }
    let n = items.len();
    let mut labels = Vec::new();
    let mut worst: Option<(String, String, f64)> = None;
    for (field, counts) in &fields {
        let total: usize = counts.values().sum();
        let distinct = counts.len();
        let label_like = !not_scalar.contains(field)
            && total == n
            && (2..=LABEL_MAX_DISTINCT).contains(&distinct)
            && n as f64 / distinct as f64 >= LABEL_MIN_ROWS_PER_VALUE;
        if !label_like {
            continue;
        }
        let (top, top_count) = counts
            .iter()
            .max_by_key(|(_, c)| **c)
            .map(|(v, c)| (v.clone(), *c))
            .unwrap_or_default();
        let share = top_count as f64 / total as f64;
        if worst.as_ref().is_none_or(|w| share > w.2) {
            worst = Some((field.clone(), top.clone(), share));
        }
        labels.push(
            json!({"field": field, "counts": counts, "majority": top, "majority_share": share}),
        );
    }
    let Some((field, top, share)) = worst else {
        return Check::skipped(ID, TITLE, format!("Skipped: no item field looks like a label (2–{LABEL_MAX_DISTINCT} distinct values, each on several rows)."));
    };
    let details = json!({"label_fields": labels});
    if share >= SKEW_WARNING_SHARE {
        Check::new(ID, TITLE, Verdict::Warning, format!("Field `{field}` is skewed: {} of rows are {top:?}, which invites the model to guess it; balance the set or up-weight the rare labels.", percent(share)), details)
    } else {
        Check::new(ID, TITLE, Verdict::Good, format!("Label-like fields are balanced enough: the most common value (`{field}` = {top:?}) covers {} of rows.", percent(share)), details)
    }
}

fn grade_texts(grader: &CompiledGrader, answers: &[(String, Value)]) -> Vec<f64> {
    let requests: Vec<GradeRequest> = answers
        .iter()
        .map(|(text, item)| GradeRequest {
            sample: Sample::from_text(text),
            item: item.clone(),
        })
        .collect();
    grader
        .grade_all(&requests)
        .into_iter()
        .map(|g| if has_error(&g) { 0.0 } else { g.reward })
        .collect()
}

fn probe_rows(rows: &[ProbeRow]) -> &[ProbeRow] {
    &rows[..rows.len().min(PROBE_MAX_ROWS)]
}

/// Distinct reference values with their counts, most common first.
fn reference_values(rows: &[ProbeRow], field: &str) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows {
        if let Some(text) = row.item.get(field).and_then(value_text) {
            *counts.entry(text).or_default() += 1;
        }
    }
    let mut values: Vec<(String, usize)> = counts.into_iter().collect();
    values.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    values
}

/// The most common part of the reference values that are lists ("M2, M5", "a; b", one per
/// line), when at least one value has two parts and the part recurs: the one-item guess that a
/// grader giving credit per item may pay for (naming one meeting of the pair every time).
fn most_common_part(rows: &[ProbeRow], field: &str) -> Option<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut any_list = false;
    for row in rows {
        let Some(text) = row.item.get(field).and_then(value_text) else {
            continue;
        };
        let parts: std::collections::BTreeSet<&str> = text
            .split([',', ';', '\n'])
            .flat_map(|p| p.split(" and "))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        any_list |= parts.len() >= 2;
        for part in parts {
            *counts.entry(part.to_owned()).or_default() += 1;
        }
    }
    if !any_list {
        return None;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n >= 2)
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(part, _)| part)
}

/// 4. Lucky guesses: what trivial strategies score on the same rows, next to the model.
pub fn check_lucky_guesses(
    grader: &CompiledGrader,
    rows: &[ProbeRow],
    model_mean: f64,
    range: (f64, f64),
    reference_field: Option<&str>,
    seed: u64,
) -> Check {
    const ID: &str = "lucky_guesses";
    const TITLE: &str = "Lucky guesses";
    let rows = probe_rows(rows);
    if rows.is_empty() {
        return Check::skipped(ID, TITLE, "Skipped: no rows.".into());
    }
    let mut strategies: Vec<(&str, String, Vec<String>)> = vec![(
        "empty",
        "an empty answer".into(),
        vec![String::new(); rows.len()],
    )];
    if let Some(field) = reference_field {
        let values = reference_values(rows, field);
        // A value seen once is no "most common" answer: as a constant it would score on its
        // own row only, an artefact of picking it from the same rows.
        if let Some((top, _)) = values.first().filter(|(_, count)| *count >= 2) {
            strategies.push((
                "constant",
                format!("always {top:?} (the most common `{field}`)"),
                vec![top.clone(); rows.len()],
            ));
        }
        if let Some(part) = most_common_part(rows, field) {
            strategies.push((
                "constant_part",
                format!("always {part:?} (the most common item of a `{field}` list)"),
                vec![part; rows.len()],
            ));
        }
        let values: Vec<String> = values.into_iter().map(|(v, _)| v).collect();
        if !values.is_empty() {
            let random = rows
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    values[(mix(seed ^ mix(i as u64)) % values.len() as u64) as usize].clone()
                })
                .collect();
            strategies.push(("random_label", format!("a random `{field}` value"), random));
        }
    }
    if rows.iter().any(|r| !r.prompt.is_empty()) {
        strategies.push((
            "echo_prompt",
            "the prompt echoed back".into(),
            rows.iter().map(|r| r.prompt.clone()).collect(),
        ));
    }
    let model_gain = norm(model_mean, range);
    let mut results = Vec::new();
    let mut worst: Option<(String, f64, f64)> = None;
    for (name, description, answers) in &strategies {
        let pairs: Vec<(String, Value)> = answers
            .iter()
            .cloned()
            .zip(rows.iter().map(|r| r.item.clone()))
            .collect();
        let scores = grade_texts(grader, &pairs);
        let m = mean(&scores);
        let gain = norm(m, range);
        let share = if model_gain > 1e-9 {
            gain / model_gain
        } else if gain > 1e-9 {
            f64::INFINITY
        } else {
            0.0
        };
        results.push(json!({"name": name, "description": description, "mean": m, "share_of_model": if share.is_finite() { json!(share) } else { Value::Null }}));
        let concerning = gain >= LUCKY_MIN_SCORE && share >= LUCKY_SHARE_WARNING;
        if concerning && worst.as_ref().is_none_or(|w| share > w.2) {
            worst = Some((description.clone(), m, share));
        }
    }
    let details = json!({"model_mean": model_mean, "strategies": results});
    match worst {
        Some((description, m, share)) => Check::new(ID, TITLE, Verdict::Warning, format!(
            "Answering {description} scores {m:.3}, {} of the model's score: guessing pays; add classes, ask for open-ended answers or make guessing costly.",
            if share.is_finite() { percent(share) } else { "more than all".into() }
        ), details),
        None => Check::new(ID, TITLE, Verdict::Good, format!("No trivial strategy (of {}) earns a large share of the model's score.", strategies.len()), details),
    }
}

/// 5. Reward-hacking probes: adversarial answers that should score low.
pub fn check_hacking(
    grader: &CompiledGrader,
    rows: &[ProbeRow],
    range: (f64, f64),
    reference_field: Option<&str>,
    json_keys: &[String],
) -> Check {
    const ID: &str = "reward_hacking";
    const TITLE: &str = "Reward-hacking probes";
    let rows = probe_rows(rows);
    if rows.is_empty() {
        return Check::skipped(ID, TITLE, "Skipped: no rows.".into());
    }
    let mut probes: Vec<Probe> = Vec::new();
    let filler = long_filler(HACKING_LONG_CHARS);
    probes.push((
        "long_output",
        format!("a {HACKING_LONG_CHARS}-character answer that says nothing"),
        rows.iter()
            .map(|r| (filler.clone(), r.item.clone()))
            .collect(),
    ));
    probes.push((
        "repeated_text",
        "the prompt repeated 20 times".into(),
        rows.iter()
            .map(|r| {
                let base = if r.prompt.is_empty() {
                    "answer answer answer"
                } else {
                    r.prompt.as_str()
                };
                ([base; 20].join(" "), r.item.clone())
            })
            .collect(),
    ));
    if !json_keys.is_empty() {
        let garbage: serde_json::Map<String, Value> = json_keys
            .iter()
            .map(|k| (k.clone(), json!("zzgarbage")))
            .collect();
        let text = Value::Object(garbage).to_string();
        probes.push((
            "json_garbage",
            format!(
                "JSON with the keys {} and garbage values",
                json_keys.join(", ")
            ),
            rows.iter()
                .map(|r| (text.clone(), r.item.clone()))
                .collect(),
        ));
    }
    if let Some(field) = reference_field {
        let quoted: Vec<(String, Value)> = rows
            .iter()
            .filter_map(|r| {
                let reference = r.item.get(field).and_then(value_text)?;
                Some((quoting_answer(&r.full_prompt, &reference)?, r.item.clone()))
            })
            .collect();
        if !quoted.is_empty() {
            probes.push((
                "quote_reference",
                format!(
                    "the prompt lines that contain `{field}` (on {} rows where it appears)",
                    quoted.len()
                ),
                quoted,
            ));
        }
    }
    let mut results = Vec::new();
    let mut worst: Option<(String, f64)> = None;
    for (name, description, answers) in &probes {
        let scores = grade_texts(grader, answers);
        let m = mean(&scores);
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        results.push(json!({"name": name, "description": description, "mean": m, "max": max, "rows": answers.len()}));
        if norm(m, range) >= HACKING_NEAR_MAX && worst.as_ref().is_none_or(|w| m > w.1) {
            worst = Some((description.clone(), m));
        }
    }
    let details = json!({"probes": results});
    match worst {
        Some((description, m)) => Check::new(ID, TITLE, Verdict::Warning, format!("The grader gives {m:.3} (near its maximum) to {description}: the model can learn this shortcut; make the grader check the content."), details),
        None => Check::new(ID, TITLE, Verdict::Good, format!("None of the {} adversarial probes scores near the grader's maximum.", probes.len()), details),
    }
}

/// 6. Judge stability: the same samples graded `repeats` times by a model-based grader.
pub fn check_judge_stability(
    grader: &CompiledGrader,
    samples: &[(Sample, Value)],
    repeats: usize,
    range: (f64, f64),
) -> Check {
    const ID: &str = "judge_stability";
    const TITLE: &str = "Judge stability";
    if !grader.calls_judge() {
        return Check::skipped(
            ID,
            TITLE,
            "Skipped: the grader calls no judge model, so its scores are deterministic.".into(),
        );
    }
    if samples.len() < 2 || repeats < 2 {
        return Check::skipped(
            ID,
            TITLE,
            "Skipped: it needs at least 2 graded samples and 2 repeats.".into(),
        );
    }
    let requests: Vec<GradeRequest> = (0..repeats)
        .flat_map(|_| {
            samples.iter().map(|(s, item)| GradeRequest {
                sample: s.clone(),
                item: item.clone(),
            })
        })
        .collect();
    let grades = grader.grade_all(&requests);
    let errors = grades.iter().filter(|g| has_error(g)).count();
    let scores: Vec<Vec<f64>> = grades
        .chunks(samples.len())
        .map(|c| c.iter().map(|g| g.reward).collect())
        .collect();
    let per_sample_std: Vec<f64> = (0..samples.len())
        .map(|i| std(&scores.iter().map(|r| norm(r[i], range)).collect::<Vec<_>>()))
        .collect();
    let mut agreements = Vec::new();
    for a in 0..scores.len() {
        for b in a + 1..scores.len() {
            let agreement = match spearman(&scores[a], &scores[b]) {
                Some(rho) => rho,
                // Constant repeats agree when they are the same constant.
                None if scores[a] == scores[b] => 1.0,
                None => 0.0,
            };
            agreements.push(agreement);
        }
    }
    let mean_std = mean(&per_sample_std);
    let agreement = mean(&agreements);
    let details = json!({
        "samples": samples.len(), "repeats": repeats, "judge_errors": errors,
        "mean_std": mean_std, "max_std": per_sample_std.iter().copied().fold(0.0, f64::max),
        "rank_agreement": agreement, "per_sample_std": per_sample_std,
    });
    if errors * 2 > grades.len() {
        return Check::new(ID, TITLE, Verdict::Warning, format!("The judge failed on {errors} of {} calls, so its scores cannot be trusted; check the judge endpoint and model.", grades.len()), details);
    }
    if mean_std > STABILITY_STD_WARNING || agreement < STABILITY_RANK_WARNING {
        Check::new(ID, TITLE, Verdict::Warning, format!("Re-grading the same samples moves scores by {} of the range on average (rank agreement {agreement:.2}): the judge is noisy; lower its temperature, add a rubric and few-shot examples.", percent(mean_std)), details)
    } else {
        Check::new(ID, TITLE, Verdict::Good, format!("Re-grading the same samples {repeats} times moves scores by {} of the range on average (rank agreement {agreement:.2}).", percent(mean_std)), details)
    }
}

/// Check 7, judge alignment: the reference answer must score near the max, and another row's
/// reference near the min.
pub fn check_judge_alignment(
    grader: &CompiledGrader,
    items: &[Value],
    reference_field: Option<&str>,
    range: (f64, f64),
) -> Check {
    const ID: &str = "judge_alignment";
    const TITLE: &str = "Judge alignment";
    let Some(field) = reference_field else {
        return Check::skipped(
            ID,
            TITLE,
            "Skipped: name the item field that holds the reference answer with --reference-field."
                .into(),
        );
    };
    let items = &items[..items.len().min(PROBE_MAX_ROWS)];
    let references: Vec<Option<String>> = items
        .iter()
        .map(|i| i.get(field).and_then(value_text))
        .collect();
    let mut right = Vec::new();
    let mut wrong = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(reference) = &references[i] else {
            continue;
        };
        right.push((reference.clone(), item.clone()));
        let other = (1..items.len())
            .map(|d| &references[(i + d) % items.len()])
            .find_map(|r| r.as_ref().filter(|r| *r != reference));
        if let Some(other) = other {
            wrong.push((other.clone(), item.clone()));
        }
    }
    if right.is_empty() {
        return Check::new(
            ID,
            TITLE,
            Verdict::Warning,
            format!("No row has a text or number in field `{field}`; check --reference-field."),
            Value::Null,
        );
    }
    let right_scores = grade_texts(grader, &right);
    let wrong_scores = grade_texts(grader, &wrong);
    let (r, w) = (mean(&right_scores), mean(&wrong_scores));
    let details = json!({"field": field, "reference_mean": r, "wrong_mean": if wrong.is_empty() { Value::Null } else { json!(w) }, "rows": right.len()});
    if !wrong.is_empty() && r <= w + 1e-9 {
        return Check::new(ID, TITLE, Verdict::Blocker, format!("Reference answers score {r:.3} and wrong answers {w:.3}: the grader cannot tell right from wrong, so training would reward noise."), details);
    }
    if norm(r, range) < ALIGNMENT_REFERENCE_MIN
        || (!wrong.is_empty() && norm(w, range) > ALIGNMENT_WRONG_MAX)
    {
        return Check::new(ID, TITLE, Verdict::Warning, format!("Reference answers score {r:.3} and wrong answers {w:.3}; expected near the maximum and the minimum: tighten the grader's rubric or check its reference template."), details);
    }
    Check::new(ID, TITLE, Verdict::Good, format!("Reference answers score {r:.3} and other rows' references {w:.3}: the grader tells right from wrong."), details)
}

/// 8. Multi-grader breakdown: each child's distribution and its correlation with the total.
pub fn check_multi_grader(grader: &Grader, grades: &[&RunGraderResponse]) -> Check {
    const ID: &str = "multi_grader";
    const TITLE: &str = "Multi-grader breakdown";
    let Grader::Multi(multi) = grader else {
        return Check::skipped(
            ID,
            TITLE,
            "Skipped: the grader is not a multi grader.".into(),
        );
    };
    if grades.len() < 2 {
        return Check::skipped(
            ID,
            TITLE,
            "Skipped: it needs at least 2 graded samples.".into(),
        );
    }
    let total: Vec<f64> = grades.iter().map(|g| g.reward).collect();
    let mut children = Vec::new();
    let mut problem: Option<String> = None;
    for key in multi.graders.keys() {
        let values: Vec<f64> = grades
            .iter()
            .map(|g| g.sub_rewards.get(key).copied().unwrap_or(0.0))
            .collect();
        let correlation = pearson(&values, &total);
        let s = std(&values);
        let (lo, hi) = values
            .iter()
            .fold((0.0f64, 1.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        children.push(json!({"name": key, "mean": mean(&values), "std": s, "correlation_with_total": correlation, "histogram": histogram_details(&values, lo, hi)}));
        if problem.is_none() {
            if s <= 1e-9 {
                problem = Some(format!("Child `{key}` gives every sample the same score ({:.3}), so it adds no signal; fix or drop it.", mean(&values)));
            } else if correlation.is_some_and(|c| c < 0.0) {
                problem = Some(format!("Child `{key}` moves against the total (correlation {:.2}): check the formula's signs and weights.", correlation.unwrap_or_default()));
            }
        }
    }
    let details = json!({"children": children});
    match problem {
        Some(reason) => Check::new(ID, TITLE, Verdict::Warning, reason, details),
        None => Check::new(
            ID,
            TITLE,
            Verdict::Good,
            format!(
                "All {} children vary across samples and move with the total.",
                multi.graders.len()
            ),
            details,
        ),
    }
}

//! The terminal report of a run: the summary first (verdict counts, the canary's capability
//! table), then failures grouped by namespace with the reason and the policies involved, then
//! inconclusive checks, and truth tables with `-v`. Colour only when asked (a TTY).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::run::RunReport;
use crate::run::check::{Judged, Verdict};

/// How to render.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub color: bool,
    pub verbose: bool,
}

impl Style {
    fn paint(&self, text: &str, verdict: Verdict) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match verdict {
            Verdict::Pass => "32",
            Verdict::NotEnforced | Verdict::OverBlocked | Verdict::IntentGap => "31;1",
            Verdict::Inconclusive => "33",
            Verdict::Informational => "36",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// The whole report.
pub fn render(report: &RunReport, style: Style) -> String {
    let mut out = String::new();
    let total = report.all_checks().count();
    let wall: u128 = report.phases.iter().filter(|(n, _)| !overlapping(n)).map(|(_, d)| d.as_millis()).sum();
    let _ = writeln!(
        out,
        "netpol-verify run {} on {}: {total} checks in {:.1} s",
        report.run_id,
        report.target,
        wall as f64 / 1000.0
    );
    let counts = report.counts();
    let line: Vec<String> = counts
        .iter()
        .map(|(verdict, n)| {
            let text = format!("{n} {verdict}");
            if *n > 0 { style.paint(&text, *verdict) } else { text }
        })
        .collect();
    let _ = writeln!(out, "  {}", line.join(" · "));
    if let Some(detection) = &report.detection {
        let provider = detection.provider.as_deref().map(|p| format!("{p}; ")).unwrap_or_default();
        let cni =
            if detection.cni.is_empty() { "no CNI recognised".to_string() } else { detection.cni.join(", ") };
        let _ = writeln!(out, "  cluster: {provider}{cni}: {}", detection.enforcement);
        for advice in &detection.advice {
            let _ = writeln!(out, "  advice: {advice}");
        }
    }
    for missing in &report.incomplete {
        let _ = writeln!(out, "  {}", style.paint(&format!("incomplete: {missing}"), Verdict::Inconclusive));
    }

    if let Some(canary) = &report.canary {
        let _ = writeln!(out, "\nCNI capabilities (canary)");
        for capability in &canary.capabilities {
            let verdict = match capability.status {
                "enforced" => Verdict::Pass,
                "inconclusive" => Verdict::Inconclusive,
                "informational" => Verdict::Informational,
                _ => Verdict::NotEnforced,
            };
            let status = style.paint(&format!("{:<14}", capability.status), verdict);
            let _ = writeln!(out, "  {:<19} {status} {}", capability.name, capability.detail);
        }
        let latency = match canary.enforce_latency {
            Some(d) => format!("{} ms", d.as_millis()),
            None if canary.capabilities.iter().any(|c| c.name == "ingress deny") => {
                "never (not enforced within the canary's bound)".into()
            }
            None => "not measured".into(),
        };
        let window = match canary.pod_start_window {
            Some(d) if d.is_zero() => "0 ms (denied from the first probe)".to_string(),
            Some(d) => format!("for {} ms a fresh pod sent traffic its policy denies", d.as_millis()),
            None => "not measured".into(),
        };
        let _ = writeln!(out, "  enforcement latency: {latency}\n  pod-start window:    {window}");
        let _ = writeln!(out, "  (each capability's checks are in the JSON and JUnit reports)");
    }

    // The canary's checks are summed up by its table above.
    let failures: Vec<&Judged> = report.judged.iter().filter(|j| j.verdict.is_failure()).collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "\nFailures by namespace");
        let mut by_namespace: BTreeMap<&str, Vec<&Judged>> = BTreeMap::new();
        for judged in failures {
            let namespace = judged.check.to_namespace.as_deref().unwrap_or(&judged.check.from_namespace);
            by_namespace.entry(namespace).or_default().push(judged);
        }
        for (namespace, checks) in by_namespace {
            let _ = writeln!(out, "  {namespace}");
            for judged in checks {
                write_check(&mut out, judged, style);
            }
        }
    }
    let inconclusive: Vec<&Judged> =
        report.judged.iter().filter(|j| j.verdict == Verdict::Inconclusive).collect();
    if !inconclusive.is_empty() {
        let _ = writeln!(out, "\nInconclusive ({})", inconclusive.len());
        for judged in inconclusive {
            write_check(&mut out, judged, style);
        }
    }
    if style.verbose {
        truth_tables(&mut out, report);
    }
    if !report.controls.is_empty() {
        let _ = writeln!(
            out,
            "\nControl policies added for this run ({}, removed with it)",
            report.controls.len()
        );
        for control in &report.controls {
            let _ = writeln!(
                out,
                "  {}: {} {} {} on {}",
                control.key(),
                control.selects,
                if control.direction == crate::engine::Direction::Ingress { "admits" } else { "may reach" },
                control.peer,
                control.ports.join(", ")
            );
        }
    }
    if !report.notes.is_empty() {
        let _ = writeln!(out, "\nNotes");
        for note in &report.notes {
            let _ = writeln!(out, "  {note}");
        }
    }
    let verdict = match report.exit() {
        crate::error::Exit::Pass => style.paint("PASS", Verdict::Pass),
        crate::error::Exit::Findings => style.paint("FAIL", Verdict::NotEnforced),
        _ => style.paint("INCONCLUSIVE", Verdict::Inconclusive),
    };
    let _ = writeln!(out, "\n{verdict} (exit {})", report.exit() as u8);
    out
}

/// Phases that run inside another (and so are not added to the wall time).
pub fn overlapping(phase: &str) -> bool {
    phase == "probe" || phase.starts_with("canary")
}

fn write_check(out: &mut String, judged: &Judged, style: Style) {
    let c = &judged.check;
    let verdict = style.paint(&format!("{:<13}", judged.verdict.as_str()), judged.verdict);
    let _ = writeln!(
        out,
        "    {verdict} {}/{}  {} → {} {}/{}",
        c.scenario, c.group, c.probe.client, c.to, c.probe.target.port, c.probe.target.protocol
    );
    let _ = writeln!(out, "        {}", judged.detail);
    if !c.policies.is_empty() {
        let _ = writeln!(out, "        policies: {}", c.policies.join(", "));
    }
    if judged.verdict.is_failure() {
        for line in &c.because {
            let _ = writeln!(out, "        {line}");
        }
    }
}

/// One cell per (source namespace, target) and port: `.` allowed as expected, `X` denied as
/// expected, `!` not enforced, `B` over-blocked, `G` intent gap, `?` inconclusive, `~`
/// informational.
fn cell(judged: &Judged) -> char {
    match judged.verdict {
        Verdict::Pass if judged.observed.is_deny() => 'X',
        Verdict::Pass => '.',
        Verdict::NotEnforced => '!',
        Verdict::OverBlocked => 'B',
        Verdict::IntentGap => 'G',
        Verdict::Inconclusive => '?',
        Verdict::Informational => '~',
    }
}

fn truth_tables(out: &mut String, report: &RunReport) {
    let mut tables: BTreeMap<(String, String, String), Vec<&Judged>> = BTreeMap::new();
    for judged in &report.judged {
        let c = &judged.check;
        let key = (
            c.scenario.clone(),
            c.group.clone(),
            format!("{}/{}", c.probe.target.port, c.probe.target.protocol),
        );
        tables.entry(key).or_default().push(judged);
    }
    let _ = writeln!(
        out,
        "\nTruth tables (rows: from namespace; columns: to)  . allowed  X denied  ! not enforced  B over-blocked  G intent gap  ? inconclusive  ~ informational"
    );
    for ((scenario, group, port), checks) in tables {
        let mut columns: Vec<&str> = Vec::new();
        let mut rows: Vec<&str> = Vec::new();
        for judged in &checks {
            if !columns.contains(&judged.check.to.as_str()) {
                columns.push(&judged.check.to);
            }
            if !rows.contains(&judged.check.from_namespace.as_str()) {
                rows.push(&judged.check.from_namespace);
            }
        }
        let _ = writeln!(out, "\n{scenario}/{group} {port}");
        for (i, column) in columns.iter().enumerate() {
            let _ = writeln!(out, "  {} = {column}", column_label(i));
        }
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let header: String = (0..columns.len()).map(|i| format!("{:>3}", column_label(i))).collect();
        let _ = writeln!(out, "  {:width$} {header}", "");
        for row in rows {
            let cells: String = columns
                .iter()
                .map(|column| {
                    let judged =
                        checks.iter().find(|j| j.check.from_namespace == row && j.check.to == *column);
                    format!("{:>3}", judged.map_or(' ', |j| cell(j)))
                })
                .collect();
            let _ = writeln!(out, "  {row:width$} {cells}");
        }
    }
}

/// `A` … `Z`, `AA` … `AZ`, `BA` …: spreadsheet-style, for any number of columns.
fn column_label(mut i: usize) -> String {
    let mut label = Vec::new();
    loop {
        label.push(b'A' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    label.reverse();
    String::from_utf8_lossy(&label).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn column_labels_never_run_out() {
        let labels: Vec<String> =
            [0, 25, 26, 51, 701, 702, 18_277].into_iter().map(super::column_label).collect();
        assert_eq!(labels, ["A", "Z", "AA", "AZ", "ZZ", "AAA", "ZZZ"]);
    }
}

//! `run --markdown-file`: a summary for CI step summaries (GitHub's $GITHUB_STEP_SUMMARY).

use std::fmt::Write;

use crate::run::RunReport;
use crate::run::check::Verdict;

/// How many failing rows the table lists before it says how many more there are.
const MAX_ROWS: usize = 200;

fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The Markdown document.
pub fn render(report: &RunReport) -> String {
    let mut out = String::new();
    let exit = report.exit();
    let headline = match exit {
        crate::error::Exit::Pass => "✅ pass",
        crate::error::Exit::Findings => "❌ findings",
        _ => "⚠️ inconclusive",
    };
    let _ = writeln!(out, "## netpol-verify: {headline}\n");
    let _ =
        writeln!(out, "Run `{}` on {} — exit code {}.\n", report.run_id, escape(&report.target), exit as u8);
    let _ = writeln!(out, "| verdict | checks |\n|---|---:|");
    for (verdict, count) in report.counts() {
        let _ = writeln!(out, "| {verdict} | {count} |");
    }
    if let Some(detection) = &report.detection {
        let provider = detection.provider.as_deref().map(|p| format!("{p}; ")).unwrap_or_default();
        let _ = writeln!(
            out,
            "\nCluster: {provider}{} — {}.",
            escape(&detection.cni.join(", ")),
            detection.enforcement
        );
        for advice in &detection.advice {
            let _ = writeln!(out, "\n> {}", escape(advice));
        }
    }
    for missing in &report.incomplete {
        let _ = writeln!(out, "\n**Incomplete:** {}", escape(missing));
    }
    if let Some(canary) = &report.canary {
        let _ = writeln!(
            out,
            "\n### CNI capabilities (canary)\n\n| capability | status | detail |\n|---|---|---|"
        );
        for c in &canary.capabilities {
            let _ = writeln!(out, "| {} | {} | {} |", c.name, c.status, escape(&c.detail));
        }
        let measured = canary.capabilities.iter().any(|c| c.name == "ingress deny");
        let latency = match canary.enforce_latency {
            Some(d) => format!("{} ms", d.as_millis()),
            None if measured => "not enforced".to_string(),
            None => "not measured".to_string(),
        };
        let window =
            canary.pod_start_window.map_or("not measured".to_string(), |d| format!("{} ms", d.as_millis()));
        let _ = writeln!(out, "\nEnforcement latency: **{latency}** · pod-start window: **{window}**");
    }
    let findings: Vec<_> = report
        .all_checks()
        .filter(|j| j.verdict.is_failure() || j.verdict == Verdict::Inconclusive)
        .collect();
    if !findings.is_empty() {
        let _ = writeln!(
            out,
            "\n### Findings\n\n| verdict | scenario | from | to | port | detail | policies |\n|---|---|---|---|---|---|---|"
        );
        for judged in findings.iter().take(MAX_ROWS) {
            let c = &judged.check;
            let _ = writeln!(
                out,
                "| {} | {}/{} | {} | {} | {}/{} | {} | {} |",
                judged.verdict,
                c.scenario,
                c.group,
                c.probe.client,
                escape(&c.to),
                c.probe.target.port,
                c.probe.target.protocol,
                escape(&judged.detail),
                escape(&c.policies.join(", "))
            );
        }
        if findings.len() > MAX_ROWS {
            let _ =
                writeln!(out, "\n… and {} more (see the JSON or JUnit report).", findings.len() - MAX_ROWS);
        }
    }
    if !report.controls.is_empty() {
        let _ = writeln!(
            out,
            "\n<details><summary>Control policies added for this run ({})</summary>\n",
            report.controls.len()
        );
        for control in &report.controls {
            let _ = writeln!(
                out,
                "- `{}` ({}, {}): {}",
                control.key(),
                control.direction.field(),
                control.ports.join(", "),
                escape(&control.why)
            );
        }
        let _ = writeln!(out, "\n</details>");
    }
    if !report.notes.is_empty() {
        let _ = writeln!(out, "\n<details><summary>Notes ({})</summary>\n", report.notes.len());
        for note in &report.notes {
            let _ = writeln!(out, "- {}", escape(&note.0));
        }
        let _ = writeln!(out, "\n</details>");
    }
    out
}

//! `run --junit-file`: a testsuite per scenario, a testcase per check. `not-enforced`,
//! `over-blocked` and `intent-gap` are failures, `inconclusive` is skipped; the detail is the
//! message.

use junit_report::{Duration, ReportBuilder, TestCase, TestSuiteBuilder};

use crate::run::RunReport;
use crate::run::check::{Judged, Verdict};

/// The testcase name: `shop/nv-client-x → 10.244.1.10 (monitoring/nv-server-x) 80/TCP`.
pub fn case_name(judged: &Judged) -> String {
    let c = &judged.check;
    format!("{} → {} {}/{}", c.probe.client, c.to, c.probe.target.port, c.probe.target.protocol)
}

/// Writes the JUnit XML report.
pub fn write<W: std::io::Write>(out: W, report: &RunReport) -> Result<(), junit_report::Error> {
    let mut suites = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for judged in report.all_checks() {
        if !names.contains(&judged.check.scenario.as_str()) {
            names.push(&judged.check.scenario);
        }
    }
    for name in names {
        let cases = report.all_checks().filter(|j| j.check.scenario == name).map(|judged| {
            let time = Duration::milliseconds(judged.ms.unwrap_or(0) as i64);
            let title = case_name(judged);
            let mut case = match judged.verdict {
                Verdict::Pass | Verdict::Informational => TestCase::success(&title, time),
                Verdict::Inconclusive => TestCase::skipped_with_cause(&title, "inconclusive", &judged.detail),
                failure => TestCase::failure(&title, time, failure.as_str(), &judged.detail),
            };
            case.set_classname(&format!("{name}.{}", judged.check.group));
            if matches!(judged.verdict, Verdict::Pass | Verdict::Informational) {
                case.set_system_out(&format!("{}: {}", judged.verdict, judged.detail));
            }
            case
        });
        suites.push(TestSuiteBuilder::new(name).add_testcases(cases).build());
    }
    if !report.incomplete.is_empty() {
        // What did not happen is reported too, so a run that checked nothing is not green.
        let cases =
            report.incomplete.iter().map(|what| TestCase::skipped_with_cause(what, "incomplete", what));
        suites.push(TestSuiteBuilder::new("incomplete").add_testcases(cases).build());
    }
    ReportBuilder::new().add_testsuites(suites).build().write_xml(out)
}

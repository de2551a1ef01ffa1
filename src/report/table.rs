//! `plan --output table`: truth tables as the upstream e2e tests print them.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::engine::{Engine, Protocol};
use crate::model::PodId;
use crate::plan::Expected;

/// Cell symbols.
const ALLOWED: char = '.';
const DENIED: char = 'X';
const NOT_PROBED: char = '-';

/// One table per probed port/protocol: rows are sources, columns destinations. The diagonal
/// (a pod to its own IP) shows the engine's answer as upstream displays it; other cells
/// without a probe (the destination does not declare the port) show `-`.
pub fn render(engine: &Engine<'_>, expected: &[Expected<'_, '_>]) -> String {
    let snapshot = engine.snapshot();
    let pods: Vec<PodId> = snapshot.pod_ids().collect();
    let names: Vec<String> = pods.iter().map(|p| snapshot.pod_key(*p).to_string()).collect();
    let width = names.iter().map(String::len).max().unwrap_or(1);

    let mut by_port: Vec<(u16, Protocol)> =
        expected.iter().map(|e| (e.probe.port, e.probe.protocol)).collect();
    by_port.sort();
    by_port.dedup();
    let cells: HashMap<(PodId, PodId, u16, Protocol), &Expected<'_, '_>> =
        expected.iter().map(|e| ((e.probe.from, e.probe.to, e.probe.port, e.probe.protocol), e)).collect();

    let mut out = String::new();
    if by_port.is_empty() {
        out.push_str("no probes planned: no pod declares a containerPort another pod could reach\n");
        return out;
    }
    // Short names (the upstream x/a style) head their columns; longer ones get numbers, with
    // the number in front of each row's name, so tables stay narrow.
    let numbered = width > 5;
    let row_labels: Vec<String> = if numbered {
        let digits = pods.len().to_string().len();
        names.iter().enumerate().map(|(i, n)| format!("{:>digits$} {n}", i + 1)).collect()
    } else {
        names.clone()
    };
    let column_labels: Vec<String> =
        if numbered { (1..=pods.len()).map(|i| i.to_string()).collect() } else { names.clone() };
    let row_width = row_labels.iter().map(String::len).max().unwrap_or(1);
    let cell_width = column_labels.iter().map(String::len).max().unwrap_or(1);

    let mut footnotes: Vec<String> = Vec::new();
    for (port, protocol) in &by_port {
        let _ = writeln!(out, "{port}/{protocol}");
        let _ = write!(out, "{:row_width$}", "");
        for label in &column_labels {
            let _ = write!(out, " {label:>cell_width$}");
        }
        out.push('\n');
        for ((&from, from_name), row_label) in pods.iter().zip(&names).zip(&row_labels) {
            let _ = write!(out, "{row_label:row_width$}");
            for (&to, to_name) in pods.iter().zip(&names) {
                let symbol = if from == to {
                    symbol(engine.verdict(from, to, *port, *protocol).allowed)
                } else {
                    match cells.get(&(from, to, *port, *protocol)) {
                        None => NOT_PROBED,
                        Some(e) => {
                            let defined = e.verdict.implementation_defined;
                            if defined.any() {
                                footnotes.push(format!(
                                    "{port}/{protocol} {from_name} -> {to_name}: {}",
                                    defined.names().join(", ")
                                ));
                            }
                            symbol(e.verdict.allowed)
                        }
                    }
                };
                let _ = write!(out, " {symbol:>cell_width$}");
            }
            out.push('\n');
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "legend: rows = from, columns = to{}; {ALLOWED} allowed, {DENIED} denied, {NOT_PROBED} not probed \
         (the destination does not declare that port)",
        if numbered { " (numbered as the rows)" } else { "" }
    );
    out.push_str(
        "the diagonal is a pod reaching its own IP: implementation-defined, shown as upstream e2e treats it\n",
    );
    if !footnotes.is_empty() {
        out.push_str("implementation-defined cells (informational in `run`, never failures):\n");
        for note in footnotes {
            let _ = writeln!(out, "  {note}");
        }
    }
    out
}

fn symbol(allowed: bool) -> char {
    if allowed { ALLOWED } else { DENIED }
}

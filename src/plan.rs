//! The planner: which connections to probe and what each should see.
//!
//! Pure. For now it plans the pod matrix: every ordered pair of distinct pods × every port the
//! destination declares (number and protocol), each with the engine's expected verdict.

use crate::engine::{Engine, Protocol, Verdict};
use crate::model::{Note, PodId};

/// One connection to try.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Probe {
    pub from: PodId,
    pub to: PodId,
    pub port: u16,
    pub protocol: Protocol,
    /// The destination's name for this port, if it has one.
    pub port_name: Option<String>,
}

/// Probes in a stable order (from, to, port, protocol), and what the planner noticed.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub probes: Vec<Probe>,
    pub notes: Vec<Note>,
}

impl Plan {
    /// The distinct (port, protocol) pairs probed, sorted.
    pub fn ports(&self) -> Vec<(u16, Protocol)> {
        let mut ports: Vec<(u16, Protocol)> = self.probes.iter().map(|p| (p.port, p.protocol)).collect();
        ports.sort();
        ports.dedup();
        ports
    }
}

/// A probe with the engine's expectation for it.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'p, 'e> {
    pub probe: &'p Probe,
    pub verdict: Verdict<'e>,
}

/// Plans a probe from every pod to every other pod on every port the destination declares.
pub fn pod_matrix(engine: &Engine<'_>) -> Plan {
    let snapshot = engine.snapshot();
    let mut plan = Plan::default();
    for to in snapshot.pod_ids() {
        let key = snapshot.pod_key(to);
        if engine.declared_ports(to).is_empty() {
            plan.notes.push(Note(format!(
                "pod {key} declares no containerPorts: no probe targets it (probes only go to declared ports)"
            )));
        }
        if engine.pod_ip(to).is_none() {
            plan.notes.push(Note(format!(
                "pod {key} has no IP yet: its cells are predicted from selectors alone (no ipBlock can match it)"
            )));
        }
    }
    for from in snapshot.pod_ids() {
        for to in snapshot.pod_ids() {
            if from == to {
                continue;
            }
            for port in engine.declared_ports(to) {
                plan.probes.push(Probe {
                    from,
                    to,
                    port: port.port,
                    protocol: port.protocol,
                    port_name: port.name.clone(),
                });
            }
        }
    }
    plan.probes.sort();
    plan
}

/// Pairs each probe with the engine's verdict.
pub fn expectations<'p, 'e>(engine: &'e Engine<'_>, plan: &'p Plan) -> Vec<Expected<'p, 'e>> {
    plan.probes
        .iter()
        .map(|probe| Expected {
            probe,
            verdict: engine.verdict(probe.from, probe.to, probe.port, probe.protocol),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::upstream_cluster_yaml;
    use crate::input::{Source, load};

    #[test]
    fn the_upstream_grid_plans_every_distinct_pair_on_every_declared_port() {
        let loaded = load(&[Source { name: "grid".into(), text: upstream_cluster_yaml() }]).expect("valid");
        let engine = Engine::new(&loaded.snapshot).expect("valid");
        let plan = pod_matrix(&engine);
        // 9 × 8 ordered pairs × (80, 81) × (TCP, UDP, SCTP)
        assert_eq!(plan.probes.len(), 9 * 8 * 6);
        assert!(plan.probes.iter().all(|p| p.from != p.to));
        assert_eq!(plan.ports().len(), 6);
        assert!(plan.notes.is_empty());
        let first = &plan.probes[0];
        assert_eq!(
            (first.port, first.protocol, first.port_name.as_deref()),
            (80, Protocol::Tcp, Some("serve-80-tcp"))
        );
    }

    #[test]
    fn pods_without_ports_or_ips_are_noted() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n\
                    ---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\n\
                    spec: {containers: [{name: c, image: i, ports: [{containerPort: 53, protocol: UDP}]}]}\n";
        let loaded = load(&[Source { name: "t".into(), text: text.into() }]).expect("valid");
        let engine = Engine::new(&loaded.snapshot).expect("valid");
        let plan = pod_matrix(&engine);
        assert_eq!(plan.probes.len(), 1, "only x/a -> x/b on 53/UDP");
        assert_eq!(plan.probes[0].protocol, Protocol::Udp);
        let notes: Vec<&str> = plan.notes.iter().map(|n| n.0.as_str()).collect();
        assert!(notes.iter().any(|n| n.starts_with("pod x/a declares no containerPorts")), "{notes:?}");
        assert_eq!(notes.iter().filter(|n| n.contains("has no IP yet")).count(), 2);
    }
}

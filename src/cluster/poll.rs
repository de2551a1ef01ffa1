//! Pollers: a prober running the same plan in rounds (`netpol-probe batch --every`), for the
//! canary, which must see within tens of milliseconds when a policy starts to hold and how soon
//! after a pod starts it is covered. One batch per round would be a pod per round on Kubernetes.

use std::time::Duration;

use netpol_probe::wire::{MAX_REPEAT_MS, ProbeResult, RoundLine};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// One round of a poller.
#[derive(Debug, Clone)]
pub struct Round {
    /// When the round began, on this process's clock. Relayed rounds carry an estimate that is
    /// never earlier than the truth (see [`relay`]).
    pub sent: Instant,
    /// When it began, counted from the prober's first moment.
    pub at: Duration,
    pub results: Vec<ProbeResult>,
}

/// A prober at work: its rounds arrive as they complete, and the channel closes when it ends
/// (its time is up, it failed, or it was stopped). Dropping the poller stops the prober.
#[derive(Debug)]
pub struct Poller {
    pub rounds: mpsc::Receiver<Round>,
    _stop: DropGuard,
}

impl Poller {
    /// A poller whose work ends when `stop` is cancelled (on drop at the latest).
    pub fn new(rounds: mpsc::Receiver<Round>, stop: CancellationToken) -> Poller {
        Poller { rounds, _stop: stop.drop_guard() }
    }
}

/// Relays the round lines a repeating batch prints to `lines` until they end or `stop` fires;
/// anything else on the stream is skipped.
///
/// A line arrives after the round it reports, so `sent` is estimated: the prober's first
/// moment on this clock is taken as the earliest of (arrival − `at_ms`) over the lines so
/// far, which is never earlier than the truth and comes within the quickest delivery of it.
pub async fn relay(lines: impl AsyncBufRead + Unpin, rounds: mpsc::Sender<Round>, stop: CancellationToken) {
    let mut lines = lines.lines();
    let mut first_moment: Option<Instant> = None;
    loop {
        let line = tokio::select! {
            () = stop.cancelled() => return,
            line = lines.next_line() => line,
        };
        let Ok(Some(line)) = line else { return };
        let Ok(round) = serde_json::from_str::<RoundLine>(&line) else { continue };
        // A prober starts no round after MAX_REPEAT_MS: a later one is no round of ours.
        if round.at_ms > MAX_REPEAT_MS {
            continue;
        }
        let at = Duration::from_millis(round.at_ms);
        let arrived = Instant::now();
        let Some(moment) = arrived.checked_sub(at) else { continue };
        let moment = first_moment.map_or(moment, |m| m.min(moment));
        first_moment = Some(moment);
        let Some(sent) = moment.checked_add(at) else { continue };
        if rounds.send(Round { sent, at, results: round.results }).await.is_err() {
            return;
        }
    }
}

/// A poller made of one batch per round, for the in-memory clusters of tests. Its first moment
/// is its first round.
#[cfg(test)]
pub fn by_batches<C: super::Cluster + Clone + Send + Sync + 'static>(
    cluster: &C,
    prober: &super::ProbePod,
    plan: &netpol_probe::wire::Plan,
    every: Duration,
    total: Duration,
) -> Poller {
    let (tx, rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let (cluster, prober, plan, token) = (cluster.clone(), prober.clone(), plan.clone(), stop.clone());
    let limit = plan.probes.iter().map(|p| p.timeout_ms).max().map_or(every, Duration::from_millis)
        + Duration::from_secs(10);
    tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < total {
            let sent = Instant::now();
            let output = tokio::select! {
                () = token.cancelled() => return,
                output = cluster.run_batch(&prober, &plan, limit) => output,
            };
            let Ok(output) = output else { return };
            let round = Round { sent, at: sent - started, results: output.results };
            if tx.send(round).await.is_err() {
                return;
            }
            tokio::time::sleep_until(sent + every).await;
        }
    });
    Poller::new(rx, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn relayed_rounds_are_dated_from_the_quickest_delivery() {
        let (mut writer, reader) = tokio::io::duplex(4096);
        let (tx, mut rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let relaying = tokio::spawn(relay(tokio::io::BufReader::new(reader), tx, stop.clone()));
        let line =
            |round: u32, at_ms: u64| format!("{{\"round\":{round},\"at_ms\":{at_ms},\"results\":[]}}\n");
        let start = Instant::now();
        // Round 0 began at the first moment but arrives 300 ms late; round 1 arrives at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::io::AsyncWriteExt::write_all(&mut writer, line(0, 0).as_bytes()).await.expect("write");
        let first = rx.recv().await.expect("round 0");
        assert_eq!(first.sent - start, Duration::from_millis(300), "an upper bound at first");
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"not a round\n").await.expect("write");
        // No prober starts a round this late: a garbled line, skipped.
        tokio::io::AsyncWriteExt::write_all(&mut writer, line(9, u64::MAX).as_bytes()).await.expect("write");
        tokio::io::AsyncWriteExt::write_all(&mut writer, line(1, 350).as_bytes()).await.expect("write");
        let second = rx.recv().await.expect("round 1");
        assert_eq!(second.at, Duration::from_millis(350));
        // Arrived 400 ms in, begun 350 ms after the first moment: the first moment was 50 ms in.
        assert_eq!(second.sent - start, Duration::from_millis(400));
        stop.cancel();
        relaying.await.expect("relay ends when stopped");
        assert!(rx.recv().await.is_none());
    }
}

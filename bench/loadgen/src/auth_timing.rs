//! `auth-timing`: AUTH PLAIN reply latency per failure step.
//!
//! For every case of `agentkeys demo seed --json`, over a TLS submission
//! session, measures the time from writing the AUTH line to reading the whole
//! reply. All cases run at the same time, each on `lanes` sequential lanes, so
//! drift in the machine affects all of them alike (and a server that holds
//! every failure for a fixed floor does not make the run last cases × rounds ×
//! floor). A failing case makes up to `attempts_per_connection` attempts per
//! connection (the server closes after 3 failures); a succeeding case makes one
//! (an authenticated session cannot AUTH again), so it reconnects every time.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::smtp::{self, TlsTarget};
use crate::stats;

/// Consecutive connection failures after which a lane gives up.
const MAX_CONSECUTIVE_ERRORS: u32 = 20;
/// Most distinct error messages kept per case.
const MAX_ERROR_SAMPLES: usize = 3;

#[derive(Deserialize)]
struct CasesFile {
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone)]
pub struct Case {
    /// The fixture's name, when the file gives one (`key-revoked`, …).
    #[serde(default)]
    pub case: Option<String>,
    pub outcome: String,
    pub username: String,
    pub password: String,
    /// "235" or "535" (a number is accepted too).
    pub expect: serde_json::Value,
}

impl Case {
    fn expected_code(&self) -> Result<u16> {
        match &self.expect {
            serde_json::Value::String(s) => s.parse().with_context(|| format!("expect {s:?}")),
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .with_context(|| format!("expect {n}")),
            other => bail!("expect must be a reply code, got {other}"),
        }
    }
}

pub fn load_cases(path: &Path) -> Result<Vec<Case>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let file: CasesFile =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    if file.cases.is_empty() {
        bail!("{} has no cases", path.display());
    }
    Ok(file.cases)
}

pub struct Options {
    pub target: TlsTarget,
    pub cases: Vec<Case>,
    pub rounds: usize,
    pub lanes: usize,
    pub attempts_per_connection: usize,
    pub max_duration: Duration,
    pub sources: u8,
}

#[derive(Serialize)]
pub struct CaseReport {
    pub case: Option<String>,
    pub outcome: String,
    pub username: String,
    pub expect: u16,
    pub samples: usize,
    pub median_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Median by position of the attempt within its connection (1st, 2nd, 3rd).
    pub median_by_attempt_ms: Vec<Option<f64>>,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

#[derive(Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub addr: String,
    pub rounds: usize,
    pub lanes_per_case: usize,
    pub attempts_per_connection: usize,
    pub elapsed_seconds: f64,
    pub stopped_by_deadline: bool,
    pub cases: Vec<CaseReport>,
    /// Largest minus smallest median among the failing (non-235) cases.
    pub failure_median_spread_ms: Option<f64>,
    /// The same spread relative to the median of the failing cases' medians.
    pub failure_median_spread_ratio: Option<f64>,
}

/// What one lane gathered for one case.
struct Samples {
    by_attempt: Vec<Vec<f64>>,
    errors: u64,
    consecutive_errors: u32,
    error_samples: Vec<String>,
}

impl Samples {
    fn new(per_conn: usize) -> Self {
        Self {
            by_attempt: vec![Vec::new(); per_conn],
            errors: 0,
            consecutive_errors: 0,
            error_samples: Vec::new(),
        }
    }

    fn count(&self) -> usize {
        self.by_attempt.iter().map(Vec::len).sum()
    }

    fn note_error(&mut self, e: String) {
        self.errors += 1;
        self.consecutive_errors += 1;
        if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&e) {
            self.error_samples.push(e);
        }
    }

    fn merge(&mut self, other: Samples) {
        for (mine, theirs) in self.by_attempt.iter_mut().zip(other.by_attempt) {
            mine.extend(theirs);
        }
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
    }
}

/// Everything a lane needs, shared by all lanes.
struct Shared {
    target: TlsTarget,
    per_conn: usize,
    sources: u8,
    deadline: Instant,
    connections: AtomicUsize,
}

pub async fn run(opts: Options) -> Result<Report> {
    let per_conn = opts.attempts_per_connection.max(1);
    let lanes = opts.lanes.max(1);
    let expects = opts
        .cases
        .iter()
        .map(Case::expected_code)
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        target: opts.target.clone(),
        per_conn,
        sources: opts.sources,
        deadline: start + opts.max_duration,
        connections: AtomicUsize::new(0),
    });

    let mut tasks = Vec::new();
    for (index, (case, &expect)) in opts.cases.iter().zip(&expects).enumerate() {
        let auth_line = Arc::new(smtp::auth_plain_line(&case.username, &case.password));
        for lane in 0..lanes {
            let quota = opts.rounds / lanes + usize::from(lane < opts.rounds % lanes);
            let shared = Arc::clone(&shared);
            let auth_line = Arc::clone(&auth_line);
            tasks.push(tokio::spawn(async move {
                let (samples, stopped) = run_lane(&shared, &auth_line, expect, quota).await;
                (index, samples, stopped)
            }));
        }
    }
    let mut merged: Vec<Samples> = opts.cases.iter().map(|_| Samples::new(per_conn)).collect();
    let mut stopped_by_deadline = false;
    for task in tasks {
        let (index, samples, stopped) = task.await?;
        merged[index].merge(samples);
        stopped_by_deadline |= stopped;
    }

    let cases: Vec<CaseReport> = opts
        .cases
        .into_iter()
        .zip(expects)
        .zip(merged)
        .map(|((case, expect), s)| {
            let all: Vec<f64> = s.by_attempt.iter().flatten().copied().collect();
            CaseReport {
                case: case.case,
                outcome: case.outcome,
                username: case.username,
                expect,
                samples: all.len(),
                median_ms: stats::median(&all),
                p90_ms: stats::percentile(&all, 90.0),
                min_ms: stats::percentile(&all, 0.0),
                max_ms: stats::percentile(&all, 100.0),
                median_by_attempt_ms: s.by_attempt.iter().map(|v| stats::median(v)).collect(),
                errors: s.errors,
                error_samples: s.error_samples,
            }
        })
        .collect();
    let failure_medians: Vec<f64> = cases
        .iter()
        .filter(|c| c.expect != 235)
        .filter_map(|c| c.median_ms)
        .collect();
    let spread = match (
        failure_medians.iter().copied().reduce(f64::max),
        failure_medians.iter().copied().reduce(f64::min),
    ) {
        (Some(max), Some(min)) => Some(max - min),
        _ => None,
    };
    let ratio = match (spread, stats::median(&failure_medians)) {
        (Some(s), Some(m)) if m > 0.0 => Some(s / m),
        _ => None,
    };
    Ok(Report {
        kind: "auth-timing",
        addr: opts.target.addr.to_string(),
        rounds: opts.rounds,
        lanes_per_case: lanes,
        attempts_per_connection: per_conn,
        elapsed_seconds: start.elapsed().as_secs_f64(),
        stopped_by_deadline,
        cases,
        failure_median_spread_ms: spread,
        failure_median_spread_ratio: ratio,
    })
}

/// Gathers `quota` samples of one case, connection after connection. Returns
/// the samples and whether the deadline cut it short.
async fn run_lane(shared: &Shared, auth_line: &str, expect: u16, quota: usize) -> (Samples, bool) {
    let mut samples = Samples::new(shared.per_conn);
    while samples.count() < quota && samples.consecutive_errors < MAX_CONSECUTIVE_ERRORS {
        if Instant::now() >= shared.deadline {
            return (samples, true);
        }
        // One success per connection: AUTH is not allowed twice in a session.
        let attempts = if expect == 235 {
            1
        } else {
            shared.per_conn.min(quota - samples.count())
        };
        let source = smtp::source_ip(
            shared.connections.fetch_add(1, Ordering::Relaxed),
            shared.sources,
        );
        one_connection(
            &shared.target,
            source,
            auth_line,
            expect,
            &mut samples,
            attempts,
        )
        .await;
    }
    (samples, false)
}

/// Opens one session and makes up to `attempts` AUTH attempts on it.
async fn one_connection(
    target: &TlsTarget,
    source: std::net::Ipv4Addr,
    auth_line: &str,
    expect: u16,
    samples: &mut Samples,
    attempts: usize,
) {
    let mut session = match smtp::tls_session(target, source).await {
        Ok(s) => s,
        Err(e) => {
            samples.note_error(format!("session: {e:#}"));
            return;
        }
    };
    for position in 0..attempts {
        let began = Instant::now();
        let reply = match session.send(auth_line).await {
            Ok(()) => session.read_reply().await,
            Err(e) => Err(e),
        };
        let elapsed_ms = began.elapsed().as_secs_f64() * 1e3;
        match reply {
            Ok(r) if r.code == expect => {
                samples.by_attempt[position].push(elapsed_ms);
                samples.consecutive_errors = 0;
            }
            Ok(r) => {
                samples.note_error(format!(
                    "attempt {}: expected {expect}, got {:?}",
                    position + 1,
                    r.lines
                ));
                break;
            }
            Err(e) => {
                samples.note_error(format!("attempt {}: {e:#}", position + 1));
                return;
            }
        }
    }
    // The server may already have closed after the last failure; QUIT is best effort.
    let _ = session.command("QUIT").await;
}

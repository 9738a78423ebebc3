//! The DNS under the MX's verdicts: one answer table per server, shared by every
//! session, in front of the configured name servers.
//!
//! mail-auth 0.13 does its lookups through a hickory `TokioResolver` of its own
//! and offers one hook, `ResolverCache` (`get` before a query, `insert` after a
//! successful one). It caches nothing itself; hickory caches answers and
//! NXDOMAIN/NODATA, but neither caches failures, neither shares one query among
//! concurrent askers, and a silent name server costs every lookup its whole
//! timeout. A synchronous `get` cannot wait for another session's query either.
//! So the mechanism lives below mail-auth, where every miss passes:
//!
//! - [`AnswerTable`] holds, per record type and name, a **positive** answer (its
//!   records, kept for their TTL within [`POSITIVE_TTL_MIN`]..[`POSITIVE_TTL_MAX`]),
//!   a **negative** one (NXDOMAIN or NODATA, kept for the SOA's negative TTL
//!   within [`NEGATIVE_TTL_MIN`]..[`NEGATIVE_TTL_MAX`], the floor when there is no
//!   SOA), a **failure** (the upstream gave up: answered `SERVFAIL` at once for
//!   [`FAILURE_TTL`], then one background query tries again while askers still
//!   get the failure), or a **query in flight** that later askers wait on instead
//!   of asking again (single flight). A query in flight for longer than
//!   [`SLOW_AFTER`] is answered as a failure to later askers; it goes on, and its
//!   answer, if it comes, is kept for the next message. The table is a map per
//!   record type under a `std` mutex held only to read or replace a slot, never
//!   across an `.await`.
//! - [`DnsFront`] is a small DNS server on `127.0.0.1` (UDP and TCP, one port)
//!   that answers from the table and fills it from the upstream name servers
//!   (each query tries up to [`UPSTREAM_ATTEMPTS`] times). mail-auth's resolver
//!   is pointed at it, so mail-auth sees ordinary DNS answers and keeps its own
//!   rules for them (NXDOMAIN is not a match, SERVFAIL is a `temperror`, …).
//! - [`TxtCache`] and [`RecordCache`] are mail-auth's `ResolverCache` hooks over
//!   the same table: a message whose names are known never leaves the process,
//!   and a TXT record is parsed once per kind (SPF, DMARC, DKIM key) while it is
//!   cached. A TXT name that is known not to exist or to be failing is answered
//!   there too; other record types in those states go to the front.
//!
//! The per-message bound is the verifier's (`VERDICT_BUDGET` in `verdicts.rs`).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::{DnsError as NetDnsError, NetError};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::spf::Spf;
use mail_auth::{DnsError, DnssecStatus, Error as AuthError, MX, RecordSet, ResolverCache, Txt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The shortest time a positive answer is kept, whatever its TTL (a record with
/// TTL 0 must not cost a query per message).
pub const POSITIVE_TTL_MIN: Duration = Duration::from_secs(5);
/// The longest time a positive answer is kept, whatever its TTL.
pub const POSITIVE_TTL_MAX: Duration = Duration::from_secs(3600);
/// The shortest time a negative answer (NXDOMAIN, NODATA) is kept, and how long
/// one without an SOA is kept (RFC 2308 takes the negative TTL from the SOA).
pub const NEGATIVE_TTL_MIN: Duration = Duration::from_secs(30);
/// The longest time a negative answer is kept.
pub const NEGATIVE_TTL_MAX: Duration = Duration::from_secs(900);
/// How long a name whose query failed (every attempt timed out, or the server
/// answered `SERVFAIL`/`REFUSED`) is answered `SERVFAIL` at once, without a query.
/// Then one background query tries again; askers keep getting the failure
/// until it succeeds.
pub const FAILURE_TTL: Duration = Duration::from_secs(30);
/// A query in flight for this long is answered as a failure to later askers (no
/// message waits on a name another message already waited out). Equal to the
/// verifier's per-message budget.
pub const SLOW_AFTER: Duration = Duration::from_millis(500);
/// The upstream attempts of one query, each with its own timeout; the first is
/// short so that a lost packet is asked again within one message's budget.
pub const UPSTREAM_ATTEMPTS: [Duration; 3] =
    [Duration::from_millis(400), Duration::from_millis(800), Duration::from_millis(1600)];
/// The most names kept per record type; beyond it, expired entries go first, then
/// arbitrary settled ones (never a query in flight).
pub const MAX_NAMES: usize = 10_000;
/// The largest UDP answer the front sends (EDNS); larger answers are truncated and
/// the client asks again over TCP.
pub const FRONT_MAX_UDP_PAYLOAD: u16 = 4096;
/// The longest a TCP client of the front may stay silent between queries.
const FRONT_TCP_IDLE: Duration = Duration::from_secs(10);

/// The record types the table keeps (what mail-auth asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rtype {
    Txt,
    A,
    Aaaa,
    Mx,
    Ptr,
}

impl Rtype {
    const ALL: [Rtype; 5] = [Rtype::Txt, Rtype::A, Rtype::Aaaa, Rtype::Mx, Rtype::Ptr];

    pub(crate) fn of(record_type: RecordType) -> Option<Self> {
        Some(match record_type {
            RecordType::TXT => Self::Txt,
            RecordType::A => Self::A,
            RecordType::AAAA => Self::Aaaa,
            RecordType::MX => Self::Mx,
            RecordType::PTR => Self::Ptr,
            _ => return None,
        })
    }

    pub(crate) fn record_type(self) -> RecordType {
        match self {
            Self::Txt => RecordType::TXT,
            Self::A => RecordType::A,
            Self::Aaaa => RecordType::AAAA,
            Self::Mx => RecordType::MX,
            Self::Ptr => RecordType::PTR,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the upstream said about one name and type (one query, all its attempts).
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The answer section (CNAMEs included).
    Records(Vec<Record>),
    /// NXDOMAIN or NODATA (`NoError` without records), with the zone's SOA when
    /// the server sent it.
    NotFound { code: ResponseCode, soa: Option<Box<Record>>, negative_ttl: Option<u32> },
    /// No usable answer: timeouts, `SERVFAIL`, `REFUSED`, a network error.
    Failed(String),
}

/// The name servers the front asks on a miss. One call is one attempt; the table's
/// caller bounds it with [`UPSTREAM_ATTEMPTS`].
#[async_trait]
pub(crate) trait Upstream: Send + Sync + 'static {
    async fn query(&self, name: &str, rtype: Rtype) -> Outcome;
}

/// The configured name servers through a hickory resolver with no cache of its
/// own (the table is the cache).
pub(crate) struct HickoryUpstream(pub(crate) TokioResolver);

#[async_trait]
impl Upstream for HickoryUpstream {
    async fn query(&self, name: &str, rtype: Rtype) -> Outcome {
        let name = match Name::from_ascii(name) {
            Ok(name) => name,
            Err(e) => return Outcome::Failed(format!("not a DNS name: {e}")),
        };
        match self.0.lookup(name, rtype.record_type()).await {
            Ok(lookup) => Outcome::Records(lookup.answers().to_vec()),
            Err(NetError::Dns(NetDnsError::NoRecordsFound(no))) => Outcome::NotFound {
                code: no.response_code,
                soa: no.soa.map(|soa| Box::new((*soa).into_record_of_rdata())),
                negative_ttl: no.negative_ttl,
            },
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

/// The kinds of TXT record mail-auth parses; each check asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxtKind {
    Spf,
    Dmarc,
    DomainKey,
}

/// A cached TXT answer: the records (character-strings joined), parsed lazily
/// once per kind.
pub(crate) struct TxtAnswer {
    records: Vec<Vec<u8>>,
    spf: OnceLock<Txt>,
    dmarc: OnceLock<Txt>,
    domain_key: OnceLock<Txt>,
}

impl std::fmt::Debug for TxtAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxtAnswer").field("records", &self.records.len()).finish_non_exhaustive()
    }
}

impl TxtAnswer {
    fn new(records: &[Record]) -> Self {
        let records = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
                _ => None,
            })
            .collect();
        Self { records, spf: OnceLock::new(), dmarc: OnceLock::new(), domain_key: OnceLock::new() }
    }

    /// The records as mail-auth's `txt_lookup` would parse them for `kind`: the
    /// first record that parses, else the last error (`InvalidRecordType` when
    /// there is no record at all).
    pub(crate) fn parsed(&self, kind: TxtKind) -> Txt {
        fn first_valid<T: TxtRecordParser + Into<Txt>>(records: &[Vec<u8>]) -> Txt {
            let mut result = Err(AuthError::Dns(DnsError::InvalidRecordType));
            for record in records {
                result = T::parse(record);
                if result.is_ok() {
                    break;
                }
            }
            result.into()
        }
        match kind {
            TxtKind::Spf => self.spf.get_or_init(|| first_valid::<Spf>(&self.records)),
            TxtKind::Dmarc => self.dmarc.get_or_init(|| first_valid::<Dmarc>(&self.records)),
            TxtKind::DomainKey => self.domain_key.get_or_init(|| first_valid::<DomainKey>(&self.records)),
        }
        .clone()
    }
}

/// A positive answer in the form mail-auth's caches take.
#[derive(Debug, Clone)]
pub(crate) enum Parsed {
    Txt(Arc<TxtAnswer>),
    A(RecordSet<Ipv4Addr>),
    Aaaa(RecordSet<Ipv6Addr>),
    Mx(RecordSet<MX>),
    /// PTR: only the front answers it.
    Ptr,
}

impl Parsed {
    fn new(rtype: Rtype, records: &[Record]) -> Self {
        fn set<T>(items: Vec<T>) -> RecordSet<T> {
            RecordSet { rrset: items.into(), dnssec_status: DnssecStatus::Indeterminate }
        }
        match rtype {
            Rtype::Txt => Self::Txt(Arc::new(TxtAnswer::new(records))),
            Rtype::A => Self::A(set(records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect())),
            Rtype::Aaaa => Self::Aaaa(set(records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::AAAA(a) => Some(a.0),
                    _ => None,
                })
                .collect())),
            Rtype::Mx => {
                // Grouped by preference, lowest first, as mail-auth's own lookup does.
                let mut groups: Vec<(u16, Vec<Box<str>>)> = Vec::new();
                for r in records {
                    if let RData::MX(mx) = &r.data {
                        let exchange = mx.exchange.to_lowercase().to_ascii().into_boxed_str();
                        match groups.iter_mut().find(|(p, _)| *p == mx.preference) {
                            Some((_, exchanges)) => exchanges.push(exchange),
                            None => groups.push((mx.preference, vec![exchange])),
                        }
                    }
                }
                groups.sort_unstable_by_key(|(p, _)| *p);
                Self::Mx(set(groups
                    .into_iter()
                    .map(|(preference, exchanges)| MX { preference, exchanges: exchanges.into_boxed_slice() })
                    .collect()))
            }
            Rtype::Ptr => Self::Ptr,
        }
    }
}

/// A settled answer.
#[derive(Debug)]
pub(crate) enum Known {
    Positive { records: Arc<[Record]>, parsed: Parsed },
    Negative { code: ResponseCode, soa: Option<Box<Record>> },
}

#[derive(Debug)]
enum Slot {
    /// A query is in flight; its task drops the sender when the slot is settled.
    Pending { since: Instant, done: watch::Receiver<()> },
    Known { known: Arc<Known>, expires: Instant },
    /// Answer `SERVFAIL` until `until`; then one background query (`probing`).
    Failing { until: Instant, probing: bool },
}

impl Slot {
    /// Whether eviction may drop it (never a query in flight).
    fn stale(&self, now: Instant) -> bool {
        match self {
            Slot::Pending { done, .. } => abandoned(done),
            Slot::Known { expires, .. } => *expires <= now,
            Slot::Failing { until, probing } => !probing && *until <= now,
        }
    }
}

/// Whether the query behind a pending slot ended without settling it (its task
/// was cancelled, e.g. at shutdown): then the slot is as good as absent.
fn abandoned(done: &watch::Receiver<()>) -> bool {
    done.has_changed().is_err()
}

/// What the front does with a question ([`AnswerTable::ask`]).
#[derive(Debug)]
pub(crate) enum Ask {
    /// Answer with this, records' TTLs capped at `ttl` seconds.
    Known { known: Arc<Known>, ttl: u32 },
    /// Answer `SERVFAIL` now.
    Failing,
    /// Another query is in flight: wait until the sender is dropped, then ask again.
    Wait(watch::Receiver<()>),
    /// Nobody is asking upstream: the caller runs the query ([`AnswerTable::settle`],
    /// then drops `done`) and, when `wait` is given, waits on it like [`Ask::Wait`];
    /// without it (a background probe of a failing name) it answers `SERVFAIL` now.
    Query { done: watch::Sender<()>, wait: Option<watch::Receiver<()>> },
}

/// What mail-auth's caches see ([`AnswerTable::peek`]).
#[derive(Debug)]
pub(crate) enum Peek {
    Positive(Parsed),
    Negative(ResponseCode),
    /// Failing, or in flight for longer than [`SLOW_AFTER`].
    Failing,
    /// Not known (absent, expired or in flight): ask the front.
    Unknown,
}

/// Counts of what the table did, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DnsCounts {
    /// Upstream queries started (each may make several attempts).
    pub queries: u64,
    /// Questions answered from a settled entry (positive or negative), by the
    /// front or by mail-auth's cache hook.
    pub cached: u64,
    /// Questions answered as failing at once (the front's `SERVFAIL`, the cache
    /// hook's resolver error): a failing name, or one in flight for longer than
    /// [`SLOW_AFTER`].
    pub failing: u64,
    /// Questions that waited on a query another asker started.
    pub joined: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    cached: AtomicU64,
    failing: AtomicU64,
    joined: AtomicU64,
}

/// The shared answers: a map per record type. See the module docs.
#[derive(Debug)]
pub struct AnswerTable {
    maps: [Mutex<HashMap<Box<str>, Slot>>; 5],
    counts: Counters,
}

impl Default for AnswerTable {
    fn default() -> Self {
        Self { maps: std::array::from_fn(|_| Mutex::default()), counts: Counters::default() }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn clamp_ttl(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.clamp(min, max)
}

impl AnswerTable {
    /// What has happened so far.
    pub fn counts(&self) -> DnsCounts {
        let c = &self.counts;
        DnsCounts {
            queries: c.queries.load(Ordering::Relaxed),
            cached: c.cached.load(Ordering::Relaxed),
            failing: c.failing.load(Ordering::Relaxed),
            joined: c.joined.load(Ordering::Relaxed),
        }
    }

    fn count(&self, counter: impl FnOnce(&Counters) -> &AtomicU64) {
        counter(&self.counts).fetch_add(1, Ordering::Relaxed);
    }

    /// The front's question: `name` is lowercase with the trailing dot.
    pub(crate) fn ask(&self, rtype: Rtype, name: &str, now: Instant) -> Ask {
        let mut map = lock(&self.maps[rtype.index()]);
        match map.get_mut(name) {
            Some(Slot::Known { known, expires }) if *expires > now => {
                let ttl = u32::try_from((*expires - now).as_secs().max(1)).unwrap_or(u32::MAX);
                let known = Arc::clone(known);
                drop(map);
                self.count(|c| &c.cached);
                return Ask::Known { known, ttl };
            }
            Some(Slot::Pending { since, done }) if !abandoned(done) => {
                let slow = now.duration_since(*since) >= SLOW_AFTER;
                let done = done.clone();
                drop(map);
                if slow {
                    self.count(|c| &c.failing);
                    metrics::counter!("agentkeys_verdict_dns_failing_answers_total").increment(1);
                    return Ask::Failing;
                }
                self.count(|c| &c.joined);
                return Ask::Wait(done);
            }
            Some(Slot::Failing { until, probing }) => {
                let probe = !*probing && *until <= now;
                if probe {
                    // Askers keep getting the failure while the probe runs.
                    *probing = true;
                    *until = now + UPSTREAM_ATTEMPTS.iter().sum::<Duration>();
                }
                drop(map);
                self.count(|c| &c.failing);
                if probe {
                    self.count(|c| &c.queries);
                }
                metrics::counter!("agentkeys_verdict_dns_failing_answers_total").increment(1);
                if probe {
                    let (done, _) = watch::channel(());
                    return Ask::Query { done, wait: None };
                }
                return Ask::Failing;
            }
            Some(Slot::Known { .. } | Slot::Pending { .. }) | None => {}
        }
        if map.len() >= MAX_NAMES && !map.contains_key(name) {
            evict(&mut map, now);
        }
        let (done, wait) = watch::channel(());
        map.insert(name.into(), Slot::Pending { since: now, done: wait.clone() });
        drop(map);
        self.count(|c| &c.queries);
        Ask::Query { done, wait: Some(wait) }
    }

    /// Like [`AnswerTable::ask`], but only to start a query for a name nobody asked
    /// yet (or whose answer expired): the sender of the new query, which the
    /// caller runs; `None` when the name is known, failing or already asked.
    pub(crate) fn start_query(&self, rtype: Rtype, name: &str, now: Instant) -> Option<watch::Sender<()>> {
        let mut map = lock(&self.maps[rtype.index()]);
        if map.get(name).is_some_and(|slot| !slot.stale(now) || matches!(slot, Slot::Failing { .. })) {
            return None;
        }
        if map.len() >= MAX_NAMES && !map.contains_key(name) {
            evict(&mut map, now);
        }
        let (done, wait) = watch::channel(());
        map.insert(name.into(), Slot::Pending { since: now, done: wait });
        drop(map);
        self.count(|c| &c.queries);
        Some(done)
    }

    /// Records what the upstream said about `name`. The caller drops the query's
    /// sender afterwards, which wakes the askers waiting on it.
    pub(crate) fn settle(&self, rtype: Rtype, name: &str, outcome: Outcome, now: Instant) {
        let slot = match outcome {
            Outcome::Records(records) => {
                let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(0);
                let ttl = clamp_ttl(Duration::from_secs(ttl.into()), POSITIVE_TTL_MIN, POSITIVE_TTL_MAX);
                let parsed = Parsed::new(rtype, &records);
                let known = Known::Positive { records: records.into(), parsed };
                metrics::counter!("agentkeys_verdict_dns_upstream_total", "result" => "answer").increment(1);
                Slot::Known { known: Arc::new(known), expires: now + ttl }
            }
            Outcome::NotFound { code, soa, negative_ttl } => {
                let ttl = Duration::from_secs(negative_ttl.unwrap_or(0).into());
                let ttl = clamp_ttl(ttl, NEGATIVE_TTL_MIN, NEGATIVE_TTL_MAX);
                metrics::counter!("agentkeys_verdict_dns_upstream_total", "result" => "negative").increment(1);
                Slot::Known { known: Arc::new(Known::Negative { code, soa }), expires: now + ttl }
            }
            Outcome::Failed(reason) => {
                metrics::counter!("agentkeys_verdict_dns_upstream_total", "result" => "failed").increment(1);
                tracing::warn!(
                    %name, record_type = %rtype.record_type(), %reason, for_ = ?FAILURE_TTL,
                    "DNS lookup failed; answering temperror for this name without asking again for a while"
                );
                Slot::Failing { until: now + FAILURE_TTL, probing: false }
            }
        };
        let mut map = lock(&self.maps[rtype.index()]);
        if map.len() >= MAX_NAMES && !map.contains_key(name) {
            evict(&mut map, now);
        }
        map.insert(name.into(), slot);
    }

    /// mail-auth's cache question: never waits, never starts a query.
    pub(crate) fn peek<Q>(&self, rtype: Rtype, name: &Q, now: Instant) -> Peek
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = lock(&self.maps[rtype.index()]);
        let peek = match map.get(name) {
            Some(Slot::Known { known, expires }) if *expires > now => match &**known {
                Known::Positive { parsed, .. } => Peek::Positive(parsed.clone()),
                Known::Negative { code, .. } => Peek::Negative(*code),
            },
            Some(Slot::Failing { until, probing }) if *probing || *until > now => Peek::Failing,
            Some(Slot::Pending { since, done }) if !abandoned(done) && now.duration_since(*since) >= SLOW_AFTER => {
                Peek::Failing
            }
            _ => Peek::Unknown,
        };
        drop(map);
        match peek {
            Peek::Positive(_) | Peek::Negative(_) => self.count(|c| &c.cached),
            Peek::Failing => {
                self.count(|c| &c.failing);
                metrics::counter!("agentkeys_verdict_dns_failing_answers_total").increment(1);
            }
            Peek::Unknown => {}
        }
        peek
    }

    /// Entries kept, all types together.
    pub fn len(&self) -> usize {
        Rtype::ALL.iter().map(|t| lock(&self.maps[t.index()]).len()).sum()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room in a full map: expired entries first; if that is not enough,
/// arbitrary settled ones down to 90 % of [`MAX_NAMES`].
fn evict(map: &mut HashMap<Box<str>, Slot>, now: Instant) {
    map.retain(|_, slot| !slot.stale(now));
    if map.len() >= MAX_NAMES {
        let excess = map.len() - MAX_NAMES * 9 / 10;
        let victims: Vec<Box<str>> = map
            .iter()
            .filter(|(_, slot)| !matches!(slot, Slot::Pending { .. }))
            .map(|(name, _)| name.clone())
            .take(excess)
            .collect();
        for name in victims {
            map.remove(&name);
        }
    }
}

/// Runs one upstream query for `name` with [`UPSTREAM_ATTEMPTS`] and settles it.
/// Only timeouts are tried again: an answer, a negative answer and an explicit
/// failure (`SERVFAIL`, `REFUSED`) end the query.
pub(crate) async fn run_query(
    table: &AnswerTable,
    upstream: &dyn Upstream,
    rtype: Rtype,
    name: &str,
    done: watch::Sender<()>,
) {
    let mut outcome = Outcome::Failed("no attempt".into());
    for (i, limit) in UPSTREAM_ATTEMPTS.iter().enumerate() {
        match tokio::time::timeout(*limit, upstream.query(name, rtype)).await {
            Ok(answer) => {
                outcome = answer;
                break;
            }
            Err(_) => outcome = Outcome::Failed(format!("no answer in {} attempts", i + 1)),
        }
    }
    table.settle(rtype, name, outcome, Instant::now());
    drop(done);
}

/// The answers and the front together: what [`crate::MailAuthVerifier`] owns.
pub(crate) struct VerdictDns {
    state: FrontState,
    front: DnsFront,
}

impl VerdictDns {
    /// Starts the front (needs a Tokio runtime) over `upstream`.
    pub(crate) fn start(upstream: Arc<dyn Upstream>) -> io::Result<Self> {
        let state = FrontState { table: Arc::new(AnswerTable::default()), upstream };
        let front = DnsFront::start(state.clone())?;
        Ok(Self { state, front })
    }

    /// The shared answers.
    pub(crate) fn table(&self) -> &AnswerTable {
        &self.state.table
    }

    /// Starts the upstream query for `name` (lowercase, trailing dot) unless it is
    /// known or already asked, without waiting for it: a message asks for the
    /// names it will need at its start, so a check that comes later (DMARC after
    /// DKIM and SPF, SPF's MAIL FROM after its HELO) finds them answered or
    /// failing instead of starting its own wait.
    pub(crate) fn prefetch(&self, rtype: Rtype, name: &str) {
        if let Some(done) = self.state.table.start_query(rtype, name, Instant::now()) {
            let state = self.state.clone();
            let name = name.to_owned();
            tokio::spawn(async move { run_query(&state.table, &*state.upstream, rtype, &name, done).await });
        }
    }

    /// The resolver configuration that sends every query to the front.
    pub(crate) fn front_config(&self) -> ResolverConfig {
        ResolverConfig::from_parts(None, Vec::new(), vec![name_server(self.front.addr)])
    }
}

/// A name server at `addr`, over UDP and TCP on the same port (hickory's own
/// constructors assume port 53).
pub fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
    server.connections = vec![udp, tcp];
    server
}

/// The loopback DNS server in front of the upstream name servers. See the module
/// docs. Its tasks stop when it is dropped (queries in flight finish and settle).
pub(crate) struct DnsFront {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsFront {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct FrontState {
    table: Arc<AnswerTable>,
    upstream: Arc<dyn Upstream>,
}

impl DnsFront {
    fn start(state: FrontState) -> io::Result<Self> {
        let (udp, tcp) = bind_loopback_pair()?;
        let addr = udp.local_addr()?;
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tcp = TcpListener::from_std(tcp)?;
        let udp_task = tokio::spawn(serve_udp(udp, state.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, state));
        Ok(Self { addr, tasks: vec![udp_task, tcp_task] })
    }
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1.
fn bind_loopback_pair() -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no port free for both UDP and TCP");
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        match std::net::TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => {
                udp.set_nonblocking(true)?;
                tcp.set_nonblocking(true)?;
                return Ok((udp, tcp));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn serve_udp(socket: Arc<UdpSocket>, state: FrontState) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else { continue };
        let Ok(request) = Message::from_vec(&buf[..n]) else { continue };
        let socket = Arc::clone(&socket);
        let state = state.clone();
        tokio::spawn(async move {
            let response = state.answer(&request).await;
            let max = request
                .edns
                .as_ref()
                .map_or(512, |e| usize::from(e.max_payload().clamp(512, FRONT_MAX_UDP_PAYLOAD)));
            let Ok(mut bytes) = response.to_vec() else { return };
            if bytes.len() > max {
                let Ok(truncated) = response.truncate().to_vec() else { return };
                bytes = truncated;
            }
            let _ = socket.send_to(&bytes, peer).await;
        });
    }
}

async fn serve_tcp(listener: TcpListener, state: FrontState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(serve_tcp_connection(stream, state.clone()));
    }
}

/// Length-prefixed messages (RFC 1035 §4.2.2), one at a time, until the client
/// closes or stays idle for [`FRONT_TCP_IDLE`].
async fn serve_tcp_connection(mut stream: TcpStream, state: FrontState) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(FRONT_TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut packet).await.is_err() {
            return;
        }
        let Ok(request) = Message::from_vec(&packet) else { return };
        let Ok(bytes) = state.answer(&request).await.to_vec() else { return };
        let Ok(len) = u16::try_from(bytes.len()) else { return };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

impl FrontState {
    /// The answer to one DNS request.
    async fn answer(&self, request: &Message) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(FRONT_MAX_UDP_PAYLOAD);
            response.set_edns(edns);
        }
        let query = match (request.metadata.message_type, request.metadata.op_code, request.queries.as_slice()) {
            (MessageType::Query, OpCode::Query, [query]) => query.clone(),
            _ => {
                response.metadata.response_code = ResponseCode::FormErr;
                return response;
            }
        };
        response.add_query(query.clone());
        let Some(rtype) = Rtype::of(query.query_type()).filter(|_| query.query_class() == DNSClass::IN) else {
            // mail-auth asks for nothing else.
            response.metadata.response_code = ResponseCode::Refused;
            return response;
        };
        let name = query.name().to_lowercase().to_ascii();
        loop {
            let mut wait = match self.table.ask(rtype, &name, Instant::now()) {
                Ask::Known { known, ttl } => {
                    match &*known {
                        Known::Positive { records, .. } => {
                            response.add_answers(records.iter().map(|r| capped(r, ttl)));
                        }
                        Known::Negative { code, soa } => {
                            response.metadata.response_code = *code;
                            if let Some(soa) = soa {
                                response.add_authority(capped(soa, ttl));
                            }
                        }
                    }
                    return response;
                }
                Ask::Failing => {
                    response.metadata.response_code = ResponseCode::ServFail;
                    return response;
                }
                Ask::Wait(wait) => wait,
                Ask::Query { done, wait } => {
                    let state = self.clone();
                    let query_name = name.clone();
                    tokio::spawn(async move {
                        run_query(&state.table, &*state.upstream, rtype, &query_name, done).await;
                    });
                    match wait {
                        Some(wait) => wait,
                        None => {
                            response.metadata.response_code = ResponseCode::ServFail;
                            return response;
                        }
                    }
                }
            };
            // Err when the query's task dropped its sender: the slot is settled.
            let _ = wait.changed().await;
        }
    }
}

/// `record` with its TTL at most `ttl`.
fn capped(record: &Record, ttl: u32) -> Record {
    let mut record = record.clone();
    record.ttl = record.ttl.min(ttl);
    record
}

/// mail-auth's TXT cache over the table, for one kind of record (each check
/// asks for one). `insert` is ignored: the front fills the table.
pub(crate) struct TxtCache<'a> {
    pub(crate) table: &'a AnswerTable,
    pub(crate) kind: TxtKind,
}

impl ResolverCache<Box<str>, Txt> for TxtCache<'_> {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.table.peek(Rtype::Txt, name, Instant::now()) {
            Peek::Positive(Parsed::Txt(answer)) => Some(answer.parsed(self.kind)),
            Peek::Negative(code) => Some(Txt::Error(AuthError::Dns(DnsError::RecordNotFound(code)))),
            Peek::Failing => Some(Txt::Error(failing())),
            Peek::Positive(_) | Peek::Unknown => None,
        }
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// The error mail-auth gets for a failing name: a resolver error, which every
/// check turns into `temperror`.
pub(crate) fn failing() -> AuthError {
    AuthError::Dns(DnsError::Resolver("lookups for this name are failing".to_owned()))
}

/// mail-auth's A, AAAA and MX caches over the table: positive answers only; a
/// negative or failing name goes to the front, which answers it at once with the
/// exact response code mail-auth's rules need.
pub(crate) struct RecordCache<'a>(pub(crate) &'a AnswerTable);

macro_rules! record_cache {
    ($value:ty, $rtype:expr, $variant:ident) => {
        impl ResolverCache<Box<str>, RecordSet<$value>> for RecordCache<'_> {
            fn get<Q>(&self, name: &Q) -> Option<RecordSet<$value>>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                match self.0.peek($rtype, name, Instant::now()) {
                    Peek::Positive(Parsed::$variant(set)) => Some(set),
                    _ => None,
                }
            }

            fn remove<Q>(&self, _: &Q) -> Option<RecordSet<$value>>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                None
            }

            fn insert(&self, _: Box<str>, _: RecordSet<$value>, _: std::time::Instant) {}
        }
    };
}

record_cache!(Ipv4Addr, Rtype::A, A);
record_cache!(Ipv6Addr, Rtype::Aaaa, Aaaa);
record_cache!(MX, Rtype::Mx, Mx);

#[cfg(test)]
#[path = "verdict_dns_tests.rs"]
mod tests;

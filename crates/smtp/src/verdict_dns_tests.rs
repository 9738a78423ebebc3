//! The answer table's rules with explicit instants (no I/O), the upstream
//! attempts on a paused clock with an in-memory upstream, and the front against a
//! real resolver client.

use std::collections::HashMap as Map;
use std::sync::atomic::AtomicUsize;

use hickory_resolver::proto::rr::rdata::{A, MX as MxData, SOA, TXT};

use super::*;

fn txt_record(name: &str, ttl: u32, strings: &[&str]) -> Record {
    let name = Name::from_ascii(name).unwrap();
    Record::from_rdata(name, ttl, RData::TXT(TXT::new(strings.iter().map(|s| (*s).to_owned()).collect())))
}

fn a_record(name: &str, ttl: u32) -> Record {
    Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
}

fn soa(ttl: u32, minimum: u32) -> Record {
    let zone = Name::from_ascii("example.").unwrap();
    Record::from_rdata(zone.clone(), ttl, RData::SOA(SOA::new(zone.clone(), zone, 1, 3600, 600, 86400, minimum)))
}

fn start_query(table: &AnswerTable, name: &str, now: Instant) -> watch::Sender<()> {
    match table.ask(Rtype::Txt, name, now) {
        Ask::Query { done, wait: Some(_) } => done,
        other => panic!("expected a new query, got {other:?}"),
    }
}

// ----- the table ----------------------------------------------------------------

#[test]
fn concurrent_askers_share_one_query_and_the_answer() {
    let table = AnswerTable::default();
    let t0 = Instant::now();
    let done = start_query(&table, "a.example.", t0);
    for i in 1..20u32 {
        assert!(matches!(table.ask(Rtype::Txt, "a.example.", t0 + Duration::from_millis(i.into())), Ask::Wait(_)));
    }
    assert!(matches!(table.peek(Rtype::Txt, "a.example.", t0), Peek::Unknown), "the cache hook never waits");
    table.settle(Rtype::Txt, "a.example.", Outcome::Records(vec![txt_record("a.example.", 300, &["v=spf1 -all"])]), t0);
    drop(done);
    assert!(matches!(table.ask(Rtype::Txt, "a.example.", t0), Ask::Known { .. }));
    assert!(matches!(table.peek(Rtype::Txt, "a.example.", t0), Peek::Positive(Parsed::Txt(_))));
    assert_eq!(table.counts(), DnsCounts { queries: 1, cached: 2, failing: 0, joined: 19 });
}

#[test]
fn a_query_in_flight_past_slow_after_is_answered_as_failing() {
    let table = AnswerTable::default();
    let t0 = Instant::now();
    let _done = start_query(&table, "slow.example.", t0);
    let just_before = t0 + SLOW_AFTER - Duration::from_millis(1);
    assert!(matches!(table.ask(Rtype::Txt, "slow.example.", just_before), Ask::Wait(_)));
    assert!(matches!(table.peek(Rtype::Txt, "slow.example.", just_before), Peek::Unknown));
    assert!(matches!(table.ask(Rtype::Txt, "slow.example.", t0 + SLOW_AFTER), Ask::Failing));
    assert!(matches!(table.peek(Rtype::Txt, "slow.example.", t0 + SLOW_AFTER), Peek::Failing));
    // The late answer, when it comes, is kept for the next message.
    table.settle(Rtype::Txt, "slow.example.", Outcome::Records(vec![a_record("slow.example.", 60)]), t0 + SLOW_AFTER * 3);
    assert!(matches!(table.peek(Rtype::Txt, "slow.example.", t0 + SLOW_AFTER * 3), Peek::Positive(_)));
}

/// Every TTL, however small or large, keeps a positive answer for exactly
/// clamp(TTL, POSITIVE_TTL_MIN, POSITIVE_TTL_MAX); the smallest TTL of the set counts.
#[test]
fn positive_answers_live_for_their_clamped_ttl() {
    let ttls = [0u32, 1, 4, 5, 6, 59, 60, 301, 3599, 3600, 3601, 86_400, u32::MAX];
    for ttl in ttls {
        for other in [ttl, ttl.saturating_add(100)] {
            let table = AnswerTable::default();
            let t0 = Instant::now();
            let records = vec![a_record("h.example.", other), a_record("h.example.", ttl)];
            table.settle(Rtype::A, "h.example.", Outcome::Records(records), t0);
            let life = Duration::from_secs(ttl.into()).clamp(POSITIVE_TTL_MIN, POSITIVE_TTL_MAX);
            let before = t0 + life - Duration::from_millis(1);
            assert!(matches!(table.peek(Rtype::A, "h.example.", before), Peek::Positive(Parsed::A(_))), "ttl {ttl}");
            assert!(matches!(table.peek(Rtype::A, "h.example.", t0 + life), Peek::Unknown), "ttl {ttl}");
            assert!(matches!(table.ask(Rtype::A, "h.example.", t0 + life), Ask::Query { wait: Some(_), .. }), "ttl {ttl}");
        }
    }
}

/// Negative answers live for the SOA's negative TTL within the bounds, and for
/// the floor without an SOA.
#[test]
fn negative_answers_live_for_the_soa_ttl_or_the_floor() {
    let cases: Vec<Option<u32>> = vec![None, Some(0), Some(1), Some(29), Some(30), Some(31), Some(600), Some(899), Some(900), Some(901), Some(u32::MAX)];
    for negative_ttl in cases {
        for code in [ResponseCode::NXDomain, ResponseCode::NoError] {
            let table = AnswerTable::default();
            let t0 = Instant::now();
            let soa = negative_ttl.map(|ttl| Box::new(soa(ttl, ttl)));
            table.settle(Rtype::Txt, "_dmarc.example.", Outcome::NotFound { code, soa, negative_ttl }, t0);
            let life = Duration::from_secs(negative_ttl.unwrap_or(0).into()).clamp(NEGATIVE_TTL_MIN, NEGATIVE_TTL_MAX);
            let before = t0 + life - Duration::from_millis(1);
            match table.peek(Rtype::Txt, "_dmarc.example.", before) {
                Peek::Negative(got) => assert_eq!(got, code),
                other => panic!("{negative_ttl:?}: {other:?}"),
            }
            assert!(matches!(table.peek(Rtype::Txt, "_dmarc.example.", t0 + life), Peek::Unknown), "{negative_ttl:?}");
            match table.ask(Rtype::Txt, "_dmarc.example.", before) {
                Ask::Known { known, ttl } => {
                    assert!(matches!(&*known, Known::Negative { code: c, .. } if *c == code));
                    assert!(u64::from(ttl) <= life.as_secs().max(1));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn a_failed_name_answers_failing_at_once_then_probes_once_in_the_background() {
    let table = AnswerTable::default();
    let t0 = Instant::now();
    let done = start_query(&table, "down.example.", t0);
    table.settle(Rtype::Txt, "down.example.", Outcome::Failed("timed out".into()), t0);
    drop(done);
    let queries = table.counts().queries;
    // Within FAILURE_TTL: the failure, no query.
    for ms in [0u64, 1, 1000, 29_999] {
        let at = t0 + Duration::from_millis(ms);
        assert!(matches!(table.ask(Rtype::Txt, "down.example.", at), Ask::Failing), "{ms} ms");
        assert!(matches!(table.peek(Rtype::Txt, "down.example.", at), Peek::Failing), "{ms} ms");
    }
    assert_eq!(table.counts().queries, queries, "no query while the name is known to fail");
    // Then exactly one background probe; askers still get the failure meanwhile.
    let at = t0 + FAILURE_TTL;
    let probe = match table.ask(Rtype::Txt, "down.example.", at) {
        Ask::Query { done, wait: None } => done,
        other => panic!("expected a background probe, got {other:?}"),
    };
    assert!(matches!(table.ask(Rtype::Txt, "down.example.", at), Ask::Failing));
    assert!(matches!(table.peek(Rtype::Txt, "down.example.", at + FAILURE_TTL), Peek::Failing), "probing");
    assert_eq!(table.counts().queries, queries + 1);
    // A failed probe: failing for another FAILURE_TTL.
    table.settle(Rtype::Txt, "down.example.", Outcome::Failed("timed out".into()), at);
    drop(probe);
    assert!(matches!(table.ask(Rtype::Txt, "down.example.", at + FAILURE_TTL - Duration::from_millis(1)), Ask::Failing));
    // A successful one: answered from then on.
    let at = at + FAILURE_TTL;
    let Ask::Query { done, wait: None } = table.ask(Rtype::Txt, "down.example.", at) else { panic!() };
    table.settle(Rtype::Txt, "down.example.", Outcome::Records(vec![txt_record("down.example.", 60, &["v=spf1 -all"])]), at);
    drop(done);
    assert!(matches!(table.peek(Rtype::Txt, "down.example.", at), Peek::Positive(_)));
}

#[test]
fn the_table_stays_bounded_and_keeps_queries_in_flight() {
    let table = AnswerTable::default();
    let t0 = Instant::now();
    let mut in_flight = Vec::new();
    for i in 0..10 {
        in_flight.push(start_query(&table, &format!("pending{i}.example."), t0));
    }
    for i in 0..MAX_NAMES + 500 {
        table.settle(Rtype::Txt, &format!("n{i}.example."), Outcome::Records(vec![a_record("x.", 600)]), t0);
        assert!(table.len() <= MAX_NAMES, "{} entries after {i}", table.len());
    }
    for i in 0..10 {
        assert!(matches!(table.ask(Rtype::Txt, &format!("pending{i}.example."), t0), Ask::Wait(_)), "pending{i} kept");
    }
    // Once full again, expired entries go first: every one of the old ones.
    let later = t0 + POSITIVE_TTL_MAX;
    for i in 0..=MAX_NAMES - table.len() {
        table.settle(Rtype::Txt, &format!("fresh{i}.example."), Outcome::Records(vec![a_record("x.", 600)]), later);
    }
    assert!(table.len() < MAX_NAMES / 2, "expired entries were dropped: {}", table.len());
    for i in 0..10 {
        assert!(matches!(table.ask(Rtype::Txt, &format!("pending{i}.example."), later), Ask::Wait(_) | Ask::Failing));
    }
    drop(in_flight);
}

#[test]
fn txt_records_are_parsed_per_kind_like_mail_auth() {
    let records = vec![
        txt_record("example.", 60, &["google-site-verification=abc"]),
        txt_record("example.", 60, &["v=spf1 ip4:192.0.2.0/24 ", "-all"]),
    ];
    let answer = TxtAnswer::new(&records);
    match answer.parsed(TxtKind::Spf) {
        Txt::Spf(spf) => assert!(!spf.directives.is_empty(), "joined character-strings: {spf:?}"),
        _ => panic!("not an SPF record"),
    }
    assert!(matches!(answer.parsed(TxtKind::Dmarc), Txt::Error(_)), "no DMARC record among them");
    assert!(matches!(TxtAnswer::new(&[]).parsed(TxtKind::Spf), Txt::Error(AuthError::Dns(DnsError::InvalidRecordType))));
}

#[test]
fn mx_answers_are_grouped_by_preference() {
    let name = |n: &str| Name::from_ascii(n).unwrap();
    let mx = |pref, host: &str| Record::from_rdata(name("example."), 60, RData::MX(MxData::new(pref, name(host))));
    let Parsed::Mx(set) = Parsed::new(Rtype::Mx, &[mx(20, "B.example."), mx(10, "a.example."), mx(20, "c.example.")]) else {
        panic!()
    };
    let got: Vec<(u16, Vec<&str>)> =
        set.rrset.iter().map(|m| (m.preference, m.exchanges.iter().map(|e| &**e).collect())).collect();
    assert_eq!(got, [(10, vec!["a.example."]), (20, vec!["b.example.", "c.example."])]);
}

// ----- the upstream attempts (paused clock, in-memory upstream) -------------------

/// An upstream that answers after a per-call delay (`None`: never).
struct Scripted {
    calls: AtomicUsize,
    delays: Vec<Option<Duration>>,
}

#[async_trait]
impl Upstream for Scripted {
    async fn query(&self, name: &str, _: Rtype) -> Outcome {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        match self.delays.get(call).copied().flatten() {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                Outcome::Records(vec![txt_record(name, 60, &["v=spf1 -all"])])
            }
            None => std::future::pending().await,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_upstream_is_asked_once_per_attempt_then_the_name_fails() {
    let table = AnswerTable::default();
    let upstream = Scripted { calls: AtomicUsize::new(0), delays: vec![] };
    let t0 = Instant::now();
    let done = start_query(&table, "silent.example.", t0);
    run_query(&table, &upstream, Rtype::Txt, "silent.example.", done).await;
    assert_eq!(upstream.calls.load(Ordering::SeqCst), UPSTREAM_ATTEMPTS.len());
    assert_eq!(t0.elapsed(), UPSTREAM_ATTEMPTS.iter().sum::<Duration>(), "each attempt waited its own timeout");
    assert!(matches!(table.peek(Rtype::Txt, "silent.example.", Instant::now()), Peek::Failing));
}

#[tokio::test(start_paused = true)]
async fn a_lost_packet_is_asked_again_and_answered_within_one_budget() {
    let table = AnswerTable::default();
    // First attempt lost, the second answers after 1 ms.
    let upstream = Scripted { calls: AtomicUsize::new(0), delays: vec![None, Some(Duration::from_millis(1))] };
    let t0 = Instant::now();
    let done = start_query(&table, "lossy.example.", t0);
    run_query(&table, &upstream, Rtype::Txt, "lossy.example.", done).await;
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 2);
    assert!(t0.elapsed() < SLOW_AFTER, "answered within the budget: {:?}", t0.elapsed());
    assert!(matches!(table.peek(Rtype::Txt, "lossy.example.", Instant::now()), Peek::Positive(_)));
}

// ----- the front, over real sockets -------------------------------------------------

/// An upstream serving fixed outcomes and counting calls per name.
#[derive(Default)]
struct Fixed {
    outcomes: Map<String, Outcome>,
    calls: Mutex<Map<String, usize>>,
}

#[async_trait]
impl Upstream for Fixed {
    async fn query(&self, name: &str, _: Rtype) -> Outcome {
        *lock(&self.calls).entry(name.to_owned()).or_default() += 1;
        match self.outcomes.get(name) {
            Some(outcome) => outcome.clone(),
            None => std::future::pending().await,
        }
    }
}

fn client(dns: &VerdictDns) -> TokioResolver {
    let mut options = hickory_resolver::config::ResolverOpts::default();
    options.cache_size = 0;
    options.attempts = 1;
    options.timeout = Duration::from_secs(5);
    TokioResolver::builder_with_config(dns.front_config(), hickory_resolver::net::runtime::TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_front_answers_like_a_name_server_and_asks_upstream_once() {
    let big = "x".repeat(200);
    let outcomes = Map::from([
        ("ok.example.".to_owned(), Outcome::Records(vec![txt_record("ok.example.", 60, &[&big, &big, &big])])),
        (
            "none.example.".to_owned(),
            Outcome::NotFound { code: ResponseCode::NXDomain, soa: Some(Box::new(soa(600, 600))), negative_ttl: Some(600) },
        ),
        ("broken.example.".to_owned(), Outcome::Failed("SERVFAIL".into())),
    ]);
    let upstream = Arc::new(Fixed { outcomes, ..Fixed::default() });
    let dns = VerdictDns::start(upstream.clone()).unwrap();
    let client = client(&dns);
    for _ in 0..3 {
        let lookup = client.txt_lookup("ok.example.").await.unwrap();
        let RData::TXT(txt) = &lookup.answers()[0].data else { panic!("{lookup:?}") };
        let text: Vec<u8> = txt.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(text.len(), 600, "a 600-byte record in three strings, over UDP with EDNS or TCP");
        let err = client.txt_lookup("none.example.").await.unwrap_err();
        assert!(err.is_no_records_found(), "{err}");
        let err = client.txt_lookup("broken.example.").await.unwrap_err();
        assert!(!err.is_no_records_found(), "a failure, not a negative answer: {err}");
    }
    let calls = lock(&upstream.calls).clone();
    assert_eq!(calls.get("ok.example."), Some(&1), "{calls:?}");
    assert_eq!(calls.get("none.example."), Some(&1), "{calls:?}");
    assert_eq!(calls.get("broken.example."), Some(&1), "failing: not asked again: {calls:?}");
    assert!(matches!(
        client.lookup("ok.example.", RecordType::NS).await,
        Err(e) if !e.is_no_records_found()
    ), "other types are refused");
}

#[tokio::test]
async fn many_clients_asking_a_silent_name_make_one_upstream_query() {
    let upstream = Arc::new(Fixed::default());
    let dns = VerdictDns::start(upstream.clone()).unwrap();
    let client = client(&dns);
    let asks = (0..20).map(|_| {
        let client = client.clone();
        async move { tokio::time::timeout(SLOW_AFTER * 2, client.txt_lookup("silent.example.")).await }
    });
    let results = futures_join_all(asks).await;
    assert!(results.iter().all(|r| !matches!(r, Ok(Ok(_)))), "no answer for anyone");
    assert_eq!(dns.table().counts().queries, 1, "one query in flight, shared: {:?}", dns.table().counts());
    let attempts = *lock(&upstream.calls).get("silent.example.").unwrap();
    assert!((1..=UPSTREAM_ATTEMPTS.len()).contains(&attempts), "{attempts} attempts");
    // Past SLOW_AFTER a new asker is answered at once (SERVFAIL), without another query.
    let err = client.txt_lookup("silent.example.").await.unwrap_err();
    assert!(!err.is_no_records_found(), "{err}");
    assert_eq!(dns.table().counts().queries, 1);
}

/// `join_all` without the futures crate: the answers in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}


#[test]
fn a_query_that_ended_without_an_answer_does_not_leave_the_name_stuck() {
    let table = AnswerTable::default();
    let t0 = Instant::now();
    drop(start_query(&table, "lost.example.", t0)); // its task was cancelled
    assert!(matches!(table.peek(Rtype::Txt, "lost.example.", t0 + SLOW_AFTER), Peek::Unknown));
    assert!(matches!(table.ask(Rtype::Txt, "lost.example.", t0), Ask::Query { wait: Some(_), .. }), "asked again");
}

#[test]
fn prefetch_starts_a_query_only_for_unknown_or_expired_names() {
    let table = AnswerTable::default();
    let t0 = Instant::now();
    let first = table.start_query(Rtype::Txt, "p.example.", t0);
    assert!(first.is_some());
    assert!(table.start_query(Rtype::Txt, "p.example.", t0).is_none(), "in flight");
    table.settle(Rtype::Txt, "p.example.", Outcome::Records(vec![a_record("p.example.", 60)]), t0);
    drop(first);
    assert!(table.start_query(Rtype::Txt, "p.example.", t0).is_none(), "known");
    assert!(table.start_query(Rtype::Txt, "p.example.", t0 + Duration::from_secs(60)).is_some(), "expired");
    table.settle(Rtype::Txt, "f.example.", Outcome::Failed("x".into()), t0);
    assert!(table.start_query(Rtype::Txt, "f.example.", t0 + FAILURE_TTL * 2).is_none(), "failing: only the front probes");
    assert_eq!(table.counts().queries, 2);
}

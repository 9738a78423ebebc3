//! Search latency at scale (issue 13 §4: "under 50 ms p99 at 100,000
//! messages"), on the embedded default: SQLite with FTS5.
//!
//! ```text
//! cargo run -p agentkeys-store --example search_latency -- [options]
//!   -n N          messages in the bench inbox (default 100000)
//!   --other N     messages in other inboxes and of another owner (default N/10)
//!   -q Q          timed queries per kind (default 200)
//!   --peer-q Q    timed queries of the LIKE-scan peer (default 20)
//!   --dir PATH    where to create the database (default the temp dir)
//!   --postgres URL  PostgreSQL instead (needs `--features postgres`): a
//!                 database of its own on that server, dropped at the end;
//!                 no LIKE peer
//!   --explain     print each kind's plan for one query (SQLite `EXPLAIN
//!                 QUERY PLAN`, PostgreSQL `EXPLAIN (ANALYZE, BUFFERS)`)
//! ```
//!
//! Fills a file-backed `SqliteStore` through its real insert path
//! (`MessageIndex::index_messages`, batches of `MAX_INDEX_BATCH`, facts taken
//! by `HeaderSummary::of_message` + `MessageFacts::of_message` from generated
//! MIME messages, as the Mailroom does), then times `search_messages` (page of
//! 50, as the API asks for 51) for several kinds of query, and two peers in
//! the same run on the same database:
//!
//! - **listing**: `list_messages`, one page of 50 (the index's range scan:
//!   the cheapest read there is);
//! - **LIKE scan**: the same text query answered without a full-text index, by
//!   `LIKE '%word%'` over a table holding each message's decoded body text
//!   (filled once from the same generated bodies), newest 50 first.
//!
//! Prints one line per kind: p50, p99, max (ms) and the mean number of hits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentkeys_core::{Address, OwnerId};
use agentkeys_store::roles::MessageIndex;
use agentkeys_store::{
    HeaderSummary, ListOrder, MAX_INDEX_BATCH, MessageFacts, NewMessage, PageQuery, SearchQuery, SqliteStore,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ulid::Ulid;

const PAGE: u32 = 51;

struct Options {
    n: usize,
    other: Option<usize>,
    queries: usize,
    peer_queries: usize,
    dir: PathBuf,
    postgres: Option<String>,
    explain: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        n: 100_000,
        other: None,
        queries: 200,
        peer_queries: 20,
        dir: std::env::temp_dir(),
        postgres: None,
        explain: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--explain" {
            o.explain = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().map_err(|_| format!("{flag}: {value:?} is not a number"));
        match flag.as_str() {
            "-n" => o.n = num()?,
            "--other" => o.other = Some(num()?),
            "-q" => o.queries = num()?,
            "--peer-q" => o.peer_queries = num()?,
            "--dir" => o.dir = PathBuf::from(&value),
            "--postgres" => o.postgres = Some(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// A vocabulary of made-up words; word `i` is drawn with weight ~ 1/(i+1)
/// (Zipf-like, as in natural text), so word 0 is in most messages and word
/// 4000 in a few.
struct Vocabulary {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Vocabulary {
    fn new(size: usize) -> Self {
        let syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "xi", "ze", "pa", "qu", "sho"];
        let words = (0..size)
            .map(|i| {
                let mut w = String::new();
                let mut n = i + 12;
                while n > 0 {
                    w.push_str(syllables[n % syllables.len()]);
                    n /= syllables.len();
                }
                w
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (0..size)
            .map(|i| {
                total += 1.0 / (i as f64 + 1.0);
                total
            })
            .collect();
        Self { words, cumulative }
    }

    fn draw(&self, rng: &mut StdRng) -> usize {
        let x = rng.r#gen::<f64>() * self.cumulative.last().copied().unwrap_or(1.0);
        self.cumulative.partition_point(|&c| c < x).min(self.words.len() - 1)
    }
}

const DOMAINS: &[&str] = &["github.com", "mail.github.com", "stripe.com", "example.org", "shop.test", "news.example.net", "bank.test", "corp.test"];

struct Generated {
    row: NewMessage,
    body: String,
}

fn message(vocab: &Vocabulary, rng: &mut StdRng, owner: &OwnerId, inbox: &Address, id: Ulid, n: usize) -> Generated {
    let domain = DOMAINS[rng.gen_range(0..DOMAINS.len())];
    let subject: Vec<&str> = (0..rng.gen_range(2..7)).map(|_| vocab.words[vocab.draw(rng)].as_str()).collect();
    let body: Vec<&str> = (0..rng.gen_range(40..160)).map(|_| vocab.words[vocab.draw(rng)].as_str()).collect();
    let body = body.join(" ");
    let reply = n > 10 && rng.gen_bool(0.3);
    let mut raw = format!(
        "From: Sender {n} <user{}@{domain}>\r\nTo: {inbox}\r\nSubject: {}{}\r\nMessage-ID: <m{n}@{domain}>\r\n",
        n % 50,
        if reply { "Re: " } else { "" },
        subject.join(" ")
    );
    if reply {
        raw.push_str(&format!("In-Reply-To: <m{}@{domain}>\r\n", rng.gen_range(0..n)));
    }
    if rng.gen_bool(0.1) {
        raw.push_str(&format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=f.pdf\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
        ));
    } else {
        raw.push_str(&format!("Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"));
    }
    let summary = HeaderSummary::of_message(raw.as_bytes(), "mx.bench.test");
    let facts = MessageFacts::of_message(raw.as_bytes(), &summary);
    Generated {
        row: NewMessage { owner: owner.clone(), inbox: inbox.clone(), id, size: raw.len() as u64, summary, facts },
        body,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(kind: &str, mut times: Vec<Duration>, hits: usize) {
    times.sort();
    let n = times.len();
    println!(
        "| {kind} | {n} | {:.2} | {:.2} | {:.2} | {:.1} |",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
        hits as f64 / n.max(1) as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("search_latency: {e}");
            std::process::exit(2);
        }
    };
    let dir = tempfile::Builder::new().prefix("ak-search-bench-").tempdir_in(&o.dir).unwrap();
    let bench = match &o.postgres {
        None => Bench::Sqlite(SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap()),
        Some(url) => Bench::postgres(url).await,
    };
    let store = bench.index();
    let owner: OwnerId = "0x00000000000000000000000000000000000000b1".parse().unwrap();
    let other_owner: OwnerId = "0x00000000000000000000000000000000000000b2".parse().unwrap();
    let inbox: Address = "bench@agents.bench.test".parse().unwrap();
    let other_inbox: Address = "other@agents.bench.test".parse().unwrap();
    let vocab = Vocabulary::new(5000);
    let mut rng = StdRng::seed_from_u64(13);
    let other = o.other.unwrap_or(o.n / 10);

    // A plain table for the LIKE peer, in the same database file (SQLite only).
    let peer = match &bench {
        Bench::Sqlite(_) => {
            let peer = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("meta.sqlite").display())).await.unwrap();
            sqlx::query("CREATE TABLE bench_plain (seq INTEGER PRIMARY KEY, owner TEXT, inbox TEXT, body TEXT)").execute(&peer).await.unwrap();
            sqlx::query("CREATE INDEX bench_plain_by_inbox ON bench_plain (owner, inbox)").execute(&peer).await.unwrap();
            Some(peer)
        }
        #[cfg(feature = "postgres")]
        Bench::Postgres(..) => None,
    };

    let fill_start = Instant::now();
    let base_ms = 1_767_000_000_000u64;
    let total = o.n + other;
    let mut batch = Vec::with_capacity(MAX_INDEX_BATCH);
    let mut bodies = Vec::with_capacity(MAX_INDEX_BATCH);
    let mut batches: u64 = 0;
    for n in 0..total {
        let (who, which) = match n % 10 {
            _ if n >= o.n + other / 2 => (&other_owner, &inbox),
            _ if n >= o.n => (&owner, &other_inbox),
            _ => (&owner, &inbox),
        };
        // One message every 6 s of simulated time: 100,000 span about a week.
        let id = Ulid::from_parts(base_ms + n as u64 * 6_000, u128::from(n as u64));
        let g = message(&vocab, &mut rng, who, which, id, n);
        batch.push(g.row);
        bodies.push(g.body);
        if batch.len() == MAX_INDEX_BATCH || n + 1 == total {
            let indexed = store.index_messages(&batch).await.unwrap();
            batches += 1;
            if batches.is_power_of_two() {
                // What autovacuum's analyze does on a running server: without
                // statistics PostgreSQL plans the thread-key lookup as a scan of
                // the inbox's keys (BENCHMARKS.md).
                bench.analyze().await;
            }
            if let Some(peer) = &peer {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO bench_plain (seq, owner, inbox, body) ");
                insert.push_values(indexed.iter().zip(&bodies), |mut r, (m, body)| {
                    r.push_bind(m.seq).push_bind(m.owner.as_str().to_owned()).push_bind(m.inbox.as_str().to_owned()).push_bind(body.clone());
                });
                insert.build().execute(peer).await.unwrap();
            }
            batch.clear();
            bodies.clear();
        }
    }
    let fill = fill_start.elapsed();
    let db_bytes: u64 = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    println!(
        "{}: filled {} messages ({} in the bench inbox) through index_messages in {:.1} s ({:.0} messages/s); SQLite files {:.0} MiB (with the LIKE peer's bodies)",
        bench.name(),
        total,
        o.n,
        fill.as_secs_f64(),
        total as f64 / fill.as_secs_f64(),
        db_bytes as f64 / 1_048_576.0
    );
    bench.analyze().await;
    println!();
    println!("| query | runs | p50 ms | p99 ms | max ms | mean hits |");
    println!("|---|---|---|---|---|---|");

    let now_s = i64::try_from((base_ms + o.n as u64 * 6_000) / 1000).unwrap();
    type Make<'a> = Box<dyn Fn(&mut StdRng) -> SearchQuery + 'a>;
    let w = |rng: &mut StdRng, lo: usize, hi: usize| vocab.words[rng.gen_range(lo..hi)].clone();
    let kinds: Vec<(&str, Make<'_>)> = vec![
        ("text: one rare word (rank 1000-5000)", Box::new(|r: &mut StdRng| SearchQuery { text: Some(w(r, 1000, 5000)), ..Default::default() })),
        ("text: one common word (rank 0-20)", Box::new(|r: &mut StdRng| SearchQuery { text: Some(w(r, 0, 20)), ..Default::default() })),
        ("text: two words (ranks 20-500)", Box::new(|r: &mut StdRng| SearchQuery { text: Some(format!("{} {}", w(r, 20, 500), w(r, 20, 500))), ..Default::default() })),
        ("from: a domain", Box::new(|r: &mut StdRng| SearchQuery { from: Some(DOMAINS[r.gen_range(0..DOMAINS.len())].to_owned()), ..Default::default() })),
        ("from: an address + text: word rank 0-200", Box::new(|r: &mut StdRng| SearchQuery { from: Some(format!("user{}@github.com", r.gen_range(0..50))), text: Some(w(r, 0, 200)), ..Default::default() })),
        ("text: word rank 100-1000, since 1 day ago", Box::new(move |r: &mut StdRng| SearchQuery { text: Some(w(r, 100, 1000)), since: Some(now_s - 86_400), ..Default::default() })),
        ("has_attachment + subject word rank 0-50", Box::new(|r: &mut StdRng| SearchQuery { has_attachment: Some(true), subject: Some(w(r, 0, 50)), ..Default::default() })),
        ("text: a word no message has", Box::new(|_r: &mut StdRng| SearchQuery { text: Some("nowhereword".to_owned()), ..Default::default() })),
    ];
    let mut all_search = Vec::new();
    for (name, make) in &kinds {
        if o.explain {
            let mut q = make(&mut rng);
            q.limit = PAGE;
            println!("plan of {name}: {q:?}");
            for line in bench.plan(&owner, &inbox, &q).await {
                println!("    {line}");
            }
        }
        let mut times = Vec::with_capacity(o.queries);
        let mut hits = 0;
        // Two untimed queries first (statement cache, pages in memory).
        for i in 0..o.queries + 2 {
            let mut q = make(&mut rng);
            q.limit = PAGE;
            let start = Instant::now();
            let found = store.search_messages(&owner, &inbox, &q).await.unwrap();
            let took = start.elapsed();
            if i >= 2 {
                times.push(took);
                hits += found.len();
            }
        }
        all_search.extend_from_slice(&times);
        report(name, times, hits);
    }
    report("**all search kinds together**", all_search, 0);

    // Peer 1: listing one page.
    let mut times = Vec::new();
    for i in 0..o.queries + 2 {
        let page = PageQuery { after: None, before: None, order: ListOrder::NewestFirst, limit: PAGE };
        let start = Instant::now();
        let rows = store.list_messages(&owner, &inbox, &page).await.unwrap();
        let took = start.elapsed();
        assert_eq!(rows.len(), PAGE as usize);
        if i >= 2 {
            times.push(took);
        }
    }
    report("peer: list_messages, one page", times, PAGE as usize * o.queries);

    // Peer 2: the rare-word query without a full-text index.
    if let Some(peer) = &peer {
        let mut times = Vec::new();
        let mut hits = 0;
        for i in 0..o.peer_queries + 1 {
            let word = w(&mut rng, 1000, 5000);
            let start = Instant::now();
            let rows: Vec<(i64,)> = sqlx::query_as(
                "SELECT seq FROM bench_plain WHERE owner = ?1 AND inbox = ?2 AND body LIKE ?3 ORDER BY seq DESC LIMIT ?4",
            )
            .bind(owner.as_str())
            .bind(inbox.as_str())
            .bind(format!("%{word}%"))
            .bind(i64::from(PAGE))
            .fetch_all(peer)
            .await
            .unwrap();
            let took = start.elapsed();
            if i >= 1 {
                times.push(took);
                hits += rows.len();
            }
        }
        report("peer: LIKE '%word%' scan, one rare word", times, hits);
        peer.close().await;
    }
    bench.finish().await;
}

/// The store under test (one per run, so its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Bench {
    Sqlite(SqliteStore),
    /// The store, the admin connection options and the bench database's name.
    #[cfg(feature = "postgres")]
    Postgres(agentkeys_store::PgStore, sqlx::postgres::PgConnectOptions, String),
}

impl Bench {
    #[cfg(feature = "postgres")]
    async fn postgres(url: &str) -> Self {
        use sqlx::{ConnectOptions as _, Connection as _, Executor as _};
        use std::str::FromStr as _;
        let admin = sqlx::postgres::PgConnectOptions::from_str(url).unwrap();
        let name = format!("search_bench_{}", Ulid::new().to_string().to_lowercase());
        let mut conn = admin.connect().await.unwrap();
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str()).await.unwrap();
        let _ = conn.close().await;
        let store = agentkeys_store::PgStore::connect_with(admin.clone().database(&name), 4).await.unwrap();
        Self::Postgres(store, admin, name)
    }

    #[cfg(not(feature = "postgres"))]
    async fn postgres(_url: &str) -> Self {
        eprintln!("search_latency: --postgres needs the example built with --features postgres");
        std::process::exit(2);
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SQLite",
            #[cfg(feature = "postgres")]
            Self::Postgres(..) => "PostgreSQL",
        }
    }

    fn index(&self) -> std::sync::Arc<dyn MessageIndex> {
        match self {
            Self::Sqlite(s) => std::sync::Arc::new(s.clone()),
            #[cfg(feature = "postgres")]
            Self::Postgres(s, ..) => std::sync::Arc::new(s.clone()),
        }
    }

    /// Fresh planner statistics after the fill (PostgreSQL's autovacuum may not
    /// have run yet; a server that has run for a while has them).
    async fn analyze(&self) {
        #[cfg(feature = "postgres")]
        if let Self::Postgres(s, ..) = self {
            use sqlx::{ConnectOptions as _, Connection as _, Executor as _};
            let mut conn = s.connect_options().connect().await.unwrap();
            conn.execute("VACUUM ANALYZE messages, message_thread_keys").await.unwrap();
            let _ = conn.close().await;
        }
    }

    async fn plan(&self, owner: &OwnerId, inbox: &Address, q: &SearchQuery) -> Vec<String> {
        match self {
            Self::Sqlite(s) => s.search_plan(owner, inbox, q).await.unwrap(),
            #[cfg(feature = "postgres")]
            Self::Postgres(s, ..) => s.search_plan(owner, inbox, q).await.unwrap(),
        }
    }

    async fn finish(self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            #[cfg(feature = "postgres")]
            Self::Postgres(s, admin, name) => {
                use sqlx::{ConnectOptions as _, Connection as _, Executor as _};
                s.close().await;
                let mut conn = admin.connect().await.unwrap();
                conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str()).await.unwrap();
                let _ = conn.close().await;
            }
        }
    }
}

//! A real DNS server on loopback for tests: UDP and TCP on `127.0.0.1:<port>`,
//! serving exactly the records a test gives it.
//!
//! Test support only (`publish = false`, used as a dev-dependency). Code that does
//! DNS through hickory (the delivery resolver, mail-auth's SPF/DKIM/DMARC checks)
//! or a child process (`agentkeys serve` with `AGENTKEYS_DNS_NAMESERVERS`) is pointed
//! at [`TestDns::nameserver`] and then talks real DNS over real sockets: the wire
//! format, UDP truncation and the retry over TCP, multi-string TXT records, NXDOMAIN.
//!
//! - [`Zone`] is the record set: A, AAAA, MX, TXT (one string, or several as
//!   DKIM keys over 255 bytes need), CNAME; a name can also be made to answer
//!   `SERVFAIL` ([`Zone::servfail`]) or never answer ([`Zone::no_answer`]) to test
//!   temporary DNS errors and timeouts, and the whole server can leave every n-th
//!   query unanswered ([`Zone::drop_every`]: `1` is a server that never answers,
//!   `10` one that loses 10 % of queries).
//! - [`Zone::parse`] reads a record set from text (one record a line), for the
//!   `agentkeys-testdns` binary the benchmarks run on a loopback address.
//! - [`TestDns::start`] binds UDP and TCP on the same free loopback port and serves
//!   from two background threads (one per transport, plus one short-lived thread
//!   per TCP connection). It is not tied to any async runtime, so it works from
//!   `#[test]` and `#[tokio::test]` alike.
//! - Dropping the [`TestDns`] stops it: the threads are woken and joined.
//!
//! Answers: records of the asked type at the name (any type for `ANY`); a CNAME at
//! the name is followed inside the zone (at most [`MAX_CNAME_CHAIN`] links) for other
//! types; a name with records but none of the type is `NOERROR` with no answers
//! (NODATA); a name without any record is `NXDOMAIN`. Names match without regard
//! to case. Responses over the client's UDP size (512 bytes without EDNS) are sent
//! truncated (`TC`), so the client retries over TCP. Every answer carries
//! [`TTL`]. Every query seen is logged ([`TestDns::queries`]).
//!
//! ```
//! use std::net::Ipv4Addr;
//! use agentkeys_testdns::{TestDns, Zone};
//!
//! let dns = TestDns::start(
//!     Zone::new()
//!         .mx("example.test", 10, "mx.example.test")
//!         .a("mx.example.test", Ipv4Addr::LOCALHOST)
//!         .txt("example.test", "v=spf1 ip4:127.0.0.1 -all")
//!         .txt_strings("sel._domainkey.example.test", &["v=DKIM1; k=ed25519; ", "p=AAAA"]),
//! )
//! .unwrap();
//! // Give this to the code under test, e.g. AGENTKEYS_DNS_NAMESERVERS.
//! let ns: String = dns.nameserver();
//! assert!(ns.starts_with("127.0.0.1:"));
//! drop(dns); // stops the server
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Time to live of every record served, in seconds.
pub const TTL: u32 = 60;
/// Most CNAME links followed for one answer.
pub const MAX_CNAME_CHAIN: usize = 8;
/// Longest character-string in a TXT record (RFC 1035 §3.3); [`Zone::txt`] splits
/// longer text into strings of this size.
pub const MAX_TXT_STRING: usize = 255;
/// UDP payload size when the query has no EDNS (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_SIZE: usize = 512;
/// The UDP payload size this server announces and honours at most with EDNS.
pub const MAX_UDP_SIZE: u16 = 4096;
/// How long a TCP connection may sit idle before the server closes it.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to find a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 50;

/// How a name that should not answer normally behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Answer `SERVFAIL`.
    ServFail,
    /// Never answer (the client times out).
    NoAnswer,
}

/// A record set to serve. Names are given without or with the trailing dot and
/// compared without regard to case.
///
/// # Panics
/// The builder methods panic on a name that is not a valid DNS name: this is test
/// support, and a typo in a fixture should stop the test at once.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    records: Vec<Record>,
    failures: HashMap<Name, Failure>,
    /// Leave every n-th query (counted over the whole server) unanswered.
    drop_every: Option<u64>,
}

/// A line of [`Zone::parse`] input that is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for ZoneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ZoneError {}

fn parse_name(text: &str) -> Result<Name, String> {
    let fqdn = if text.ends_with('.') { text.to_owned() } else { format!("{text}.") };
    Name::from_ascii(&fqdn).map_err(|e| format!("{text:?} is not a DNS name: {e}"))
}

fn name(text: &str) -> Name {
    parse_name(text).unwrap_or_else(|e| panic!("testdns: {e}"))
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(mut self, owner: &str, data: RData) -> Self {
        self.records.push(Record::from_rdata(name(owner), TTL, data));
        self
    }

    /// Adds an A record.
    #[must_use]
    pub fn a(self, owner: &str, ip: Ipv4Addr) -> Self {
        self.add(owner, RData::A(A(ip)))
    }

    /// Adds an AAAA record.
    #[must_use]
    pub fn aaaa(self, owner: &str, ip: Ipv6Addr) -> Self {
        self.add(owner, RData::AAAA(AAAA(ip)))
    }

    /// Adds an MX record (`exchange` `"."` is a null MX, RFC 7505).
    #[must_use]
    pub fn mx(self, owner: &str, preference: u16, exchange: &str) -> Self {
        let exchange = if exchange == "." { Name::root() } else { name(exchange) };
        self.add(owner, RData::MX(MX::new(preference, exchange)))
    }

    /// Adds one TXT record holding `text`, split into character-strings of at most
    /// [`MAX_TXT_STRING`] bytes (a reader joins them back, RFC 7208 §3.3, RFC 6376 §3.6.2.2).
    #[must_use]
    pub fn txt(self, owner: &str, text: &str) -> Self {
        let strings: Vec<String> = text
            .as_bytes()
            .chunks(MAX_TXT_STRING)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let strings = if strings.is_empty() { vec![String::new()] } else { strings };
        self.add(owner, RData::TXT(TXT::new(strings)))
    }

    /// Adds one TXT record made of exactly these character-strings.
    ///
    /// # Panics
    /// If a string is over [`MAX_TXT_STRING`] bytes (it could not be encoded).
    #[must_use]
    pub fn txt_strings(self, owner: &str, strings: &[&str]) -> Self {
        for s in strings {
            assert!(s.len() <= MAX_TXT_STRING, "testdns: TXT string of {} bytes is over 255", s.len());
        }
        let strings = strings.iter().map(|s| (*s).to_owned()).collect();
        self.add(owner, RData::TXT(TXT::new(strings)))
    }

    /// Adds a CNAME record: `owner` is an alias of `target`.
    #[must_use]
    pub fn cname(self, owner: &str, target: &str) -> Self {
        self.add(owner, RData::CNAME(CNAME(name(target))))
    }

    /// Makes every query for `owner` answer `SERVFAIL` (a temporary DNS error).
    #[must_use]
    pub fn servfail(mut self, owner: &str) -> Self {
        self.failures.insert(name(owner), Failure::ServFail);
        self
    }

    /// Makes every query for `owner` go unanswered, so the client times out.
    #[must_use]
    pub fn no_answer(mut self, owner: &str) -> Self {
        self.failures.insert(name(owner), Failure::NoAnswer);
        self
    }

    /// Makes the server leave every `n`-th query it receives unanswered (counted
    /// over all names and both transports, starting with the `n`-th): `1` never
    /// answers, `10` loses 10 % of queries. Deterministic, so a test knows which.
    ///
    /// # Panics
    /// If `n` is 0.
    #[must_use]
    pub fn drop_every(mut self, n: u64) -> Self {
        assert!(n > 0, "testdns: drop_every(0)");
        self.drop_every = Some(n);
        self
    }

    /// A record set from text, one record a line: `name TYPE data`, where TYPE is
    /// `A`, `AAAA`, `MX` (data `preference exchange`), `TXT` (data: the rest of the
    /// line, split into 255-byte strings as [`Zone::txt`] does), `CNAME`, or
    /// `SERVFAIL` / `NOANSWER` (no data). Blank lines and lines starting with `#`
    /// are skipped. Every bad line is reported, not only the first.
    pub fn parse(text: &str) -> Result<Self, Vec<ZoneError>> {
        let mut zone = Zone::new();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match zone.clone().parse_line(line) {
                Ok(next) => zone = next,
                Err(reason) => errors.push(ZoneError { line: i + 1, reason }),
            }
        }
        if errors.is_empty() { Ok(zone) } else { Err(errors) }
    }

    fn parse_line(self, line: &str) -> Result<Self, String> {
        let mut parts = line.splitn(3, char::is_whitespace);
        let owner = parts.next().unwrap_or_default();
        let kind = parts.next().ok_or("no record type")?.to_ascii_uppercase();
        let data = parts.next().unwrap_or_default().trim();
        let owner_name = parse_name(owner)?;
        let need = |what: &str| if data.is_empty() { Err(format!("{kind} needs {what}")) } else { Ok(()) };
        let record = |zone: Self, rdata: RData| {
            let mut zone = zone;
            zone.records.push(Record::from_rdata(owner_name.clone(), TTL, rdata));
            zone
        };
        Ok(match kind.as_str() {
            "A" => record(self, RData::A(A(data.parse().map_err(|e| format!("A {data:?}: {e}"))?))),
            "AAAA" => record(self, RData::AAAA(AAAA(data.parse().map_err(|e| format!("AAAA {data:?}: {e}"))?))),
            "MX" => {
                let (preference, exchange) = data.split_once(char::is_whitespace).ok_or("MX needs `preference exchange`")?;
                let preference: u16 = preference.parse().map_err(|e| format!("MX preference {preference:?}: {e}"))?;
                let exchange = exchange.trim();
                let exchange = if exchange == "." { Name::root() } else { parse_name(exchange)? };
                record(self, RData::MX(MX::new(preference, exchange)))
            }
            "TXT" => {
                need("text")?;
                self.txt(owner, data)
            }
            "CNAME" => {
                need("a target")?;
                record(self, RData::CNAME(CNAME(parse_name(data)?)))
            }
            "SERVFAIL" => self.servfail(owner),
            "NOANSWER" => self.no_answer(owner),
            other => return Err(format!("unknown record type {other:?}")),
        })
    }

    /// The answer to `request`, or `None` to stay silent.
    fn respond(&self, request: &Message) -> Option<Message> {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_SIZE);
            response.set_edns(edns);
        }
        let query = match (request.metadata.message_type, request.metadata.op_code, request.queries.as_slice()) {
            (MessageType::Query, OpCode::Query, [query]) => query.clone(),
            _ => {
                response.metadata.response_code = ResponseCode::FormErr;
                return Some(response);
            }
        };
        response.add_query(query.clone());
        match self.failures.get(query.name()) {
            Some(Failure::NoAnswer) => return None,
            Some(Failure::ServFail) => {
                response.metadata.response_code = ResponseCode::ServFail;
                return Some(response);
            }
            None => {}
        }
        response.metadata.authoritative = true;
        let wanted = query.query_type();
        let mut current = query.name().clone();
        for _ in 0..=MAX_CNAME_CHAIN {
            let at_name: Vec<&Record> = self.records.iter().filter(|r| r.name == current).collect();
            if at_name.is_empty() {
                response.metadata.response_code = ResponseCode::NXDomain;
                break;
            }
            let matching: Vec<Record> = at_name
                .iter()
                .filter(|r| wanted == RecordType::ANY || r.record_type() == wanted)
                .map(|r| (*r).clone())
                .collect();
            if !matching.is_empty() {
                response.add_answers(matching);
                break;
            }
            match at_name.iter().find_map(|r| match &r.data {
                RData::CNAME(target) => Some((*r, target.0.clone())),
                _ => None,
            }) {
                Some((cname, target)) => {
                    response.add_answer(cname.clone());
                    current = target;
                }
                None => break, // NODATA
            }
        }
        Some(response)
    }
}

/// One query the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenQuery {
    /// The name asked for, lowercase, with the trailing dot.
    pub name: String,
    /// The type asked for (`A`, `TXT`, …).
    pub record_type: String,
    /// Whether it came over TCP.
    pub tcp: bool,
}

#[derive(Debug)]
struct Shared {
    zone: Mutex<Zone>,
    seen: Mutex<Vec<SeenQuery>>,
    /// Whether queries are kept in `seen` (the benchmark binary counts only).
    log: AtomicBool,
    /// Queries received (decoded), answered or not.
    received: AtomicU64,
    stop: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            zone: Mutex::default(),
            seen: Mutex::default(),
            log: AtomicBool::new(true),
            received: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Decodes a query, logs it, and encodes the answer; `max` bounds a UDP answer.
    fn handle(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let request = Message::from_vec(packet).ok()?;
        let number = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(q) = request.queries.first()
            && self.log.load(Ordering::Relaxed)
        {
            lock(&self.seen).push(SeenQuery {
                name: q.name().to_lowercase().to_ascii(),
                record_type: q.query_type().to_string(),
                tcp,
            });
        }
        let response = {
            let zone = lock(&self.zone);
            if zone.drop_every.is_some_and(|n| number.is_multiple_of(n)) {
                return None;
            }
            zone.respond(&request)?
        };
        let bytes = response.to_vec().ok()?;
        if tcp {
            return Some(bytes);
        }
        let max = request
            .edns
            .as_ref()
            .map_or(CLASSIC_UDP_SIZE, |e| usize::from(e.max_payload().min(MAX_UDP_SIZE)).max(CLASSIC_UDP_SIZE));
        if bytes.len() > max {
            return response.truncate().to_vec().ok();
        }
        Some(bytes)
    }
}

/// A running DNS server on `127.0.0.1`. See the crate docs.
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl TestDns {
    /// Binds UDP and TCP on one free loopback port and starts serving `zone`.
    pub fn start(zone: Zone) -> io::Result<Self> {
        let (udp, tcp) = bind_pair()?;
        Self::serve(udp, tcp, zone)
    }

    /// Binds UDP and TCP on `addr` (e.g. `127.0.53.1:53`, for peers that only
    /// speak to port 53) and starts serving `zone`.
    pub fn bind(addr: SocketAddr, zone: Zone) -> io::Result<Self> {
        let udp = UdpSocket::bind(addr)?;
        let tcp = TcpListener::bind(udp.local_addr()?)?;
        Self::serve(udp, tcp, zone)
    }

    fn serve(udp: UdpSocket, tcp: TcpListener, zone: Zone) -> io::Result<Self> {
        let addr = udp.local_addr()?;
        let shared = Arc::new(Shared { zone: Mutex::new(zone), ..Shared::default() });
        let udp_thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new().name("testdns-udp".into()).spawn(move || serve_udp(&udp, &shared))?
        };
        let tcp_thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new().name("testdns-tcp".into()).spawn(move || serve_tcp(&tcp, &shared))?
        };
        Ok(Self { addr, shared, threads: vec![udp_thread, tcp_thread] })
    }

    /// The address it serves on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as `ip:port`, the form `AGENTKEYS_DNS_NAMESERVERS` takes.
    pub fn nameserver(&self) -> String {
        self.addr.to_string()
    }

    /// Replaces the record set; later queries see the new one (a client's cache may
    /// still hold old answers for up to [`TTL`]).
    pub fn set_zone(&self, zone: Zone) {
        *lock(&self.shared.zone) = zone;
    }

    /// Every query received so far, in order (while logging is on).
    pub fn queries(&self) -> Vec<SeenQuery> {
        lock(&self.shared.seen).clone()
    }

    /// How many queries for `name` (any case, with or without the trailing dot)
    /// of type `record_type` (`"TXT"`, `"A"`, …) were received so far.
    pub fn count(&self, name: &str, record_type: &str) -> usize {
        let name = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        lock(&self.shared.seen).iter().filter(|q| q.name == name && q.record_type == record_type).count()
    }

    /// Queries received so far (answered or not), whether logged or not.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::SeqCst)
    }

    /// Turns the query log ([`TestDns::queries`]) on or off; a long-running
    /// server (the benchmark binary) turns it off so memory stays flat.
    pub fn set_logging(&self, on: bool) {
        self.shared.log.store(on, Ordering::SeqCst);
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake both blocking loops so they see the flag.
        if let Ok(waker) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) {
            let _ = waker.send_to(&[], self.addr);
        }
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same loopback port.
fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free port");
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let received = socket.recv_from(&mut buf);
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((n, peer)) = received else { continue };
        if let Some(answer) = shared.handle(&buf[..n], false) {
            let _ = socket.send_to(&answer, peer);
        }
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, _)) = accepted else { continue };
        let shared = Arc::clone(shared);
        // One thread per connection; it ends at EOF, on error or after the idle timeout.
        let _ = std::thread::Builder::new()
            .name("testdns-tcp-conn".into())
            .spawn(move || serve_tcp_connection(stream, &shared));
    }
}

/// Length-prefixed messages (RFC 1035 §4.2.2) until the client closes.
fn serve_tcp_connection(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(TCP_IDLE_TIMEOUT));
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() || shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut packet).is_err() {
            break;
        }
        if let Some(answer) = shared.handle(&packet, true) {
            let Ok(len) = u16::try_from(answer.len()) else { break };
            let mut framed = Vec::with_capacity(answer.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&answer);
            if stream.write_all(&framed).is_err() {
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hickory_proto::op::Query;

    fn ask(zone: &Zone, owner: &str, rtype: RecordType) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(name(owner), rtype));
        zone.respond(&q).unwrap()
    }

    #[test]
    fn answers_nodata_nxdomain_and_cname() {
        let zone = Zone::new()
            .a("host.test", Ipv4Addr::new(192, 0, 2, 1))
            .txt("host.test", "hello")
            .cname("alias.test", "HOST.test");
        let r = ask(&zone, "Host.Test.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        let r = ask(&zone, "host.test", RecordType::MX);
        assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 0));
        let r = ask(&zone, "nothing.test", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let r = ask(&zone, "alias.test", RecordType::TXT);
        assert_eq!(r.answers.len(), 2, "CNAME plus the target's TXT");
        let r = ask(&zone, "alias.test", RecordType::CNAME);
        assert_eq!(r.answers.len(), 1);
    }

    #[test]
    fn cname_loop_is_bounded() {
        let zone = Zone::new().cname("a.test", "b.test").cname("b.test", "a.test");
        let r = ask(&zone, "a.test", RecordType::A);
        assert_eq!(r.answers.len(), MAX_CNAME_CHAIN + 1);
    }

    #[test]
    fn long_txt_is_split_into_255_byte_strings() {
        let text = "x".repeat(600);
        let zone = Zone::new().txt("k.test", &text);
        let r = ask(&zone, "k.test", RecordType::TXT);
        let RData::TXT(txt) = &r.answers[0].data else { panic!() };
        let lens: Vec<usize> = txt.txt_data.iter().map(|s| s.len()).collect();
        assert_eq!(lens, [255, 255, 90]);
    }

    #[test]
    fn failures() {
        let zone = Zone::new().servfail("bad.test").no_answer("slow.test");
        assert_eq!(ask(&zone, "bad.test", RecordType::TXT).metadata.response_code, ResponseCode::ServFail);
        let mut q = Message::query();
        q.add_query(Query::query(name("slow.test"), RecordType::TXT));
        assert!(zone.respond(&q).is_none());
    }

    fn query(owner: &str) -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(name(owner), RecordType::TXT));
        q.to_vec().unwrap()
    }

    #[test]
    fn drop_every_n_leaves_exactly_every_nth_query_unanswered() {
        for n in 1..=12u64 {
            let shared = Shared { zone: Mutex::new(Zone::new().txt("a.test", "x").drop_every(n)), ..Shared::default() };
            let answered: Vec<bool> = (1..=60u64).map(|_| shared.handle(&query("a.test"), false).is_some()).collect();
            for (i, answered) in answered.iter().enumerate() {
                assert_eq!(*answered, !(i as u64 + 1).is_multiple_of(n), "n={n}, query {}", i + 1);
            }
            assert_eq!(shared.received.load(Ordering::SeqCst), 60);
        }
    }

    #[test]
    fn zone_text_round_trips_every_record_type() {
        let text = "# comment\n\nhost.test A 192.0.2.1\nhost.test AAAA ::1\nexample.test MX 10 host.test\n\
                    example.test TXT v=spf1 ip4:127.0.0.0/8 -all\nalias.test CNAME host.test\n\
                    bad.test SERVFAIL\nslow.test NOANSWER\nnull.test MX 0 .\n";
        let zone = Zone::parse(text).unwrap();
        assert_eq!(ask(&zone, "host.test", RecordType::A).answers.len(), 1);
        assert_eq!(ask(&zone, "host.test", RecordType::AAAA).answers.len(), 1);
        assert_eq!(ask(&zone, "example.test", RecordType::MX).answers.len(), 1);
        let r = ask(&zone, "example.test", RecordType::TXT);
        let RData::TXT(txt) = &r.answers[0].data else { panic!() };
        assert_eq!(txt.txt_data[0].as_ref(), b"v=spf1 ip4:127.0.0.0/8 -all");
        assert_eq!(ask(&zone, "alias.test", RecordType::A).answers.len(), 2);
        assert_eq!(ask(&zone, "bad.test", RecordType::TXT).metadata.response_code, ResponseCode::ServFail);
        let mut q = Message::query();
        q.add_query(Query::query(name("slow.test"), RecordType::TXT));
        assert!(zone.respond(&q).is_none());
        assert_eq!(ask(&zone, "null.test", RecordType::MX).answers.len(), 1);
    }

    #[test]
    fn zone_text_errors_name_every_bad_line() {
        let errors = Zone::parse("ok.test A 192.0.2.1\nbad A 999.1.1.1\nx.test\nx.test MX ten host\nx.test WAT y\nx.test TXT\n")
            .unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6], "{errors:?}");
    }

    #[test]
    fn udp_answer_over_512_bytes_is_truncated_without_edns() {
        let mut zone = Zone::new();
        for i in 0..10 {
            zone = zone.txt("big.test", &format!("{i}{}", "y".repeat(100)));
        }
        let shared = Shared { zone: Mutex::new(zone), ..Shared::default() };
        let mut q = Message::query();
        q.add_query(Query::query(name("big.test"), RecordType::TXT));
        let bytes = shared.handle(&q.to_vec().unwrap(), false).unwrap();
        assert!(bytes.len() <= CLASSIC_UDP_SIZE);
        let r = Message::from_vec(&bytes).unwrap();
        assert!(r.metadata.truncation);
        assert!(r.answers.is_empty());
        let full = Message::from_vec(&shared.handle(&q.to_vec().unwrap(), true).unwrap()).unwrap();
        assert_eq!(full.answers.len(), 10);
    }
}

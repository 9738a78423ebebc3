//! Configuration: built-in defaults, then `agentkeys.toml`, then `AGENTKEYS_*`
//! environment variables, then command-line flags.
//!
//! Every key is declared once in [`KEYS`] with its TOML path, its environment
//! variable and its parser, so the file, the environment and the docs cannot drift
//! apart. Loading reports every bad key at once, each with where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::str::FromStr;

use agentkeys_broker::{DEFAULT_AUDIENCE, IssuerUrl};
use agentkeys_core::{Domain, parse_duration};
use agentkeys_delivery::{MAX_MAX_AGE, MxPattern, Publication, StsMode, StsPolicy, TlsRpt};

/// Default data directory, relative to the working directory.
pub(crate) const DEFAULT_DATA_DIR: &str = "./agentkeys-data";
/// Default hosted domain.
pub(crate) const DEFAULT_DOMAIN: &str = "agents.localhost";
/// Default configuration file, looked for in the working directory.
pub(crate) const DEFAULT_CONFIG_FILE: &str = "agentkeys.toml";
/// Default public URL of the HTTP listener (the OIDC issuer).
pub(crate) const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8787";

/// The URL owners and agents give as `--server`: `public_url` when it is set,
/// else the HTTP listener's own address (the default `public_url` names the
/// default listener, which may have been moved).
pub(crate) fn server_url(config: &Config) -> String {
    let public = config.public_url.as_str().trim_end_matches('/');
    if public == DEFAULT_PUBLIC_URL {
        format!("http://{}", config.listen_http)
    } else {
        public.to_owned()
    }
}

/// The server's settings after defaults, file and environment are merged.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) hostname: String,
    pub(crate) domain: Domain,
    /// `local<sep>tag@domain` is delivered to `local@domain` (default `+`; empty: off).
    pub(crate) subaddressing: agentkeys_core::Subaddressing,
    /// What the MX does with mail an inbox's receive lists refuse: `true`
    /// (default) refuses it at the end of DATA with `550 5.7.1`; `false`
    /// stores it and the agent's tools withhold it (issue 13 §2, ARCHITECTURE.md).
    pub(crate) refuse_blocked_senders: bool,
    pub(crate) listen_inbound: SocketAddr,
    pub(crate) listen_submission: SocketAddr,
    pub(crate) listen_submission_tls: SocketAddr,
    pub(crate) listen_http: SocketAddr,
    /// The HTTPS listener (same router, caps and timeouts as `listen_http`, the
    /// `tls.cert` certificate); `None`: none.
    pub(crate) listen_https: Option<SocketAddr>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) max_message_size: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    /// The HTTP listener's limits (`limits.http_*`, crates/cli/src/http_listener.rs).
    pub(crate) http: crate::http_listener::HttpLimits,
    pub(crate) auth_failures_per_ip: u32,
    pub(crate) auth_failure_window_secs: u64,
    pub(crate) shutdown_grace_secs: u64,
    pub(crate) log: String,
    pub(crate) public_url: IssuerUrl,
    pub(crate) oidc_audience: String,
    /// Whether `serve` runs the outbound queue runner.
    pub(crate) delivery_enabled: bool,
    /// `host:port` every outbound message is relayed to, instead of MX delivery.
    pub(crate) delivery_smarthost: Option<(String, u16)>,
    /// The port MX hosts are contacted on (25; a testing/ops knob).
    pub(crate) delivery_mx_port: u16,
    /// Multiplies the retry backoff, the lease and the maximum age (1; tests use less).
    pub(crate) delivery_backoff_scale: f64,
    /// Undelivered mail bounces after this many seconds (5 days).
    pub(crate) delivery_max_age_secs: u64,
    /// Messages are deleted after this many seconds unless their domain sets
    /// its own retention (`agentkeys domain set-retention`).
    pub(crate) retention_secs: u64,
    /// How often `serve` sweeps expired messages.
    pub(crate) retention_sweep_secs: u64,
    /// How often `serve` looks for things to tell owners (expiring grants and
    /// keys, refused AUTHs; `crates/cli/src/notices.rs`).
    pub(crate) notice_sweep_secs: u64,
    /// How often `serve` verifies the whole audit chain and tells owners when it fails.
    pub(crate) notice_audit_secs: u64,
    /// Name servers for every DNS lookup of the server (delivery MX lookups and
    /// the MX's SPF/DKIM/DMARC checks); empty = the system's (`/etc/resolv.conf`).
    pub(crate) dns_nameservers: Vec<SocketAddr>,
    /// Never deliver without STARTTLS (a destination without it is deferred).
    pub(crate) delivery_require_tls: bool,
    /// PEM trust anchors added to the webpki roots for MX certificates under
    /// MTA-STS and for fetching MTA-STS policies.
    pub(crate) delivery_ca_file: Option<PathBuf>,
    /// The HTTPS port MTA-STS policies are fetched from (443; tests change it).
    pub(crate) delivery_mta_sts_port: u16,
    /// The MTA-STS mode we publish for our hosted domains (`none`: no policy).
    pub(crate) mta_sts_mode: StsMode,
    /// The policy's `max_age`, seconds.
    pub(crate) mta_sts_max_age: u32,
    /// The policy's `mx` patterns; empty: the hostname.
    pub(crate) mta_sts_mx: Vec<MxPattern>,
    /// Where TLS reports go (`_smtp._tls` record); `None`: no record.
    pub(crate) tls_rpt: Option<TlsRpt>,
    /// Where metadata lives; `None`: SQLite in the data directory.
    pub(crate) store_metadata: Option<crate::store_location::MetadataLocation>,
    /// Where blobs live; `None`: files in the data directory.
    pub(crate) store_blobs: Option<crate::store_location::BlobLocation>,
    /// Webhooks may target loopback, private, link-local, … addresses (false).
    pub(crate) webhooks_allow_private: bool,
    /// Multiplies the webhook retry schedule and retry period (1; tests use less).
    pub(crate) webhooks_backoff_scale: f64,
    /// Multiplies the mail backends' reconnect and refused-login waits (1; tests use less).
    pub(crate) backends_backoff_scale: f64,
    /// Most webhook attempts in flight per node.
    pub(crate) webhooks_concurrency: usize,
    /// `grant.expiring` / `key.expiring` are raised this long before the expiry.
    pub(crate) webhooks_expiry_notice_secs: u64,
    /// How often expiring credentials are looked for.
    pub(crate) webhooks_expiry_check_secs: u64,
}

impl Config {
    /// The MTA-STS policy our hosted domains publish, unless the mode is `none`:
    /// `mta_sts.mx` (default: the hostname, the MX of `domain dns`), mode and max_age.
    pub(crate) fn mta_sts_policy(&self) -> Result<Option<StsPolicy>, String> {
        if self.mta_sts_mode == StsMode::None {
            return Ok(None);
        }
        let mx = if self.mta_sts_mx.is_empty() {
            vec![self.hostname.parse::<MxPattern>().map_err(|e| format!("the hostname cannot be an mx pattern ({e}); set mta_sts.mx"))?]
        } else {
            self.mta_sts_mx.clone()
        };
        StsPolicy::new(self.mta_sts_mode, mx, self.mta_sts_max_age).map(Some).map_err(|e| e.to_string())
    }

    /// What `domain dns` prints and `domain verify` checks: the MX pointing to
    /// `mx_host`, and the MTA-STS and TLS-RPT records when configured.
    pub(crate) fn publication(&self, mx_host: &str) -> Result<Publication, String> {
        let mut publication = Publication::new(mx_host);
        if let Some(policy) = self.mta_sts_policy()? {
            publication = publication.with_mta_sts(policy);
        }
        if let Some(tls_rpt) = &self.tls_rpt {
            publication = publication.with_tls_rpt(tls_rpt.clone());
        }
        Ok(publication)
    }
}

/// Default retention of messages: 30 days (DESIGN.md §5).
pub(crate) const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// Default interval of the owner-notice sweep.
pub(crate) const NOTICE_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);
/// Default interval of the audit chain's verification for owner notices.
pub(crate) const NOTICE_AUDIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Default interval of the retention sweeper.
pub(crate) const RETENTION_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

impl Default for Config {
    fn default() -> Self {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            hostname: "mx.agents.localhost".to_owned(),
            domain: Domain::try_from(DEFAULT_DOMAIN.to_owned()).unwrap_or_else(|_| unreachable!()),
            listen_inbound: addr(2525),
            listen_submission: addr(2587),
            listen_submission_tls: addr(2465),
            listen_http: addr(8787),
            listen_https: Some(addr(8443)),
            tls_cert: None,
            tls_key: None,
            max_message_size: 10 * 1024 * 1024,
            max_connections: 4096,
            max_connections_per_ip: 100,
            http: crate::http_listener::HttpLimits::default(),
            auth_failures_per_ip: 10,
            auth_failure_window_secs: 600,
            shutdown_grace_secs: 30,
            log: "info".to_owned(),
            public_url: IssuerUrl::from_str(DEFAULT_PUBLIC_URL).unwrap_or_else(|_| unreachable!()),
            oidc_audience: DEFAULT_AUDIENCE.to_owned(),
            delivery_enabled: true,
            delivery_smarthost: None,
            delivery_mx_port: agentkeys_delivery::SMTP_PORT,
            delivery_backoff_scale: 1.0,
            delivery_max_age_secs: agentkeys_delivery::MAX_AGE.as_secs(),
            retention_secs: DEFAULT_RETENTION.as_secs(),
            retention_sweep_secs: RETENTION_SWEEP_INTERVAL.as_secs(),
            notice_sweep_secs: NOTICE_SWEEP_INTERVAL.as_secs(),
            notice_audit_secs: NOTICE_AUDIT_INTERVAL.as_secs(),
            dns_nameservers: Vec::new(),
            delivery_require_tls: false,
            delivery_ca_file: None,
            delivery_mta_sts_port: agentkeys_delivery::MTA_STS_PORT,
            mta_sts_mode: StsMode::None,
            mta_sts_max_age: agentkeys_delivery::DEFAULT_MAX_AGE,
            mta_sts_mx: Vec::new(),
            tls_rpt: None,
            store_metadata: None,
            store_blobs: None,
            webhooks_allow_private: false,
            webhooks_backoff_scale: 1.0,
            backends_backoff_scale: 1.0,
            webhooks_concurrency: agentkeys_webhooks::worker::DEFAULT_CONCURRENCY,
            webhooks_expiry_notice_secs: agentkeys_webhooks::feeder::EXPIRY_NOTICE.as_secs(),
            webhooks_expiry_check_secs: agentkeys_webhooks::feeder::EXPIRY_CHECK.as_secs(),
            subaddressing: agentkeys_core::Subaddressing::default(),
            refuse_blocked_senders: true,
        }
    }
}

type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// One configurable key: its TOML path, environment variable, help, and parser.
pub(crate) struct Key {
    pub(crate) toml: &'static str,
    pub(crate) env: &'static str,
    pub(crate) help: &'static str,
    set: Setter,
}

fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse().map_err(|_| format!("expected an address like 127.0.0.1:2525, got {v:?}"))
}

fn parse_count<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("expected a positive whole number, got {v:?}"))
}

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(v: &str) -> Result<T, String> {
    let n: T = parse_count(v)?;
    if n <= T::default() {
        return Err(format!("expected a positive whole number, got {v:?}"));
    }
    Ok(n)
}

/// A duration (`30s`, `10m`) as a `Duration`; zero is refused.
fn parse_timeout(v: &str) -> Result<std::time::Duration, String> {
    parse_secs(v).map(std::time::Duration::from_secs)
}

fn parse_audience(v: &str) -> Result<String, String> {
    if v.is_empty() || v.len() > 255 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("expected 1-255 visible ASCII characters without spaces, got {v:?}"));
    }
    Ok(v.to_owned())
}

/// `policy.receive_action`: `true` for refuse, `false` for withhold.
fn parse_receive_action(v: &str) -> Result<bool, String> {
    match v {
        "refuse" => Ok(true),
        "withhold" => Ok(false),
        _ => Err(format!("expected refuse or withhold, got {v:?}")),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
    }
}

fn parse_host_port(v: &str) -> Result<(String, u16), String> {
    let bad = || format!("expected host:port like relay.example.com:587, got {v:?}");
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b)) {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

fn parse_scale(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("expected a number in (0, 1], got {v:?}")),
    }
}

/// `ip:port` or `ip` (port 53), comma-separated; empty means the system's.
fn parse_nameservers(v: &str) -> Result<Vec<SocketAddr>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| format!("expected name servers like 127.0.0.1:53,[::1]:53, got {s:?}"))
        })
        .collect()
}

/// `none`, `testing` or `enforce`.
fn parse_sts_mode(v: &str) -> Result<StsMode, String> {
    v.parse().map_err(|_| format!("expected none, testing or enforce, got {v:?}"))
}

/// Whole seconds (`604800`) or a duration (`7d`), 1 s to one year (RFC 8461).
fn parse_max_age(v: &str) -> Result<u32, String> {
    let secs = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>().map_err(|_| format!("expected seconds or a duration like 7d, got {v:?}"))?
    } else {
        parse_secs(v)?
    };
    match u32::try_from(secs) {
        Ok(s) if (1..=MAX_MAX_AGE).contains(&s) => Ok(s),
        _ => Err(format!("expected 1 to {MAX_MAX_AGE} seconds (one year, RFC 8461), got {v:?}")),
    }
}

/// MX host patterns (`mx.example.com`, `*.example.com`), comma-separated.
fn parse_mx_patterns(v: &str) -> Result<Vec<MxPattern>, String> {
    let patterns: Vec<MxPattern> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<MxPattern>().map_err(|e| format!("{e} (expected host names or *.domain patterns)")))
        .collect::<Result<_, _>>()?;
    if patterns.is_empty() {
        return Err("expected at least one MX host pattern".to_owned());
    }
    Ok(patterns)
}

fn parse_secs(v: &str) -> Result<u64, String> {
    parse_duration(v).map(|s| s.unsigned_abs()).map_err(|e| e.to_string())
}

/// Every key, in the order the docs list them.
pub(crate) const KEYS: &[Key] = &[
    Key { toml: "data_dir", env: "AGENTKEYS_DATA_DIR", help: "where metadata, blobs, the master seed and the TLS certificate live", set: |c, v| { c.data_dir = PathBuf::from(v); Ok(()) } },
    Key { toml: "store.metadata", env: "AGENTKEYS_DATABASE_URL", help: "where metadata lives: sqlite:<file> (default: meta.sqlite in the data directory) or postgres://user@host:5432/database, shared by every node", set: |c, v| { c.store_metadata = Some(crate::store_location::parse_metadata(v)?); Ok(()) } },
    Key { toml: "store.blobs", env: "AGENTKEYS_BLOBS", help: "where raw messages live: file:<directory> (default: blobs/ in the data directory) or s3://bucket/prefix (with AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), shared by every node", set: |c, v| { c.store_blobs = Some(crate::store_location::parse_blobs(v)?); Ok(()) } },
    Key { toml: "hostname", env: "AGENTKEYS_HOSTNAME", help: "this server's name in the SMTP greeting and Received: lines", set: |c, v| { let d: Domain = v.parse().map_err(|e: agentkeys_core::IdError| e.to_string())?; c.hostname = d.to_string(); Ok(()) } },
    Key { toml: "domain", env: "AGENTKEYS_DOMAIN", help: "the hosted domain created at start and used when no --domain is given", set: |c, v| { c.domain = v.parse().map_err(|e: agentkeys_core::IdError| e.to_string())?; Ok(()) } },
    Key { toml: "subaddress_separator", env: "AGENTKEYS_SUBADDRESS_SEPARATOR", help: "mail to local<sep>tag@domain goes to the inbox local@domain, the tag kept in Delivered-To: (one of + - _ =; empty turns it off; default +); inbox names containing it are refused", set: |c, v| { c.subaddressing = agentkeys_core::Subaddressing::parse(v)?; Ok(()) } },
    Key { toml: "listen.inbound", env: "AGENTKEYS_LISTEN_INBOUND", help: "inbound MX listener", set: |c, v| { c.listen_inbound = parse_addr(v)?; Ok(()) } },
    Key { toml: "listen.submission", env: "AGENTKEYS_LISTEN_SUBMISSION", help: "submission listener (STARTTLS)", set: |c, v| { c.listen_submission = parse_addr(v)?; Ok(()) } },
    Key { toml: "listen.submission_tls", env: "AGENTKEYS_LISTEN_SUBMISSION_TLS", help: "submission listener (implicit TLS)", set: |c, v| { c.listen_submission_tls = parse_addr(v)?; Ok(()) } },
    Key { toml: "listen.http", env: "AGENTKEYS_LISTEN_HTTP", help: "HTTP listener (/healthz, /readyz, /metrics, /v1 API, OIDC issuer)", set: |c, v| { c.listen_http = parse_addr(v)?; Ok(()) } },
    Key { toml: "listen.https", env: "AGENTKEYS_LISTEN_HTTPS", help: "HTTPS listener: the HTTP listener's API over TLS 1.2+ with tls.cert (or the generated self-signed certificate); \"off\": none", set: |c, v| { c.listen_https = if v == "off" { None } else { Some(parse_addr(v)?) }; Ok(()) } },
    Key { toml: "tls.cert", env: "AGENTKEYS_TLS_CERT", help: "PEM certificate chain; a self-signed one is generated when unset", set: |c, v| { c.tls_cert = Some(PathBuf::from(v)); Ok(()) } },
    Key { toml: "tls.key", env: "AGENTKEYS_TLS_KEY", help: "PEM private key for tls.cert", set: |c, v| { c.tls_key = Some(PathBuf::from(v)); Ok(()) } },
    Key { toml: "limits.max_message_size", env: "AGENTKEYS_MAX_MESSAGE_SIZE", help: "largest accepted message in bytes", set: |c, v| { c.max_message_size = parse_positive(v)?; Ok(()) } },
    Key { toml: "limits.max_connections", env: "AGENTKEYS_MAX_CONNECTIONS", help: "concurrent SMTP connections in total", set: |c, v| { c.max_connections = parse_positive(v)?; Ok(()) } },
    Key { toml: "limits.max_connections_per_ip", env: "AGENTKEYS_MAX_CONNECTIONS_PER_IP", help: "concurrent SMTP connections per client IP", set: |c, v| { c.max_connections_per_ip = parse_positive(v)?; Ok(()) } },
    Key { toml: "limits.http_max_connections", env: "AGENTKEYS_HTTP_MAX_CONNECTIONS", help: "concurrent HTTP connections in total (also bounded by the file descriptor limit, after the SMTP listeners' share); over it: 503 and close", set: |c, v| { c.http.max_connections = parse_positive(v)?; Ok(()) } },
    Key { toml: "limits.http_max_connections_per_ip", env: "AGENTKEYS_HTTP_MAX_CONNECTIONS_PER_IP", help: "concurrent HTTP connections per client IP (IPv6: per /64); raise it behind a reverse proxy", set: |c, v| { c.http.max_connections_per_ip = parse_positive(v)?; Ok(()) } },
    Key { toml: "limits.http_header_timeout", env: "AGENTKEYS_HTTP_HEADER_TIMEOUT", help: "time a client has to send a whole request head, from connect or the end of the previous response (e.g. 30s)", set: |c, v| { c.http.header_timeout = parse_timeout(v)?; Ok(()) } },
    Key { toml: "limits.http_idle_timeout", env: "AGENTKEYS_HTTP_IDLE_TIMEOUT", help: "longest time an HTTP connection may go without a byte read or written (at least 30s: event streams send a keep-alive every 15 s, pairing collects wait up to 25 s)", set: |c, v| { c.http.idle_timeout = crate::http_listener::check_idle_timeout(parse_timeout(v)?)?; Ok(()) } },
    Key { toml: "limits.http_connection_lifetime", env: "AGENTKEYS_HTTP_CONNECTION_LIFETIME", help: "an HTTP connection is closed after this long (e.g. 10m), unless it is carrying an event stream, which ends when its capability expires", set: |c, v| { c.http.connection_lifetime = parse_timeout(v)?; Ok(()) } },
    Key { toml: "limits.auth_failures_per_ip", env: "AGENTKEYS_AUTH_FAILURES_PER_IP", help: "failed AUTHs per IP within the window before AUTH is refused with 454", set: |c, v| { c.auth_failures_per_ip = parse_positive(v)?; Ok(()) } },
    Key { toml: "limits.auth_failure_window", env: "AGENTKEYS_AUTH_FAILURE_WINDOW", help: "window of the per-IP AUTH failure count (e.g. 10m)", set: |c, v| { c.auth_failure_window_secs = parse_secs(v)?; Ok(()) } },
    Key { toml: "limits.shutdown_grace", env: "AGENTKEYS_SHUTDOWN_GRACE", help: "how long in-flight sessions may finish after SIGTERM (e.g. 30s)", set: |c, v| { c.shutdown_grace_secs = parse_secs(v)?; Ok(()) } },
    Key { toml: "public_url", env: "AGENTKEYS_PUBLIC_URL", help: "the URL clients reach the HTTP listener at; the OIDC issuer (https://, or http:// for localhost)", set: |c, v| { c.public_url = v.parse().map_err(|e: agentkeys_broker::IssuerUrlError| e.reason.to_owned())?; Ok(()) } },
    Key { toml: "oidc_audience", env: "AGENTKEYS_OIDC_AUDIENCE", help: "the aud claim of minted OIDC tokens", set: |c, v| { c.oidc_audience = parse_audience(v)?; Ok(()) } },
    Key { toml: "policy.receive_action", env: "AGENTKEYS_RECEIVE_POLICY_ACTION", help: "mail an inbox's receive allow/block lists refuse: refuse (550 5.7.1 at the end of DATA, nothing stored; the default) or withhold (stored; the agent's list, get, wait and OTP tools never show it)", set: |c, v| { c.refuse_blocked_senders = parse_receive_action(v)?; Ok(()) } },
    Key { toml: "delivery.enabled", env: "AGENTKEYS_DELIVERY_ENABLED", help: "run the outbound queue runner in serve (true/false)", set: |c, v| { c.delivery_enabled = parse_bool(v)?; Ok(()) } },
    Key { toml: "delivery.smarthost", env: "AGENTKEYS_SMARTHOST", help: "relay all outbound mail through host:port instead of MX delivery", set: |c, v| { c.delivery_smarthost = Some(parse_host_port(v)?); Ok(()) } },
    Key { toml: "delivery.mx_port", env: "AGENTKEYS_DELIVERY_MX_PORT", help: "port MX hosts are contacted on (25; a testing/ops knob)", set: |c, v| { c.delivery_mx_port = parse_positive(v)?; Ok(()) } },
    Key { toml: "delivery.backoff_scale", env: "AGENTKEYS_DELIVERY_BACKOFF_SCALE", help: "multiplies retry backoff, lease and maximum age (1; tests only use less)", set: |c, v| { c.delivery_backoff_scale = parse_scale(v)?; Ok(()) } },
    Key { toml: "delivery.max_age", env: "AGENTKEYS_DELIVERY_MAX_AGE", help: "undelivered mail bounces after this long (e.g. 5d)", set: |c, v| { c.delivery_max_age_secs = parse_secs(v)?; Ok(()) } },
    Key { toml: "limits.retention", env: "AGENTKEYS_RETENTION", help: "messages are deleted after this long (e.g. 30d) unless their domain sets its own (agentkeys domain set-retention)", set: |c, v| { c.retention_secs = parse_secs(v)?; Ok(()) } },
    Key { toml: "limits.retention_sweep_interval", env: "AGENTKEYS_RETENTION_SWEEP_INTERVAL", help: "how often serve deletes expired messages (e.g. 5m)", set: |c, v| { c.retention_sweep_secs = parse_secs(v)?; Ok(()) } },
    Key { toml: "notices.sweep_interval", env: "AGENTKEYS_NOTICE_SWEEP_INTERVAL", help: "how often serve looks for expiring grants/keys and refused AUTHs to tell owners about (e.g. 5m)", set: |c, v| { c.notice_sweep_secs = parse_secs(v)?; Ok(()) } },
    Key { toml: "notices.audit_interval", env: "AGENTKEYS_NOTICE_AUDIT_INTERVAL", help: "how often serve verifies the audit chain and tells owners when it fails (e.g. 1h)", set: |c, v| { c.notice_audit_secs = parse_secs(v)?; Ok(()) } },
    Key { toml: "dns.nameservers", env: "AGENTKEYS_DNS_NAMESERVERS", help: "name servers (ip:port, comma-separated in the env, a list in TOML) for MX lookups and SPF/DKIM/DMARC checks; default: the system's", set: |c, v| { c.dns_nameservers = parse_nameservers(v)?; Ok(()) } },
    Key { toml: "delivery.require_tls", env: "AGENTKEYS_DELIVERY_REQUIRE_TLS", help: "deliver only over STARTTLS; a destination without it is deferred, never sent in plaintext (false)", set: |c, v| { c.delivery_require_tls = parse_bool(v)?; Ok(()) } },
    Key { toml: "delivery.ca_file", env: "AGENTKEYS_DELIVERY_CA_FILE", help: "PEM file of extra trust anchors, besides the webpki roots, for MX certificates under MTA-STS and for fetching MTA-STS policies", set: |c, v| { if v.is_empty() { return Err("expected a file path".to_owned()); } c.delivery_ca_file = Some(PathBuf::from(v)); Ok(()) } },
    Key { toml: "delivery.mta_sts_port", env: "AGENTKEYS_DELIVERY_MTA_STS_PORT", help: "HTTPS port MTA-STS policies are fetched from (443; for tests only)", set: |c, v| { c.delivery_mta_sts_port = parse_positive(v)?; Ok(()) } },
    Key { toml: "mta_sts.mode", env: "AGENTKEYS_MTA_STS_MODE", help: "MTA-STS policy published for the hosted domains: none (no policy), testing or enforce (RFC 8461; mta-sts.<domain> needs an HTTPS front)", set: |c, v| { c.mta_sts_mode = parse_sts_mode(v)?; Ok(()) } },
    Key { toml: "mta_sts.max_age", env: "AGENTKEYS_MTA_STS_MAX_AGE", help: "how long senders may cache the policy: seconds or a duration (604800 = 7d; at most 31557600)", set: |c, v| { c.mta_sts_max_age = parse_max_age(v)?; Ok(()) } },
    Key { toml: "mta_sts.mx", env: "AGENTKEYS_MTA_STS_MX", help: "the policy's MX host patterns (comma-separated in the env, a list in TOML; *.example.com allowed); default: the hostname", set: |c, v| { c.mta_sts_mx = parse_mx_patterns(v)?; Ok(()) } },
    Key { toml: "tls_rpt.rua", env: "AGENTKEYS_TLS_RPT_RUA", help: "where senders send TLS reports (RFC 8460), e.g. mailto:tlsrpt@example.com; publishes _smtp._tls.<domain>", set: |c, v| { c.tls_rpt = Some(TlsRpt::parse_rua(v).map_err(|e| e.to_string())?); Ok(()) } },
    Key { toml: "webhooks.allow_private", env: "AGENTKEYS_WEBHOOKS_ALLOW_PRIVATE", help: "let webhooks target loopback, private (RFC 1918, ULA), link-local, CGNAT and other non-public addresses (false: refused at creation and at every connect)", set: |c, v| { c.webhooks_allow_private = parse_bool(v)?; Ok(()) } },
    Key { toml: "backends.backoff_scale", env: "AGENTKEYS_BACKENDS_BACKOFF_SCALE", help: "multiplies the mail backends' reconnect backoff and the wait after a provider refused the login (1; tests only use less)", set: |c, v| { c.backends_backoff_scale = parse_scale(v)?; Ok(()) } },
    Key { toml: "webhooks.backoff_scale", env: "AGENTKEYS_WEBHOOKS_BACKOFF_SCALE", help: "multiplies the webhook retry schedule and its 24 h retry period (1; tests only use less)", set: |c, v| { c.webhooks_backoff_scale = parse_scale(v)?; Ok(()) } },
    Key { toml: "webhooks.concurrency", env: "AGENTKEYS_WEBHOOKS_CONCURRENCY", help: "most webhook deliveries in flight per node (16)", set: |c, v| { c.webhooks_concurrency = parse_positive(v)?; Ok(()) } },
    Key { toml: "webhooks.expiry_notice", env: "AGENTKEYS_WEBHOOKS_EXPIRY_NOTICE", help: "grant.expiring and key.expiring are sent this long before the expiry (e.g. 3d)", set: |c, v| { c.webhooks_expiry_notice_secs = parse_secs(v)?; Ok(()) } },
    Key { toml: "webhooks.expiry_check_interval", env: "AGENTKEYS_WEBHOOKS_EXPIRY_CHECK_INTERVAL", help: "how often serve looks for expiring grants and keys (e.g. 10m)", set: |c, v| { c.webhooks_expiry_check_secs = parse_secs(v)?; Ok(()) } },
    Key { toml: "log", env: "AGENTKEYS_LOG", help: "log filter (error, warn, info, debug, or a tracing directive)", set: |c, v| { c.log = v.to_owned(); Ok(()) } },
];

/// One bad setting: where it came from, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigProblem {
    pub(crate) source: String,
    pub(crate) key: String,
    pub(crate) message: String,
}

/// Every problem found while loading, reported together.
#[derive(Debug)]
pub(crate) struct ConfigErrors(pub(crate) Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem{}):", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for p in &self.0 {
            writeln!(f, "  {}: {}: {}", p.source, p.key, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Flattens a TOML table into `section.key` → scalar text.
fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, Result<String, String>>) {
    for (k, v) in table {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(&path, t, out),
            toml::Value::String(s) => {
                out.insert(path, Ok(s.clone()));
            }
            toml::Value::Integer(i) => {
                out.insert(path, Ok(i.to_string()));
            }
            toml::Value::Boolean(b) => {
                out.insert(path, Ok(b.to_string()));
            }
            // A list of strings (dns.nameservers) is read like its comma-separated env form.
            toml::Value::Array(items) if items.iter().all(|i| i.as_str().is_some_and(|s| !s.contains(','))) => {
                let joined: Vec<&str> = items.iter().filter_map(toml::Value::as_str).collect();
                out.insert(path, Ok(joined.join(",")));
            }
            other => {
                out.insert(path, Err(format!("expected a string or number, got {}", other.type_str())));
            }
        }
    }
}

/// Loads the configuration.
///
/// `file`: an explicit path (must exist), else `agentkeys.toml` in the working
/// directory if present. `env`: the process environment (injected for tests).
pub(crate) fn load(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigErrors> {
    let mut config = Config::default();
    let mut problems = Vec::new();

    let (path, required) = match file {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    let source = path.display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.parse::<toml::Table>() {
            Ok(table) => {
                let mut flat = BTreeMap::new();
                flatten("", &table, &mut flat);
                for (key, value) in flat {
                    let Some(spec) = KEYS.iter().find(|k| k.toml == key) else {
                        problems.push(ConfigProblem {
                            source: source.clone(),
                            key,
                            message: "unknown key (see `agentkeys config keys`)".to_owned(),
                        });
                        continue;
                    };
                    if let Err(message) = value.and_then(|v| (spec.set)(&mut config, &v)) {
                        problems.push(ConfigProblem { source: source.clone(), key, message });
                    }
                }
            }
            Err(e) => problems.push(ConfigProblem {
                source: source.clone(),
                key: "(file)".to_owned(),
                message: format!("not valid TOML: {}", e.message()),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
        Err(e) => problems.push(ConfigProblem {
            source: source.clone(),
            key: "(file)".to_owned(),
            message: format!("cannot read: {e}"),
        }),
    }

    for spec in KEYS {
        if let Some(value) = env.get(spec.env)
            && let Err(message) = (spec.set)(&mut config, value)
        {
            problems.push(ConfigProblem { source: "environment".to_owned(), key: spec.env.to_owned(), message });
        }
    }

    if config.tls_cert.is_some() != config.tls_key.is_some() {
        problems.push(ConfigProblem {
            source: "configuration".to_owned(),
            key: "tls.cert / tls.key".to_owned(),
            message: "set both or neither".to_owned(),
        });
    }

    if let Err(message) = config.http.check() {
        problems.push(ConfigProblem {
            source: "configuration".to_owned(),
            key: "limits.http_header_timeout / limits.http_connection_lifetime".to_owned(),
            message,
        });
    }

    if let Err(message) = config.mta_sts_policy() {
        problems.push(ConfigProblem { source: "configuration".to_owned(), key: "mta_sts.mx".to_owned(), message });
    }

    if problems.is_empty() { Ok(config) } else { Err(ConfigErrors(problems)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(Some(&write(&dir, "")), &env(&[])).unwrap();
        assert_eq!(c.listen_inbound.port(), 2525);
        assert_eq!(c.listen_submission.port(), 2587);
        assert_eq!(c.listen_submission_tls.port(), 2465);
        assert_eq!(c.listen_http.port(), 8787);
        assert_eq!(c.domain.as_str(), "agents.localhost");
        assert_eq!(c.data_dir, PathBuf::from("./agentkeys-data"));
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("agentkeys.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "domain = \"mail.example.com\"\n[listen]\ninbound = \"127.0.0.1:25\"\n[limits]\nauth_failures_per_ip = 3\n");
        let c = load(Some(&p), &env(&[("AGENTKEYS_AUTH_FAILURES_PER_IP", "7"), ("AGENTKEYS_AUTH_FAILURE_WINDOW", "2m")])).unwrap();
        assert_eq!(c.domain.as_str(), "mail.example.com");
        assert_eq!(c.listen_inbound.port(), 25);
        assert_eq!(c.auth_failures_per_ip, 7);
        assert_eq!(c.auth_failure_window_secs, 120);
    }

    #[test]
    fn every_bad_key_is_named_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "domain = \"not a domain\"\nbogus = 1\n[listen]\ninbound = \"nowhere\"\n[limits]\nmax_connections = 0\n");
        let err = load(Some(&p), &env(&[("AGENTKEYS_AUTH_FAILURE_WINDOW", "soon")])).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["bogus", "domain", "limits.max_connections", "listen.inbound", "AGENTKEYS_AUTH_FAILURE_WINDOW"]);
        let text = err.to_string();
        assert!(text.contains("5 problems"), "{text}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let err = load(Some(Path::new("/nonexistent/agentkeys.toml")), &env(&[])).unwrap_err();
        assert_eq!(err.0[0].key, "(file)");
    }

    #[test]
    fn every_key_has_a_distinct_env_var() {
        let mut seen = std::collections::HashSet::new();
        for k in KEYS {
            assert!(k.env.starts_with("AGENTKEYS_"), "{}", k.env);
            assert!(seen.insert(k.env), "duplicate {}", k.env);
            assert!(!k.help.is_empty());
        }
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn nameservers_from_file_list_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentkeys.toml");
        std::fs::write(&p, "").unwrap();
        assert!(load(Some(&p), &env(&[])).unwrap().dns_nameservers.is_empty(), "default: system");
        std::fs::write(&p, "[dns]\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\n").unwrap();
        let c = load(Some(&p), &env(&[])).unwrap();
        assert_eq!(c.dns_nameservers, ["127.0.0.1:5353".parse::<SocketAddr>().unwrap(), "[::1]:53".parse().unwrap()]);
        let c = load(Some(&p), &env(&[("AGENTKEYS_DNS_NAMESERVERS", "127.0.0.2:53, 127.0.0.3")])).unwrap();
        assert_eq!(c.dns_nameservers, ["127.0.0.2:53".parse::<SocketAddr>().unwrap(), "127.0.0.3:53".parse().unwrap()]);
        let err = load(Some(&p), &env(&[("AGENTKEYS_DNS_NAMESERVERS", "dns.example:53")])).unwrap_err();
        assert_eq!(err.0[0].key, "AGENTKEYS_DNS_NAMESERVERS");
        std::fs::write(&p, "[dns]\nnameservers = [53]\n").unwrap();
        assert_eq!(load(Some(&p), &env(&[])).unwrap_err().0[0].key, "dns.nameservers");
    }
}

#[cfg(test)]
mod public_url_tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn public_url_and_audience() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentkeys.toml");
        std::fs::write(&p, "").unwrap();
        let c = load(Some(&p), &env(&[])).unwrap();
        assert_eq!(c.public_url.as_str(), "http://127.0.0.1:8787");
        assert_eq!(c.oidc_audience, "sts.amazonaws.com");
        std::fs::write(&p, "public_url = \"https://mail.example.com/\"\noidc_audience = \"my-app\"\n").unwrap();
        let c = load(Some(&p), &env(&[])).unwrap();
        assert_eq!(c.public_url.as_str(), "https://mail.example.com");
        assert_eq!(c.oidc_audience, "my-app");
        let err = load(
            Some(&p),
            &env(&[("AGENTKEYS_PUBLIC_URL", "http://mail.example.com"), ("AGENTKEYS_OIDC_AUDIENCE", "two words")]),
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["AGENTKEYS_PUBLIC_URL", "AGENTKEYS_OIDC_AUDIENCE"]);
        assert!(err.to_string().contains("https://"), "{err}");
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    #[test]
    fn retention_defaults_to_30_days_swept_every_5_minutes_and_is_configurable() {
        assert_eq!(DEFAULT_RETENTION.as_secs(), 30 * 86_400);
        assert_eq!(RETENTION_SWEEP_INTERVAL.as_secs(), 300);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentkeys.toml");
        std::fs::write(&p, "[limits]\nretention = \"7d\"\n").unwrap();
        let c = load(Some(&p), &BTreeMap::new()).unwrap();
        assert_eq!((c.retention_secs, c.retention_sweep_secs), (7 * 86_400, 300));
        let env: BTreeMap<String, String> =
            [("AGENTKEYS_RETENTION_SWEEP_INTERVAL".to_owned(), "1s".to_owned())].into_iter().collect();
        assert_eq!(load(Some(&p), &env).unwrap().retention_sweep_secs, 1);
        std::fs::write(&p, "[limits]\nretention = \"0d\"\n").unwrap();
        let err = load(Some(&p), &BTreeMap::new()).unwrap_err();
        assert_eq!(err.0[0].key, "limits.retention");
    }
}

#[cfg(test)]
mod mta_sts_tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn mta_sts_is_off_by_default_and_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentkeys.toml");
        std::fs::write(&p, "").unwrap();
        let c = load(Some(&p), &env(&[])).unwrap();
        assert_eq!((c.mta_sts_mode, c.mta_sts_max_age, c.delivery_mta_sts_port), (StsMode::None, 604_800, 443));
        assert_eq!(c.mta_sts_policy(), Ok(None));
        assert!(c.tls_rpt.is_none() && c.delivery_ca_file.is_none());
        std::fs::write(
            &p,
            "hostname = \"mx.example.com\"\n[mta_sts]\nmode = \"enforce\"\nmax_age = 86400\n[tls_rpt]\nrua = \"mailto:tlsrpt@example.com\"\n[delivery]\nca_file = \"/etc/ca.pem\"\nmta_sts_port = 8443\n",
        )
        .unwrap();
        let c = load(Some(&p), &env(&[])).unwrap();
        let policy = c.mta_sts_policy().unwrap().unwrap();
        assert_eq!(policy.to_text(), "version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 86400\r\n", "mx defaults to the hostname");
        assert_eq!(c.tls_rpt.as_ref().unwrap().record(), "v=TLSRPTv1; rua=mailto:tlsrpt@example.com");
        assert_eq!((c.delivery_mta_sts_port, c.delivery_ca_file.as_deref()), (8443, Some(Path::new("/etc/ca.pem"))));
        let c = load(Some(&p), &env(&[("AGENTKEYS_MTA_STS_MX", "mx1.example.com, *.mx.example.com"), ("AGENTKEYS_MTA_STS_MAX_AGE", "7d")])).unwrap();
        assert_eq!(c.mta_sts_policy().unwrap().unwrap().mx_list(), "mx1.example.com, *.mx.example.com");
        assert_eq!(c.mta_sts_max_age, 604_800);
        std::fs::write(&p, "[mta_sts]\nmode = \"testing\"\nmx = [\"a.example.com\", \"*.b.example.com\"]\n").unwrap();
        assert_eq!(load(Some(&p), &env(&[])).unwrap().mta_sts_policy().unwrap().unwrap().mx_list(), "a.example.com, *.b.example.com");
    }

    #[test]
    fn every_bad_mta_sts_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentkeys.toml");
        std::fs::write(
            &p,
            "[mta_sts]\nmode = \"strict\"\nmax_age = 31557601\nmx = [\"bad..name\"]\n[tls_rpt]\nrua = \"tlsrpt@example.com\"\n[delivery]\nmta_sts_port = 0\n",
        )
        .unwrap();
        let err = load(Some(&p), &env(&[("AGENTKEYS_MTA_STS_MAX_AGE", "0")])).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["delivery.mta_sts_port", "mta_sts.max_age", "mta_sts.mode", "mta_sts.mx", "tls_rpt.rua", "AGENTKEYS_MTA_STS_MAX_AGE"]
        );
        assert!(err.to_string().contains("31557600"), "{err}");
    }
}

#[cfg(test)]
mod http_limits_tests {
    use super::*;
    use crate::http_listener::{
        DEFAULT_HTTP_CONNECTION_LIFETIME, DEFAULT_HTTP_HEADER_TIMEOUT, DEFAULT_HTTP_IDLE_TIMEOUT,
        DEFAULT_HTTP_MAX_CONNECTIONS, DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP, MIN_HTTP_IDLE_TIMEOUT,
    };
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn http_limits_default_and_are_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentkeys.toml");
        std::fs::write(&p, "").unwrap();
        let h = load(Some(&p), &env(&[])).unwrap().http;
        assert_eq!(
            (h.max_connections, h.max_connections_per_ip, h.header_timeout, h.idle_timeout, h.connection_lifetime),
            (
                DEFAULT_HTTP_MAX_CONNECTIONS,
                DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP,
                DEFAULT_HTTP_HEADER_TIMEOUT,
                DEFAULT_HTTP_IDLE_TIMEOUT,
                DEFAULT_HTTP_CONNECTION_LIFETIME
            )
        );
        std::fs::write(
            &p,
            "[limits]\nhttp_max_connections = 50\nhttp_max_connections_per_ip = 5\nhttp_header_timeout = \"2s\"\nhttp_idle_timeout = \"1m\"\nhttp_connection_lifetime = \"1h\"\n",
        )
        .unwrap();
        let h = load(Some(&p), &env(&[("AGENTKEYS_HTTP_MAX_CONNECTIONS_PER_IP", "7")])).unwrap().http;
        assert_eq!((h.max_connections, h.max_connections_per_ip), (50, 7));
        assert_eq!(
            (h.header_timeout, h.idle_timeout, h.connection_lifetime),
            (Duration::from_secs(2), Duration::from_secs(60), Duration::from_secs(3600))
        );
    }

    #[test]
    fn every_bad_http_limit_is_named_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentkeys.toml");
        let too_short = format!("{}s", MIN_HTTP_IDLE_TIMEOUT.as_secs() - 1);
        std::fs::write(
            &p,
            format!("[limits]\nhttp_max_connections = 0\nhttp_header_timeout = \"soon\"\nhttp_idle_timeout = \"{too_short}\"\n"),
        )
        .unwrap();
        let err = load(Some(&p), &env(&[("AGENTKEYS_HTTP_CONNECTION_LIFETIME", "0s"), ("AGENTKEYS_HTTP_MAX_CONNECTIONS_PER_IP", "-1")])).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "limits.http_header_timeout",
                "limits.http_idle_timeout",
                "limits.http_max_connections",
                "AGENTKEYS_HTTP_MAX_CONNECTIONS_PER_IP",
                "AGENTKEYS_HTTP_CONNECTION_LIFETIME"
            ]
        );
        assert!(err.to_string().contains("30s"), "{err}");
        // A lifetime shorter than the header timeout leaves no time for a request.
        std::fs::write(&p, "[limits]\nhttp_header_timeout = \"2m\"\nhttp_connection_lifetime = \"1m\"\n").unwrap();
        let err = load(Some(&p), &env(&[])).unwrap_err();
        assert_eq!(err.0[0].key, "limits.http_header_timeout / limits.http_connection_lifetime");
    }
}

#[cfg(test)]
mod subaddress_tests {
    use super::*;

    #[test]
    fn the_subaddress_separator_defaults_to_plus_and_is_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentkeys.toml");
        std::fs::write(&p, "subaddress_separator = \"-\"\n").unwrap();
        let none = BTreeMap::new();
        assert_eq!(load(Some(&p), &none).unwrap().subaddressing.separator(), Some('-'));
        let env: BTreeMap<String, String> =
            [("AGENTKEYS_SUBADDRESS_SEPARATOR".to_owned(), String::new())].into_iter().collect();
        assert_eq!(load(Some(&p), &env).unwrap().subaddressing.separator(), None);
        std::fs::write(&p, "").unwrap();
        assert_eq!(load(Some(&p), &none).unwrap().subaddressing.separator(), Some('+'));
        std::fs::write(&p, "subaddress_separator = \".\"\n").unwrap();
        let err = load(Some(&p), &none).unwrap_err();
        assert_eq!(err.0[0].key, "subaddress_separator");
    }

    #[test]
    fn receive_policy_action_refuses_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agentkeys.toml");
        let env = |v: Option<&str>| -> BTreeMap<String, String> {
            v.map(|v| ("AGENTKEYS_RECEIVE_POLICY_ACTION".to_owned(), v.to_owned())).into_iter().collect()
        };
        std::fs::write(&p, "").unwrap();
        assert!(load(Some(&p), &env(None)).unwrap().refuse_blocked_senders);
        std::fs::write(&p, "[policy]\nreceive_action = \"withhold\"\n").unwrap();
        assert!(!load(Some(&p), &env(None)).unwrap().refuse_blocked_senders);
        assert!(load(Some(&p), &env(Some("refuse"))).unwrap().refuse_blocked_senders);
        let err = load(Some(&p), &env(Some("flag"))).unwrap_err();
        assert_eq!(err.0[0].key, "AGENTKEYS_RECEIVE_POLICY_ACTION");
    }
}

//! The daemon's configuration: the `agent.json` that pairing writes
//! (`{server, agent_id, agent_key, server_fingerprint, send_via, submission,
//! hostname}`: everything needed to read and send), overridden by the environment
//! (`AGENTKEYS_SERVER`, `AGENTKEYS_AGENT_KEY`, …). Every problem is reported at
//! once, each naming the fix.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::tls::{Fingerprint, Trust};

/// The server's HTTP API, e.g. `https://mail.example.com:8443` or `http://127.0.0.1:8787`.
pub const SERVER_ENV: &str = "AGENTKEYS_SERVER";
/// The agent key (`ak_…`).
pub const AGENT_KEY_ENV: &str = "AGENTKEYS_AGENT_KEY";
/// The submission listener (`host:port`, STARTTLS); default: the server's host, port [`DEFAULT_SUBMISSION_PORT`].
pub const SUBMISSION_ENV: &str = "AGENTKEYS_SUBMISSION";
/// A PEM file of certificates to trust for HTTPS and submission TLS (a private
/// CA, or the server's own `<data-dir>/tls/cert.pem`), besides the pinned
/// certificate and the webpki roots.
pub use crate::tls::{CA_FILE_ENV, SERVER_FINGERPRINT_ENV};
/// How mail is sent: `smtp` (submission, the default) or `http` (`POST /v1/inboxes/{address}/send`).
pub const SEND_VIA_ENV: &str = "AGENTKEYS_SEND_VIA";
/// The server's hostname: the authserv-id of the `Authentication-Results`
/// headers our MX writes (the server's `hostname` setting).
pub const HOSTNAME_ENV: &str = "AGENTKEYS_HOSTNAME";

/// The server's default hostname (its `hostname` setting's default).
pub const DEFAULT_HOSTNAME: &str = "mx.agents.localhost";
/// The server's default submission port (STARTTLS).
pub const DEFAULT_SUBMISSION_PORT: u16 = 2587;

/// How the daemon submits mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendVia {
    /// SMTP submission: STARTTLS, AUTH PLAIN with the inbox address and the agent key.
    Smtp,
    /// The HTTP send endpoint with the agent key as bearer.
    Http,
}

/// The agent key: redacted in `Debug`, handed only to the server.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKeySecret(String);

impl AgentKeySecret {
    /// The key, for the `Authorization` header and the SMTP AUTH password.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AgentKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentKeySecret(<redacted>)")
    }
}

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Base URL of the HTTP API, without a trailing slash (`https://host:port` or `http://host:port`).
    pub server: String,
    /// Host and port of the HTTP API, from [`server`](Self::server).
    pub http_authority: String,
    /// The agent key.
    pub agent_key: AgentKeySecret,
    /// The agent id, when known (from `agent.json`).
    pub agent_id: Option<String>,
    /// Submission host (for TLS name checks) and port.
    pub submission_host: String,
    /// Submission port.
    pub submission_port: u16,
    /// Certificates to trust for HTTPS and submission TLS.
    pub ca_file: Option<PathBuf>,
    /// The server certificate pinned at pairing (HTTPS and submission).
    pub server_fingerprint: Option<Fingerprint>,
    /// How mail is sent.
    pub send_via: SendVia,
    /// The server's hostname (authserv-id of its `Authentication-Results`).
    pub hostname: String,
    /// Where the settings came from, for messages.
    pub source: String,
}

/// Every problem found in the configuration, each naming the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the agent is not configured:\n{}", .problems.iter().map(|p| format!("  - {p}\n")).collect::<String>())]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// `agent.json` as pairing writes it.
#[derive(Debug, Deserialize)]
struct AgentFile {
    server: Option<String>,
    agent_id: Option<String>,
    agent_key: Option<String>,
    submission: Option<String>,
    ca_file: Option<PathBuf>,
    server_fingerprint: Option<String>,
    send_via: Option<String>,
    hostname: Option<String>,
}

/// Splits `https://host:port[/]` or `http://…` into (base URL without trailing
/// slash, `host:port`, host).
pub fn parse_server(url: &str) -> Result<(String, String, String), String> {
    let trimmed = url.trim().trim_end_matches('/');
    let (scheme, default_port, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
        ("https", 443, rest)
    } else if let Some(rest) = trimmed.strip_prefix("http://") {
        ("http", 80, rest)
    } else {
        return Err(format!("server {url:?} is not an https:// or http:// URL (e.g. https://mail.example.com:8443)"));
    };
    if rest.is_empty() || rest.contains('/') || rest.contains('@') || rest.contains('?') || rest.contains('#') {
        return Err(format!("server {url:?}: give only scheme, host and port, e.g. https://mail.example.com:8443"));
    }
    let (host, authority) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
            if p.parse::<u16>().is_err() {
                return Err(format!("server {url:?}: the port {p:?} is not a number"));
            }
            (h.trim_start_matches('[').trim_end_matches(']').to_owned(), rest.to_owned())
        }
        _ => (rest.to_owned(), format!("{rest}:{default_port}")),
    };
    Ok((format!("{scheme}://{rest}"), authority, host))
}

fn parse_send_via(v: &str) -> Result<SendVia, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "smtp" => Ok(SendVia::Smtp),
        "http" => Ok(SendVia::Http),
        other => Err(format!("send_via {other:?}: expected smtp or http")),
    }
}

fn parse_submission(v: &str) -> Result<(String, u16), String> {
    if let Ok(addr) = v.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = v.rsplit_once(':').ok_or_else(|| format!("submission {v:?}: expected host:port"))?;
    let port = port.parse::<u16>().map_err(|_| format!("submission {v:?}: the port is not a number"))?;
    if host.is_empty() {
        return Err(format!("submission {v:?}: expected host:port"));
    }
    Ok((host.to_owned(), port))
}

impl AgentConfig {
    /// Whom this agent trusts for HTTPS and submission TLS.
    pub fn trust(&self) -> Trust {
        Trust { ca_file: self.ca_file.clone(), pin: self.server_fingerprint, first_contact: false }
    }

    /// Loads `file` (if it exists) and applies `env` over it. `file` is the
    /// `agent.json` pairing writes (`agentkeys agent pair`).
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
        let mut from_file: Option<AgentFile> = None;
        let mut source = "the environment".to_owned();
        if let Some(path) = file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<AgentFile>(&bytes) {
                    Ok(f) => {
                        from_file = Some(f);
                        source = path.display().to_string();
                    }
                    Err(e) => problems.push(format!(
                        "{}: not a valid agent config ({e}); pair again with `agentkeys agent pair --server URL` or set {SERVER_ENV} and {AGENT_KEY_ENV}",
                        path.display()
                    )),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("{}: cannot read ({e})", path.display())),
            }
        }
        let f = from_file.unwrap_or(AgentFile {
            server: None,
            agent_id: None,
            agent_key: None,
            submission: None,
            ca_file: None,
            server_fingerprint: None,
            send_via: None,
            hostname: None,
        });
        let where_file = file.map_or_else(|| "agent.json".to_owned(), |p| p.display().to_string());
        let server = var(SERVER_ENV).or(f.server);
        let key = var(AGENT_KEY_ENV).or(f.agent_key);
        let parsed_server = match &server {
            None => {
                problems.push(format!(
                    "no server: pair with `agentkeys agent pair --server URL` (writes {where_file}) or set {SERVER_ENV}=https://host:8443"
                ));
                None
            }
            Some(s) => match parse_server(s) {
                Ok(p) => Some(p),
                Err(e) => {
                    problems.push(format!("{e} (set {SERVER_ENV} or `server` in {where_file})"));
                    None
                }
            },
        };
        let key = match key {
            None => {
                problems.push(format!(
                    "no agent key: pair with `agentkeys agent pair --server URL` (writes {where_file}) or set {AGENT_KEY_ENV}=ak_…"
                ));
                None
            }
            Some(k) if !k.starts_with("ak_") || k.len() < 10 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                problems.push(format!(
                    "the agent key is not an agent key (expected ak_ followed by letters and digits); check {AGENT_KEY_ENV} or {where_file}"
                ));
                None
            }
            Some(k) => Some(AgentKeySecret(k)),
        };
        let send_via = match var(SEND_VIA_ENV).or(f.send_via) {
            None => SendVia::Smtp,
            Some(v) => parse_send_via(&v).unwrap_or_else(|e| {
                problems.push(format!("{e} (set {SEND_VIA_ENV})"));
                SendVia::Smtp
            }),
        };
        let submission = match var(SUBMISSION_ENV).or(f.submission) {
            None => None,
            Some(v) => match parse_submission(&v) {
                Ok(p) => Some(p),
                Err(e) => {
                    problems.push(format!("{e} (set {SUBMISSION_ENV}=host:port)"));
                    None
                }
            },
        };
        let ca_file = var(CA_FILE_ENV).map(PathBuf::from).or(f.ca_file);
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            problems.push(format!(
                "{CA_FILE_ENV}={}: no such file (the server's certificate is <data-dir>/tls/cert.pem)",
                ca.display()
            ));
        }
        let server_fingerprint = match var(SERVER_FINGERPRINT_ENV).or(f.server_fingerprint) {
            None => None,
            Some(v) => match v.parse::<Fingerprint>() {
                Ok(fp) => Some(fp),
                Err(e) => {
                    problems.push(format!("{e} (set {SERVER_FINGERPRINT_ENV} or `server_fingerprint` in {where_file}, or pair again)"));
                    None
                }
            },
        };
        let hostname = var(HOSTNAME_ENV).or(f.hostname).unwrap_or_else(|| DEFAULT_HOSTNAME.to_owned());
        match (parsed_server, key) {
            (Some((server, http_authority, host)), Some(agent_key)) if problems.is_empty() => {
                let (submission_host, submission_port) = submission.unwrap_or((host, DEFAULT_SUBMISSION_PORT));
                Ok(Self {
                    server,
                    http_authority,
                    agent_key,
                    agent_id: f.agent_id,
                    submission_host,
                    submission_port,
                    ca_file,
                    server_fingerprint,
                    send_via,
                    hostname: hostname.to_ascii_lowercase(),
                    source,
                })
            }
            _ => Err(ConfigError { problems }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const KEY: &str = "ak_0123456789abcdefghijABCDEFGHIJ0123456789abc";

    #[test]
    fn env_alone_is_enough() {
        let c = AgentConfig::load(None, &env(&[(SERVER_ENV, "http://127.0.0.1:8787/"), (AGENT_KEY_ENV, KEY)])).unwrap();
        assert_eq!(c.server, "http://127.0.0.1:8787");
        assert_eq!(c.http_authority, "127.0.0.1:8787");
        assert_eq!((c.submission_host.as_str(), c.submission_port), ("127.0.0.1", DEFAULT_SUBMISSION_PORT));
        assert_eq!(c.send_via, SendVia::Smtp);
        assert_eq!(c.hostname, DEFAULT_HOSTNAME);
        assert!(!format!("{c:?}").contains(KEY), "the key must not show in Debug");
    }

    #[test]
    fn missing_everything_names_every_fix() {
        let e = AgentConfig::load(None, &env(&[])).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        let text = e.to_string();
        assert!(text.contains("agentkeys agent pair"), "{text}");
        assert!(text.contains(SERVER_ENV) && text.contains(AGENT_KEY_ENV), "{text}");
    }

    #[test]
    fn bad_values_are_all_reported() {
        let e = AgentConfig::load(
            None,
            &env(&[
                (SERVER_ENV, "ftp://mail.example.com"),
                (AGENT_KEY_ENV, "secret"),
                (SEND_VIA_ENV, "pigeon"),
                (SUBMISSION_ENV, "nope"),
                (CA_FILE_ENV, "/nonexistent/ca.pem"),
                (SERVER_FINGERPRINT_ENV, "AB:CD"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 6, "{e}");
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        std::fs::write(&path, format!(r#"{{"server":"http://localhost:9999","agent_id":"0xab","agent_key":"{KEY}"}}"#)).unwrap();
        let c = AgentConfig::load(Some(&path), &env(&[])).unwrap();
        assert_eq!(c.server, "http://localhost:9999");
        assert_eq!(c.agent_id.as_deref(), Some("0xab"));
        let c = AgentConfig::load(
            Some(&path),
            &env(&[(SERVER_ENV, "http://127.0.0.1:1"), (SUBMISSION_ENV, "127.0.0.1:2"), (SEND_VIA_ENV, "HTTP")]),
        )
        .unwrap();
        assert_eq!(c.server, "http://127.0.0.1:1");
        assert_eq!((c.submission_host.as_str(), c.submission_port), ("127.0.0.1", 2));
        assert_eq!(c.send_via, SendVia::Http);
        std::fs::write(&path, "{not json").unwrap();
        let e = AgentConfig::load(Some(&path), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("not a valid agent config"), "{e}");
    }

    #[test]
    fn server_urls() {
        assert_eq!(parse_server("http://localhost").unwrap().1, "localhost:80");
        assert_eq!(parse_server("https://mail.example.com/").unwrap(), ("https://mail.example.com".to_owned(), "mail.example.com:443".to_owned(), "mail.example.com".to_owned()));
        assert_eq!(parse_server("https://127.0.0.1:8443").unwrap().1, "127.0.0.1:8443");
        assert_eq!(parse_server("http://[::1]:8787").unwrap().2, "::1");
        assert!(parse_server("http://h:8787/path").is_err());
        assert!(parse_server("ftp://h").is_err());
        assert!(parse_server("http://h:port").is_err());
    }
}

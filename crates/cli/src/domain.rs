//! `agentkeys domain …`: hosted domains, their DKIM keys and the DNS records to
//! publish; and the DKIM signer the server hands the SMTP submission path.

use std::sync::Arc;

use agentkeys_audit::{Actor, AuditEvent, ops};
use agentkeys_core::Domain;
use agentkeys_delivery::{DomainKeyring, DomainStatus, HickoryResolver, verify_domain, zone_file};
use agentkeys_smtp::OutboundSigner;
use agentkeys_store::{OP_DOMAIN_ASSIGN, OP_DOMAIN_SET_BACKEND, OP_DOMAIN_SET_RETENTION, StoreError};
use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::datadir::DataDir;

/// `agentkeys domain …`
#[derive(Debug, Subcommand)]
pub(crate) enum DomainCmd {
    /// Host a domain: creates its DKIM keys (Ed25519 derived, RSA-2048 stored wrapped).
    /// `--backend imap` receives and sends its mail through an external mailbox,
    /// `--backend ses` through AWS SES and an S3 bucket.
    Add {
        /// The domain, e.g. mail.example.com.
        domain: String,
        #[command(flatten)]
        backend: Box<BackendArgs>,
    },
    /// Choose how a hosted domain's mail is received and sent: `native` (our own
    /// MX and delivery), `imap` (an external mailbox: IMAP IDLE in, the
    /// provider's submission server out) or `ses` (AWS SES: its receipt rule's
    /// S3 objects in, SendRawEmail out). Takes effect at the server's next start.
    SetBackend {
        /// The domain.
        domain: String,
        #[command(flatten)]
        backend: Box<BackendArgs>,
    },
    /// List hosted domains with their DKIM key versions and selectors.
    List,
    /// Stop hosting a domain (refused while it has inboxes) and delete its DKIM keys.
    Remove {
        /// The domain.
        domain: String,
    },
    /// Assign a domain to one owner: only then may that owner's agents create
    /// inboxes on it (`create` grants). `--shared` makes it shared again (no
    /// agent creates inboxes there; the operator and owners still can).
    Assign {
        /// The domain.
        domain: String,
        /// The owner it is assigned to (`0x` + 40 hex digits).
        #[arg(long, required_unless_present = "shared", conflicts_with = "shared")]
        owner: Option<String>,
        /// Share it among every owner again.
        #[arg(long)]
        shared: bool,
    },
    /// Keep a domain's messages this long (e.g. 7d), or `default` for the server's
    /// `limits.retention`. Older messages are deleted by the server's sweeper.
    SetRetention {
        /// The domain.
        domain: String,
        /// A duration such as 12h, 7d or 90d, or `default`.
        retention: String,
    },
    /// Check the published DNS records (MX, SPF, DMARC, each DKIM selector, and
    /// MTA-STS / TLS-RPT when configured) and store the domain's status
    /// (`domain list` shows it). Exit 1 unless verified.
    Verify {
        /// The domain.
        domain: String,
        /// Host name the MX record must point to (default: the configured hostname).
        #[arg(long, value_name = "HOST")]
        mx_host: Option<String>,
    },
    /// Print the DNS records to publish (BIND zone file syntax): MX, SPF, DMARC,
    /// DKIM, and `_mta-sts` / `_smtp._tls` when `mta_sts.mode` / `tls_rpt.rua` are set.
    Dns {
        /// The domain.
        domain: String,
        /// Host name the MX record points to (default: the configured hostname).
        #[arg(long, value_name = "HOST")]
        mx_host: Option<String>,
    },
}

/// A domain's mail backend, as `domain add` and `domain set-backend` take it.
#[derive(Debug, clap::Args)]
pub(crate) struct BackendArgs {
    /// native (our own MTA, the default), imap (an external IMAP/SMTP mailbox)
    /// or ses (AWS SES receiving into S3, sending with SendRawEmail).
    #[arg(long, default_value = "native")]
    backend: String,
    /// imap: the IMAP server (TLS from the first byte).
    #[arg(long, value_name = "HOST")]
    imap_host: Option<String>,
    /// imap: its port.
    #[arg(long, default_value_t = 993)]
    imap_port: u16,
    /// imap: the mailbox followed.
    #[arg(long, default_value = "INBOX")]
    mailbox: String,
    /// imap: the submission server outbound mail goes through (with AUTH).
    #[arg(long, value_name = "HOST")]
    smtp_host: Option<String>,
    /// imap: its port.
    #[arg(long, default_value_t = 587)]
    smtp_port: u16,
    /// imap: `starttls` (required, never plaintext) or `implicit` (port 465).
    #[arg(long, default_value = "starttls")]
    smtp_tls: String,
    /// imap: the login of both servers.
    #[arg(long)]
    username: Option<String>,
    /// imap: a file holding the password (an app password); or set
    /// AGENTKEYS_BACKEND_PASSWORD. Never given on the command line.
    #[arg(long, value_name = "PATH")]
    password_file: Option<std::path::PathBuf>,
    /// imap: log in with XOAUTH2 instead of a password: the provider's OAuth2
    /// token endpoint (https; http only on loopback), e.g.
    /// https://oauth2.googleapis.com/token. Needs the three options below.
    #[arg(long, value_name = "URL", conflicts_with = "password_file")]
    oauth2_token_url: Option<String>,
    /// imap with XOAUTH2: the OAuth client id.
    #[arg(long, value_name = "ID", requires = "oauth2_token_url")]
    oauth2_client_id: Option<String>,
    /// imap with XOAUTH2: a file holding the OAuth client secret (sealed, never logged).
    #[arg(long, value_name = "PATH", requires = "oauth2_token_url")]
    oauth2_client_secret_file: Option<std::path::PathBuf>,
    /// imap with XOAUTH2: a file holding the refresh token obtained once with
    /// the mailbox owner's consent (sealed, never logged).
    #[arg(long, value_name = "PATH", requires = "oauth2_token_url")]
    oauth2_refresh_token_file: Option<std::path::PathBuf>,
    /// imap: the hosted inbox the mailbox's messages are delivered to.
    #[arg(long, value_name = "ADDRESS")]
    deliver_to: Option<String>,
    /// ses: the bucket the receipt rule's S3 action writes to.
    #[arg(long, value_name = "BUCKET")]
    bucket: Option<String>,
    /// ses: the receipt rule's object key prefix (`inbound/`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// ses: the AWS region of SES, S3 and STS.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// ses: one endpoint for STS, SES and S3 instead of AWS's (an emulator).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// ses: the IAM role assumed with the server's own OIDC token
    /// (AssumeRoleWithWebIdentity); no static cloud credentials.
    #[arg(long, value_name = "ARN")]
    role_arn: Option<String>,
    /// ses: explicit fallback to static keys: a file holding
    /// ACCESS_KEY_ID:SECRET_ACCESS_KEY (sealed in the store, never logged).
    #[arg(long, value_name = "PATH")]
    aws_keys_file: Option<std::path::PathBuf>,
    /// ses: seconds between two listings of the bucket.
    #[arg(long, default_value_t = 10)]
    poll_seconds: u64,
    /// ses: the SQS queue (subscribed to the S3 action's SNS topic) that
    /// announces each object with all its envelope recipients; replaces the
    /// listing.
    #[arg(long, value_name = "URL")]
    queue_url: Option<String>,
}

/// What `domain add|set-backend --backend` asks for (checked, not yet stored).
pub(crate) enum BackendChoice {
    /// Our own MTA.
    Native,
    /// An external IMAP/SMTP mailbox and its password.
    Imap(agentkeys_backends::ImapSettings, agentkeys_backends::Credential),
    /// AWS SES + S3, and its static keys if the operator chose them.
    Ses(agentkeys_backends::ses::SesSettings, Option<agentkeys_backends::Credential>),
}

/// The environment variable `--password-file` may be replaced by.
const BACKEND_PASSWORD_ENV: &str = "AGENTKEYS_BACKEND_PASSWORD";

/// What `args` asks for, checked.
fn backend_choice(domain: &Domain, args: BackendArgs) -> Result<BackendChoice> {
    let kind: agentkeys_backends::BackendKind = args.backend.parse().map_err(|e: String| anyhow!("--backend: {e}"))?;
    if kind == agentkeys_backends::BackendKind::Native {
        return Ok(BackendChoice::Native);
    }
    if kind == agentkeys_backends::BackendKind::Ses {
        let keys = match &args.aws_keys_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| anyhow!("--aws-keys-file {}: {e}", path.display()))?;
                agentkeys_backends::ses::static_keys(&text).map_err(|e| anyhow!("--aws-keys-file {}: {e}", path.display()))?;
                Some(agentkeys_backends::Credential::new(text).map_err(|e| anyhow!("--aws-keys-file: {e}"))?)
            }
            None => None,
        };
        let settings = agentkeys_backends::ses::SesSettings {
            bucket: args.bucket.ok_or_else(|| anyhow!("--backend ses needs --bucket BUCKET (the receipt rule's S3 action bucket)"))?,
            prefix: args.prefix,
            region: args.region,
            endpoint: args.endpoint,
            role_arn: args.role_arn,
            poll_seconds: args.poll_seconds,
            queue_url: args.queue_url,
        };
        settings.validate(keys.is_some()).map_err(|e| anyhow!("{e}"))?;
        return Ok(BackendChoice::Ses(settings, keys));
    }
    let need = |v: Option<String>, flag: &str| v.ok_or_else(|| anyhow!("--backend imap needs {flag}"));
    let smtp_tls = match args.smtp_tls.as_str() {
        "starttls" => agentkeys_backends::SmtpTls::Starttls,
        "implicit" => agentkeys_backends::SmtpTls::Implicit,
        other => bail!("--smtp-tls {other:?}: expected starttls or implicit"),
    };
    let deliver_to = need(args.deliver_to, "--deliver-to ADDRESS (the hosted inbox that receives the mailbox's mail)")?;
    let settings = agentkeys_backends::ImapSettings {
        imap_host: need(args.imap_host, "--imap-host HOST")?,
        imap_port: args.imap_port,
        mailbox: args.mailbox,
        smtp_host: need(args.smtp_host, "--smtp-host HOST")?,
        smtp_port: args.smtp_port,
        smtp_tls,
        username: need(args.username, "--username USER")?,
        deliver_to: deliver_to.parse().map_err(|e| anyhow!("--deliver-to {deliver_to}: {e}"))?,
        oauth2_token_url: args.oauth2_token_url,
    };
    settings.validate(domain).map_err(|e| anyhow!("{e}"))?;
    if settings.oauth2_token_url.is_some() {
        let read = |path: Option<std::path::PathBuf>, flag: &str| -> Result<String> {
            let path = path.ok_or_else(|| anyhow!("--oauth2-token-url needs {flag} PATH"))?;
            let text = std::fs::read_to_string(&path).map_err(|e| anyhow!("{flag} {}: {e}", path.display()))?;
            let text = text.trim_end_matches(['\r', '\n']).to_owned();
            if text.is_empty() || text.chars().any(char::is_control) {
                bail!("{flag} {}: empty or with control characters", path.display());
            }
            Ok(text)
        };
        let client_id = args.oauth2_client_id.ok_or_else(|| anyhow!("--oauth2-token-url needs --oauth2-client-id ID"))?;
        let secrets = agentkeys_backends::oauth2::OAuth2Secrets {
            client_id,
            client_secret: read(args.oauth2_client_secret_file, "--oauth2-client-secret-file")?,
            refresh_token: read(args.oauth2_refresh_token_file, "--oauth2-refresh-token-file")?,
        };
        let credential = secrets.to_credential().map_err(|e| anyhow!("{e}"))?;
        return Ok(BackendChoice::Imap(settings, credential));
    }
    let text = match (&args.password_file, std::env::var(BACKEND_PASSWORD_ENV)) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| anyhow!("--password-file {}: {e}", path.display()))?,
        (None, Ok(text)) => text,
        (None, Err(_)) => bail!("--backend imap needs the password: --password-file PATH or {BACKEND_PASSWORD_ENV}"),
    };
    let credential = agentkeys_backends::Credential::new(text).map_err(|e| anyhow!("the password: {e}"))?;
    Ok(BackendChoice::Imap(settings, credential))
}

/// Stores (or, for `native`, clears) `domain`'s backend, audited; the
/// credential sealed under the seed-derived key.
async fn store_backend(dir: &DataDir, domain: &Domain, choice: BackendChoice) -> Result<&'static str> {
    let (kind, settings, sealed, detail) = match choice {
        BackendChoice::Native => {
            let event = AuditEvent::ok(Actor::Operator, OP_DOMAIN_SET_BACKEND, domain.as_str())
                .with_detail(json!({ "backend": "native" }));
            return match dir.meta.clear_mail_backend(domain, &event).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => Ok("native"),
                Err(e) => Err(anyhow!(e)),
            };
        }
        BackendChoice::Imap(settings, credential) => {
            let sealed = dir.backend_sealer().seal(domain.as_str(), &credential).map_err(|e| anyhow!("{e}"))?;
            // The audit detail names the servers and the login, never the password.
            let detail = json!({
                "backend": "imap",
                "imap": format!("{}:{}", settings.imap_host, settings.imap_port),
                "smtp": format!("{}:{}", settings.smtp_host, settings.smtp_port),
                "user": settings.username,
                "deliver_to": settings.deliver_to,
                "login": if settings.oauth2_token_url.is_some() { "xoauth2" } else { "password" },
                "oauth2_token_url": settings.oauth2_token_url,
            });
            ("imap", serde_json::to_string(&settings)?, sealed, detail)
        }
        BackendChoice::Ses(settings, keys) => {
            let sealed = match &keys {
                Some(keys) => dir.backend_sealer().seal(domain.as_str(), keys).map_err(|e| anyhow!("{e}"))?,
                None => Vec::new(),
            };
            // The audit detail names the bucket and role, never a key.
            let detail = json!({
                "backend": "ses",
                "location": settings.location(),
                "region": settings.region,
                "endpoint": settings.endpoint,
                "role_arn": settings.role_arn,
                "static_keys": keys.is_some(),
                "queue_url": settings.queue_url,
            });
            ("ses", serde_json::to_string(&settings)?, sealed, detail)
        }
    };
    let record = agentkeys_store::MailBackendRecord {
        domain: domain.clone(),
        kind: kind.to_owned(),
        settings,
        secret_sealed: sealed,
        status: "connecting".to_owned(),
        status_detail: None,
        status_at: None,
        updated_at: crate::now(),
    };
    let event = AuditEvent::ok(Actor::Operator, OP_DOMAIN_SET_BACKEND, domain.as_str()).with_detail(detail);
    dir.meta.set_mail_backend(&record, &event).await.map_err(|e| match e {
        StoreError::NotFound { .. } => anyhow!("{e}; add it first with `agentkeys domain add {domain}`"),
        other => anyhow!(other),
    })?;
    Ok(kind)
}

fn parse_domain(s: &str) -> Result<Domain> {
    s.parse().map_err(|e| anyhow!("{e}"))
}

fn keyring(dir: &DataDir) -> DomainKeyring {
    dir.dkim_keyring(Actor::Operator)
}

/// Runs a `domain` subcommand.
/// A hosted domain's DKIM keys and what we publish for it (MX `mx_host`, the
/// server's hostname by default, and the MTA-STS/TLS-RPT settings): what
/// `domain dns` prints and `domain verify` checks.
async fn published(
    dir: &DataDir,
    config: &Config,
    domain: &Domain,
    mx_host: Option<String>,
) -> Result<(agentkeys_delivery::DomainKeys, agentkeys_delivery::Publication)> {
    let keys = keyring(dir).domain_keys(domain).await.map_err(|e| match e {
        agentkeys_delivery::DkimError::Store(StoreError::NotFound { .. }) => {
            anyhow!("domain {domain} is not hosted here; add it with `agentkeys domain add {domain}`")
        }
        other => anyhow!(other),
    })?;
    let mx = mx_host.unwrap_or_else(|| config.hostname.clone());
    let publication = config.publication(&mx).map_err(|e| anyhow!("mta_sts: {e}"))?;
    Ok((keys, publication))
}

pub(crate) async fn run(config: &Config, cmd: DomainCmd, json: bool) -> Result<()> {
    let dir = match cmd {
        DomainCmd::Add { .. } => DataDir::create_or_open(config).await?,
        _ => DataDir::open(config).await?,
    };
    match cmd {
        DomainCmd::Add { domain, backend } => {
            let domain = parse_domain(&domain)?;
            // Checked before anything is stored: a bad flag adds nothing.
            let choice = backend_choice(&domain, *backend)?;
            let (record, event) = keyring(&dir).new_domain(&domain)?;
            dir.meta.add_domain(&record, crate::now(), &event).await.map_err(|e| match e {
                StoreError::Conflict { .. } => anyhow!("{e}; see `agentkeys domain list`"),
                other => anyhow!(other),
            })?;
            let kind = if matches!(choice, BackendChoice::Native) { "native" } else { store_backend(&dir, &domain, choice).await? };
            if json {
                println!("{}", json!({ "domain": domain, "backend": kind, "version": record.version, "selector_ed": record.selector_ed, "selector_rsa": record.selector_rsa }));
            } else {
                println!("added {domain} (backend {kind}; DKIM selectors {}, {}); publish its records: agentkeys domain dns {domain}", record.selector_ed, record.selector_rsa);
            }
        }
        DomainCmd::SetBackend { domain, backend } => {
            let domain = parse_domain(&domain)?;
            let choice = backend_choice(&domain, *backend)?;
            let kind = store_backend(&dir, &domain, choice).await?;
            if json {
                println!("{}", json!({ "domain": domain, "backend": kind }));
            } else {
                println!("{domain}: backend {kind}; it takes effect when the server starts next");
            }
        }
        DomainCmd::List => {
            let statuses = dir.meta.domain_statuses().await?;
            let mut rows = Vec::new();
            let retentions: std::collections::BTreeMap<String, Option<i64>> =
                dir.meta.domain_retentions().await?.into_iter().map(|(d, r)| (d.to_string(), r)).collect();
            let backends = dir.meta.mail_backends().await?;
            for domain in dir.meta.list_domains().await? {
                let status = statuses.iter().find(|s| s.domain == domain);
                let backend = backends.iter().find(|b| b.domain == domain);
                let keys = dir.meta.domain_keys(&domain).await?;
                let newest = keys.last();
                rows.push(json!({
                    "domain": domain,
                    "default": domain == config.domain,
                    "dkim_version": newest.map(|k| k.version),
                    "selector_ed": newest.map(|k| k.selector_ed.clone()),
                    "selector_rsa": newest.map(|k| k.selector_rsa.clone()),
                    "retention": retentions.get(domain.as_str()).copied().flatten(),
                    "owner": dir.meta.domain_owner(&domain).await?,
                    "status": status.map_or("not_started", |s| s.status.as_str()),
                    "checked_at": status.and_then(|s| s.checked_at),
                    "backend": backend.map_or("native", |b| b.kind.as_str()),
                    "backend_status": backend.map(|b| b.status.clone()),
                    "backend_detail": backend.and_then(|b| b.status_detail.clone()),
                }));
            }
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in rows {
                    let dkim = match r["dkim_version"].as_u64() {
                        Some(v) => format!("dkim v{v} ({}, {})", r["selector_ed"].as_str().unwrap_or(""), r["selector_rsa"].as_str().unwrap_or("")),
                        None => "dkim keys created on first use".to_owned(),
                    };
                    let default = if r["default"] == true { " (default)" } else { "" };
                    let backend = match r["backend_status"].as_str() {
                        Some(status) => format!("{} ({status})", r["backend"].as_str().unwrap_or("")),
                        None => "native".to_owned(),
                    };
                    println!(
                        "{}{default}\t{}\tbackend {backend}\t{dkim}",
                        r["domain"].as_str().unwrap_or(""),
                        r["status"].as_str().unwrap_or("")
                    );
                    if let Some(detail) = r["backend_detail"].as_str() {
                        println!("\t{detail}");
                    }
                }
            }
        }
        DomainCmd::Remove { domain } => {
            let domain = parse_domain(&domain)?;
            if domain == config.domain {
                bail!("{domain} is the configured hosted domain (domain / AGENTKEYS_DOMAIN); configure another one first");
            }
            let event = AuditEvent::ok(Actor::Operator, ops::DOMAIN_REMOVE, domain.as_str());
            dir.meta.remove_domain(&domain, &event).await.map_err(|e| match e {
                StoreError::NotFound { .. } => anyhow!("{e}; see `agentkeys domain list`"),
                other => anyhow!(other),
            })?;
            if json {
                println!("{}", json!({ "removed": domain }));
            } else {
                println!("removed {domain} and its DKIM keys; delete its DNS records too");
            }
        }
        DomainCmd::Assign { domain, owner, shared: _ } => {
            let domain = parse_domain(&domain)?;
            let owner: Option<agentkeys_core::OwnerId> =
                owner.map(|o| o.parse().map_err(|e| anyhow!("--owner: {e}"))).transpose()?;
            let event = AuditEvent::ok(Actor::Operator, OP_DOMAIN_ASSIGN, domain.as_str())
                .with_detail(json!({ "owner": owner }));
            dir.meta.assign_domain(&domain, owner.as_ref(), &event).await.map_err(|e| match e {
                StoreError::NotFound { .. } => anyhow!("{e}; see `agentkeys domain list` and `agentkeys owner list`"),
                other => anyhow!(other),
            })?;
            if json {
                println!("{}", json!({ "domain": domain, "owner": owner }));
            } else {
                match owner {
                    Some(o) => println!("{domain} is assigned to {o}: only that owner's agents may create inboxes on it"),
                    None => println!("{domain} is shared: agents create no inboxes on it"),
                }
            }
        }
        DomainCmd::SetRetention { domain, retention } => {
            let domain = parse_domain(&domain)?;
            let secs = match retention.as_str() {
                "default" => None,
                text => Some(agentkeys_core::parse_duration(text).map_err(|e| {
                    anyhow!("{e}; or `default` to use the server's limits.retention")
                })?),
            };
            let event = AuditEvent::ok(Actor::Operator, OP_DOMAIN_SET_RETENTION, domain.as_str())
                .with_detail(json!({ "retention": secs }));
            dir.meta.set_domain_retention(&domain, secs, &event).await.map_err(|e| match e {
                StoreError::NotFound { .. } => anyhow!("{e}; see `agentkeys domain list`"),
                other => anyhow!(other),
            })?;
            if json {
                println!("{}", json!({ "domain": domain, "retention": secs }));
            } else {
                match secs {
                    Some(s) => println!("{domain}: messages are kept {s} s, then deleted by the server's sweeper"),
                    None => println!("{domain}: messages are kept for the server's limits.retention"),
                }
            }
        }
        DomainCmd::Verify { domain, mx_host } => {
            let domain = parse_domain(&domain)?;
            let (keys, publication) = published(&dir, config, &domain, mx_host).await?;
            // The server's resolver settings (dns.nameservers), so verify sees what delivery sees.
            let (dns_config, dns_options) = crate::dns::resolver_config(&config.dns_nameservers)?;
            let resolver = HickoryResolver::new(dns_config, dns_options)
                .map_err(|e| anyhow!("cannot set up the DNS resolver: {e}"))?;
            dir.meta.set_domain_status(&domain, DomainStatus::Verifying.as_str(), None, None).await?;
            let checks = verify_domain(&resolver, &keys, &publication).await;
            let status = DomainStatus::from_checks(&checks);
            let detail = serde_json::to_string(&checks)?;
            dir.meta.set_domain_status(&domain, status.as_str(), Some(&detail), Some(crate::now())).await?;
            if json {
                println!("{}", json!({ "domain": domain, "status": status, "checks": checks }));
            } else {
                for check in &checks {
                    println!("{}", check.line());
                }
                println!("{domain}: {status}");
            }
            if status != DomainStatus::Verified {
                bail!(
                    "{domain} is not verified ({status}): publish the records marked above (`agentkeys domain dns {domain}`), then run `agentkeys domain verify {domain}` again"
                );
            }
        }
        DomainCmd::Dns { domain, mx_host } => {
            let domain = parse_domain(&domain)?;
            let (keys, publication) = published(&dir, config, &domain, mx_host).await?;
            print!("{}", zone_file(&keys, &publication));
        }
    }
    Ok(())
}

/// Signs the queued copy of submitted mail with the sender domain's DKIM keys.
pub(crate) struct DkimOutboundSigner(pub(crate) Arc<DomainKeyring>);

impl DkimOutboundSigner {
    /// The signer for a server over `dir`.
    pub(crate) fn for_server(dir: &DataDir) -> Arc<dyn OutboundSigner> {
        Arc::new(Self(Arc::new(dir.dkim_keyring(Actor::System))))
    }
}

#[async_trait::async_trait]
impl OutboundSigner for DkimOutboundSigner {
    async fn sign(&self, sender_domain: &str, message: &[u8]) -> Result<Vec<u8>, String> {
        let domain: Domain = sender_domain.parse().map_err(|e| format!("{e}"))?;
        self.0.sign(&domain, message).await.map_err(|e| e.to_string())
    }
}

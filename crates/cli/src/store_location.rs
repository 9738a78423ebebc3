//! Where the server keeps its metadata and its blobs: `[store] metadata` and
//! `[store] blobs` (env `AGENTKEYS_DATABASE_URL`, `AGENTKEYS_BLOBS`). Unset, both
//! live in the data directory (SQLite and files), which needs no setup.

use std::fmt;
use std::path::PathBuf;

/// Where metadata lives.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum MetadataLocation {
    /// A SQLite database file (`sqlite:<path>`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`), shared by every node.
    Postgres(String),
}

/// Where raw messages live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BlobLocation {
    /// A directory tree (`file:<path>`).
    Files(PathBuf),
    /// An S3 bucket and key prefix (`s3://bucket/prefix`), shared by every node.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

/// Parses `[store] metadata`.
pub(crate) fn parse_metadata(v: &str) -> Result<MetadataLocation, String> {
    if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        return Ok(MetadataLocation::Postgres(v.to_owned()));
    }
    if let Some(path) = v
        .strip_prefix("sqlite://")
        .or_else(|| v.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(
                "expected a file after sqlite: (e.g. sqlite:/var/lib/agentkeys/meta.sqlite)"
                    .to_owned(),
            );
        }
        return Ok(MetadataLocation::Sqlite(PathBuf::from(path)));
    }
    Err("expected sqlite:<file> or postgres://user@host:5432/database".to_owned())
}

/// Parses `[store] blobs`.
pub(crate) fn parse_blobs(v: &str) -> Result<BlobLocation, String> {
    if let Some(rest) = v.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("expected a bucket after s3:// (e.g. s3://mail/agentkeys)".to_owned());
        }
        return Ok(BlobLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        });
    }
    if let Some(path) = v
        .strip_prefix("file://")
        .or_else(|| v.strip_prefix("file:"))
    {
        if path.is_empty() {
            return Err(
                "expected a directory after file: (e.g. file:/var/lib/agentkeys/blobs)".to_owned(),
            );
        }
        return Ok(BlobLocation::Files(PathBuf::from(path)));
    }
    Err("expected file:<directory> or s3://bucket/prefix".to_owned())
}

/// The URL without its password, for start-up lines and errors.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest
        .split_once('/')
        .map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    // Query parameters may carry a password too (`?password=`).
    let tail = tail.map(|t| t.split_once('?').map_or(t, |(path, _)| path));
    match tail {
        Some(tail) => format!("{scheme}://{authority}/{tail}"),
        None => format!("{scheme}://{authority}"),
    }
}

impl fmt::Display for MetadataLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "SQLite {}", path.display()),
            Self::Postgres(url) => write!(f, "PostgreSQL {}", redacted(url)),
        }
    }
}

/// Never prints the password.
impl fmt::Debug for MetadataLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for BlobLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Files(path) => write!(f, "files {}", path.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "S3 s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "S3 s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_print_without_secrets() {
        assert_eq!(
            parse_metadata("sqlite:/x/meta.sqlite").unwrap(),
            MetadataLocation::Sqlite("/x/meta.sqlite".into())
        );
        assert_eq!(
            parse_metadata("sqlite:///x/m.db").unwrap(),
            MetadataLocation::Sqlite("/x/m.db".into())
        );
        let pg = parse_metadata("postgres://ak:s3cret@db:5432/mail?sslmode=require&password=other")
            .unwrap();
        let shown = format!("{pg} {pg:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("other"),
            "{shown}"
        );
        assert_eq!(pg.to_string(), "PostgreSQL postgres://ak:***@db:5432/mail");
        assert_eq!(
            parse_metadata("postgresql://ak@db/mail")
                .unwrap()
                .to_string(),
            "PostgreSQL postgresql://ak@db/mail"
        );
        for bad in ["", "sqlite:", "mysql://x", "/plain/path"] {
            assert!(parse_metadata(bad).is_err(), "{bad}");
        }

        assert_eq!(
            parse_blobs("s3://mail/agentkeys/").unwrap(),
            BlobLocation::S3 {
                bucket: "mail".into(),
                prefix: "agentkeys".into()
            }
        );
        assert_eq!(
            parse_blobs("s3://mail").unwrap(),
            BlobLocation::S3 {
                bucket: "mail".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_blobs("file:/srv/blobs").unwrap(),
            BlobLocation::Files("/srv/blobs".into())
        );
        for bad in ["", "s3://", "s3:///x", "file:", "gs://b"] {
            assert!(parse_blobs(bad).is_err(), "{bad}");
        }
    }
}

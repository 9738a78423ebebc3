//! Where the passphrase that unlocks a master key comes from.
//!
//! Order, first match wins ([`resolve_passphrase`]):
//! 1. `--passphrase-file PATH`: the file's content, one trailing newline removed;
//! 2. the environment variable [`PASSPHRASE_ENV`] (`AGENTKEYS_PASSPHRASE`);
//! 3. an interactive prompt ([`prompt_passphrase`]): without echo on a terminal
//!    (via `rpassword`, which reads `/dev/tty`), or one line of standard input when
//!    standard input is not a terminal.
//!
//! The explicit flag beats the ambient variable. The prompt is a separate function
//! so the CLI decides when (and whether) to ask.

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, IsTerminal as _, Read as _};
use std::path::Path;

use zeroize::Zeroizing;

/// Environment variable holding the passphrase, for scripts.
pub const PASSPHRASE_ENV: &str = "AGENTKEYS_PASSPHRASE";
/// Longest accepted passphrase, in bytes.
pub const MAX_PASSPHRASE_LEN: usize = 1024;
/// Fewest characters of a *new* passphrase. It seals the key that approves
/// every grant, and an attacker with the key file can guess offline at Argon2id's
/// pace; NIST SP 800-63B asks for at least 15 characters of a single-factor
/// secret, we ask for 12 and suggest a few words. Existing keys still unlock
/// with whatever they were sealed with.
pub const MIN_NEW_PASSPHRASE_CHARS: usize = 12;
/// Fewest distinct characters of a new passphrase (refuses `aaaaaaaaaaaa`).
pub const MIN_NEW_PASSPHRASE_DISTINCT: usize = 5;

/// Whether [`prompt_passphrase`] asks a second time (for a new passphrase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// Ask once (unlocking an existing key).
    Once,
    /// Ask twice and require both answers to match (choosing a new passphrase).
    Twice,
}

/// Why no passphrase could be obtained.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    /// The passphrase is empty (after removing the trailing newline).
    #[error(
        "the passphrase from {source_name} is empty; give it with --passphrase-file FILE or the \
         AGENTKEYS_PASSPHRASE variable, or run the command on a terminal to be asked"
    )]
    Empty {
        /// Where it came from (`--passphrase-file PATH`, `AGENTKEYS_PASSPHRASE`, `the prompt`).
        source_name: String,
    },
    /// Longer than [`MAX_PASSPHRASE_LEN`] bytes.
    #[error("the passphrase from {source_name} is longer than {MAX_PASSPHRASE_LEN} bytes")]
    TooLong {
        /// Where it came from.
        source_name: String,
    },
    /// Not valid UTF-8.
    #[error("the passphrase from {source_name} is not valid UTF-8")]
    NotUtf8 {
        /// Where it came from.
        source_name: String,
    },
    /// A new passphrase shorter than [`MIN_NEW_PASSPHRASE_CHARS`] characters or
    /// with fewer than [`MIN_NEW_PASSPHRASE_DISTINCT`] distinct ones.
    #[error(
        "the new passphrase is too weak: use at least {MIN_NEW_PASSPHRASE_CHARS} characters, \
         {MIN_NEW_PASSPHRASE_DISTINCT} of them different (a few words work well)"
    )]
    TooWeak,
    /// The two answers to a [`Confirm::Twice`] prompt differ.
    #[error("the passphrases do not match")]
    Mismatch,
    /// The file or terminal could not be read.
    #[error("cannot read the passphrase from {source_name}: {source}")]
    Io {
        /// Where it was being read from.
        source_name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl PassphraseError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty { .. } => "PASSPHRASE_EMPTY",
            Self::TooLong { .. } => "PASSPHRASE_TOO_LONG",
            Self::NotUtf8 { .. } => "PASSPHRASE_NOT_UTF8",
            Self::TooWeak => "PASSPHRASE_TOO_WEAK",
            Self::Mismatch => "PASSPHRASE_MISMATCH",
            Self::Io { .. } => "PASSPHRASE_IO",
        }
    }
}

/// A passphrase: non-empty UTF-8 of at most [`MAX_PASSPHRASE_LEN`] bytes, wiped
/// from memory when dropped, redacted in `Debug`.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Checks and wraps `text` (used as is: no trimming).
    pub fn new(text: String) -> Result<Self, PassphraseError> {
        Self::checked(Zeroizing::new(text), "the caller")
    }

    fn checked(text: Zeroizing<String>, source_name: &str) -> Result<Self, PassphraseError> {
        if text.is_empty() {
            return Err(PassphraseError::Empty { source_name: source_name.to_owned() });
        }
        if text.len() > MAX_PASSPHRASE_LEN {
            return Err(PassphraseError::TooLong { source_name: source_name.to_owned() });
        }
        Ok(Self(text))
    }

    /// The secret text, for key derivation.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Checks that this passphrase is strong enough to seal a *new* key: at
    /// least [`MIN_NEW_PASSPHRASE_CHARS`] characters, [`MIN_NEW_PASSPHRASE_DISTINCT`]
    /// of them distinct.
    pub fn check_new(self) -> Result<Self, PassphraseError> {
        let chars = self.0.chars().count();
        let mut distinct: Vec<char> = self.0.chars().collect();
        distinct.sort_unstable();
        distinct.dedup();
        let distinct_count = distinct.len();
        // The sorted copy holds the secret too; wipe it like the rest.
        zeroize::Zeroize::zeroize(&mut distinct);
        if chars < MIN_NEW_PASSPHRASE_CHARS || distinct_count < MIN_NEW_PASSPHRASE_DISTINCT {
            return Err(PassphraseError::TooWeak);
        }
        Ok(self)
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Removes one trailing `\n` or `\r\n`.
fn strip_newline(text: &mut String) {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
}

fn from_bytes(bytes: Vec<u8>, source_name: &str) -> Result<Passphrase, PassphraseError> {
    let bytes = Zeroizing::new(bytes);
    if bytes.len() > MAX_PASSPHRASE_LEN + 2 {
        return Err(PassphraseError::TooLong { source_name: source_name.to_owned() });
    }
    let mut text = Zeroizing::new(
        std::str::from_utf8(&bytes)
            .map_err(|_| PassphraseError::NotUtf8 { source_name: source_name.to_owned() })?
            .to_owned(),
    );
    strip_newline(&mut text);
    Passphrase::checked(text, source_name)
}

/// Reads `--passphrase-file PATH`: the whole file, one trailing newline removed.
pub fn passphrase_from_file(path: &Path) -> Result<Passphrase, PassphraseError> {
    let source_name = format!("--passphrase-file {}", path.display());
    let io = |source| PassphraseError::Io { source_name: source_name.clone(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit plus a CRLF so an over-long file is detected, not truncated.
    file.take((MAX_PASSPHRASE_LEN + 3) as u64).read_to_end(&mut bytes).map_err(io)?;
    from_bytes(bytes, &source_name)
}

/// Checks the value of [`PASSPHRASE_ENV`] (used as is, one trailing newline removed).
pub fn passphrase_from_env_value(value: OsString) -> Result<Passphrase, PassphraseError> {
    let source_name = PASSPHRASE_ENV;
    let text =
        value.into_string().map_err(|_| PassphraseError::NotUtf8 { source_name: source_name.to_owned() })?;
    from_bytes(text.into_bytes(), source_name)
}

/// The non-interactive sources: the file if given, else the environment value if set.
///
/// `Ok(None)` means neither is available and the caller should prompt. `env_value`
/// is the value of [`PASSPHRASE_ENV`], passed in so tests need not touch the
/// process environment.
pub fn non_interactive_passphrase(
    file: Option<&Path>,
    env_value: Option<OsString>,
) -> Result<Option<Passphrase>, PassphraseError> {
    if let Some(path) = file {
        return passphrase_from_file(path).map(Some);
    }
    env_value.map(passphrase_from_env_value).transpose()
}

/// Reads one line (at most [`MAX_PASSPHRASE_LEN`] bytes) from `reader`, the
/// no-terminal path of [`prompt_passphrase`].
pub fn read_passphrase_line(reader: &mut impl BufRead) -> Result<Passphrase, PassphraseError> {
    let source_name = "standard input";
    let mut bytes = Vec::new();
    reader
        .take((MAX_PASSPHRASE_LEN + 3) as u64)
        .read_until(b'\n', &mut bytes)
        .map_err(|source| PassphraseError::Io { source_name: source_name.to_owned(), source })?;
    from_bytes(bytes, source_name)
}

/// Asks for the passphrase interactively.
///
/// On a terminal the prompt goes to the terminal and nothing is echoed; with
/// [`Confirm::Twice`] it asks again and refuses a mismatch. When standard input is
/// not a terminal, one line is read from it (no prompt, no confirmation).
pub fn prompt_passphrase(prompt: &str, confirm: Confirm) -> Result<Passphrase, PassphraseError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return read_passphrase_line(&mut stdin.lock());
    }
    let ask = |prompt: &str| -> Result<Passphrase, PassphraseError> {
        let source_name = "the terminal";
        let text = rpassword::prompt_password(prompt)
            .map_err(|source| PassphraseError::Io { source_name: source_name.to_owned(), source })?;
        Passphrase::checked(Zeroizing::new(text), source_name)
    };
    let first = ask(prompt)?;
    if confirm == Confirm::Twice {
        let second = ask("Repeat the passphrase: ")?;
        if first.expose() != second.expose() {
            return Err(PassphraseError::Mismatch);
        }
    }
    Ok(first)
}

/// The whole order: `--passphrase-file`, then `AGENTKEYS_PASSPHRASE`, then the prompt.
pub fn resolve_passphrase(
    file: Option<&Path>,
    prompt: &str,
    confirm: Confirm,
) -> Result<Passphrase, PassphraseError> {
    match non_interactive_passphrase(file, std::env::var_os(PASSPHRASE_ENV))? {
        Some(passphrase) => Ok(passphrase),
        None => prompt_passphrase(prompt, confirm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn file_source_strips_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "correct horse\r\n").unwrap();
        assert_eq!(passphrase_from_file(&path).unwrap().expose(), "correct horse");
        std::fs::write(&path, "two newlines\n\n").unwrap();
        assert_eq!(passphrase_from_file(&path).unwrap().expose(), "two newlines\n");
        std::fs::write(&path, " spaces kept ").unwrap();
        assert_eq!(passphrase_from_file(&path).unwrap().expose(), " spaces kept ");
    }

    #[test]
    fn new_passphrases_have_a_floor() {
        let new = |s: &str| Passphrase::new(s.to_owned()).unwrap().check_new().map(|_| ());
        assert!(matches!(new("a"), Err(PassphraseError::TooWeak)));
        assert!(matches!(new("elevenchars"), Err(PassphraseError::TooWeak)));
        assert!(matches!(new("aaaaaaaaaaaaaaaaaaaa"), Err(PassphraseError::TooWeak)));
        assert!(matches!(new("abababababab"), Err(PassphraseError::TooWeak)));
        assert!(new("correct horse battery staple").is_ok());
        assert!(new("twelve chars").is_ok());
        // Characters, not bytes: twelve accented letters pass, six would not.
        assert!(new("éèêëēėęàâäæã").is_ok());
        assert!(matches!(new("éèêëēė"), Err(PassphraseError::TooWeak)));
    }

    #[test]
    fn empty_names_the_non_interactive_sources() {
        let err = read_passphrase_line(&mut std::io::Cursor::new(b"\n".to_vec())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("standard input") && text.contains("--passphrase-file") && text.contains("AGENTKEYS_PASSPHRASE"), "{text}");
    }

    #[test]
    fn file_wins_over_env_and_env_over_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "from-file\n").unwrap();
        let got = non_interactive_passphrase(Some(&path), Some("from-env".into())).unwrap();
        assert_eq!(got.unwrap().expose(), "from-file");
        let got = non_interactive_passphrase(None, Some("from-env".into())).unwrap();
        assert_eq!(got.unwrap().expose(), "from-env");
        assert!(non_interactive_passphrase(None, None).unwrap().is_none());
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(passphrase_from_file(&path).unwrap_err().code(), "PASSPHRASE_EMPTY");
        std::fs::write(&path, "x".repeat(MAX_PASSPHRASE_LEN + 1)).unwrap();
        assert_eq!(passphrase_from_file(&path).unwrap_err().code(), "PASSPHRASE_TOO_LONG");
        std::fs::write(&path, format!("{}\n", "x".repeat(MAX_PASSPHRASE_LEN))).unwrap();
        assert_eq!(passphrase_from_file(&path).unwrap().expose().len(), MAX_PASSPHRASE_LEN);
        std::fs::File::create(&path).unwrap().write_all(&[0xff, 0xfe]).unwrap();
        assert_eq!(passphrase_from_file(&path).unwrap_err().code(), "PASSPHRASE_NOT_UTF8");
        let missing = dir.path().join("missing");
        let err = passphrase_from_file(&missing).unwrap_err();
        assert_eq!(err.code(), "PASSPHRASE_IO");
        assert!(err.to_string().contains("--passphrase-file"), "{err}");
        assert_eq!(passphrase_from_env_value("".into()).unwrap_err().code(), "PASSPHRASE_EMPTY");
    }

    #[test]
    fn stdin_line() {
        let mut input = std::io::Cursor::new(b"secret one\nsecond line\n".to_vec());
        assert_eq!(read_passphrase_line(&mut input).unwrap().expose(), "secret one");
        let mut eof = std::io::Cursor::new(b"no newline".to_vec());
        assert_eq!(read_passphrase_line(&mut eof).unwrap().expose(), "no newline");
    }

    #[test]
    fn debug_is_redacted() {
        let p = Passphrase::new("hunter2".into()).unwrap();
        assert_eq!(format!("{p:?}"), "Passphrase(<redacted>)");
    }
}

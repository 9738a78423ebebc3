//! The master key at rest: a passphrase-encrypted JSON file, mode 0600.
//!
//! # Format, version 1
//!
//! One JSON object; every field is required and no other field is allowed:
//!
//! ```json
//! {
//!   "version": 1,
//!   "owner": "0x…40 lowercase hex…",
//!   "public_key": "<standard base64, 32 bytes>",
//!   "kdf": "argon2id",
//!   "m_cost": 65536,
//!   "t_cost": 3,
//!   "p_cost": 1,
//!   "salt": "<standard base64, 16 bytes>",
//!   "check": "<standard base64, 32 bytes>",
//!   "aead": "xchacha20poly1305",
//!   "nonce": "<standard base64, 24 bytes>",
//!   "ciphertext": "<standard base64, 48 bytes: the 32-byte Ed25519 seed + 16-byte tag>"
//! }
//! ```
//!
//! Key derivation:
//! - `pk = Argon2id(passphrase, salt, m_cost KiB, t_cost passes, p_cost lanes, version 0x13)`, 32 bytes;
//! - `aead_key = HKDF-SHA256(ikm = pk, salt = none, info = "agentkeys/owner-key/v1/aead")`, 32 bytes;
//! - `check    = HKDF-SHA256(ikm = pk, salt = none, info = "agentkeys/owner-key/v1/check")`, 32 bytes, stored.
//!
//! Encryption: `ciphertext = XChaCha20-Poly1305(aead_key, nonce, plaintext = seed, aad)` with
//! `aad = "AGENTKEYS-OWNER-KEY-V1\n" + owner + "\n" + public_key` (the text forms above),
//! so moving a key file to another owner or pairing it with another public key fails.
//!
//! Unlocking tells the two failures apart with `check`: if the derived `check`
//! differs from the stored one (constant-time compare) the passphrase is wrong
//! ([`KeyFileError::WrongPassphrase`]); if it matches but the ciphertext does not
//! authenticate, or the decrypted seed does not produce `public_key`, the file was
//! altered ([`KeyFileError::Corrupt`]). A changed `salt`, cost or `check` cannot be
//! told from a wrong passphrase: the key derivation itself depends on them.
//! `check` gives an attacker holding the file nothing the AEAD tag would not: both
//! need one Argon2id evaluation per guess.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use agentkeys_core::OwnerId;
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::master_key::{MasterKey, SECRET_SEED_LEN};
use crate::passphrase::Passphrase;
use crate::public_key::{PUBLIC_KEY_LEN, PublicKey};

/// The format version written by this code.
pub const KEY_FILE_VERSION: u64 = 1;
/// The only key derivation function of version 1.
pub const KDF_ARGON2ID: &str = "argon2id";
/// The only AEAD of version 1.
pub const AEAD_XCHACHA20POLY1305: &str = "xchacha20poly1305";
/// Production Argon2id memory cost: 64 MiB (in KiB).
pub const DEFAULT_M_COST_KIB: u32 = 64 * 1024;
/// Production Argon2id passes.
pub const DEFAULT_T_COST: u32 = 3;
/// Production Argon2id lanes.
pub const DEFAULT_P_COST: u32 = 1;
/// Largest memory cost a key file may ask for (1 GiB), so a hostile file cannot exhaust memory.
pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
/// Largest number of passes a key file may ask for.
pub const MAX_T_COST: u32 = 64;
/// Largest number of lanes a key file may ask for.
pub const MAX_P_COST: u32 = 16;
/// Salt length in bytes.
pub const SALT_LEN: usize = 16;
/// XChaCha20-Poly1305 nonce length in bytes.
pub const NONCE_LEN: usize = 24;
/// Length of the passphrase check value in bytes.
pub const CHECK_LEN: usize = 32;
/// Poly1305 tag length in bytes.
const TAG_LEN: usize = 16;
/// Largest key file [`EncryptedKeyFile::load`] reads.
pub const MAX_KEY_FILE_LEN: u64 = 16 * 1024;
/// Permission bits of a key file (and the mode [`EncryptedKeyFile::load`] insists on).
pub const KEY_FILE_MODE: u32 = 0o600;
/// Permission bits of a config directory created by [`EncryptedKeyFile::save`].
pub const CONFIG_DIR_MODE: u32 = 0o700;
/// Environment variable naming the config directory; wins over the XDG location.
pub const CONFIG_DIR_ENV: &str = "AGENTKEYS_CONFIG_DIR";

const AAD_PREFIX: &str = "AGENTKEYS-OWNER-KEY-V1";
const HKDF_INFO_AEAD: &[u8] = b"agentkeys/owner-key/v1/aead";
const HKDF_INFO_CHECK: &[u8] = b"agentkeys/owner-key/v1/check";

/// Why a key file could not be written, read or unlocked.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// There is no file at the path.
    #[error("no key file at {path}")]
    NotFound {
        /// The path looked at.
        path: PathBuf,
    },
    /// [`SaveMode::CreateNew`] and a file is already there.
    #[error("a key file already exists at {path}; refusing to overwrite it")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The file is accessible by its group or by others.
    #[error("key file {path} is accessible by group or others (mode {mode:03o}); run `chmod 600 {path}`")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is a later format version than this code reads.
    #[error(
        "key file format version {version} is not supported (this build reads version {KEY_FILE_VERSION})"
    )]
    UnsupportedVersion {
        /// The version found.
        version: u64,
    },
    /// The file is not a well-formed version-1 key file, or it was altered.
    #[error("key file is corrupt: {detail}")]
    Corrupt {
        /// What is wrong.
        detail: String,
    },
    /// Argon2id cost parameters out of range.
    #[error("invalid key derivation parameters: {detail}")]
    InvalidKdfParams {
        /// What is out of range.
        detail: String,
    },
    /// The passphrase does not unlock this key file.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// None of `$AGENTKEYS_CONFIG_DIR`, `$XDG_CONFIG_HOME`, `$HOME` is set.
    #[error("cannot find a config directory: set AGENTKEYS_CONFIG_DIR, XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
}

impl KeyFileError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "KEY_FILE_NOT_FOUND",
            Self::AlreadyExists { .. } => "KEY_FILE_EXISTS",
            Self::InsecurePermissions { .. } => "KEY_FILE_PERMISSIONS",
            Self::Io { .. } => "KEY_FILE_IO",
            Self::UnsupportedVersion { .. } => "KEY_FILE_VERSION",
            Self::Corrupt { .. } => "KEY_FILE_CORRUPT",
            Self::InvalidKdfParams { .. } => "KDF_PARAMS",
            Self::WrongPassphrase => "WRONG_PASSPHRASE",
            Self::NoConfigDir => "NO_CONFIG_DIR",
        }
    }
}

fn corrupt(detail: impl Into<String>) -> KeyFileError {
    KeyFileError::Corrupt { detail: detail.into() }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
}

impl KdfParams {
    /// The production parameters: 64 MiB, 3 passes, 1 lane
    /// ([`DEFAULT_M_COST_KIB`], [`DEFAULT_T_COST`], [`DEFAULT_P_COST`]).
    pub const PRODUCTION: Self =
        Self { m_cost_kib: DEFAULT_M_COST_KIB, t_cost: DEFAULT_T_COST, p_cost: DEFAULT_P_COST };

    /// Checked parameters: Argon2's own minimums (`t ≥ 1`, `p ≥ 1`, `m ≥ 8·p` KiB) and
    /// this crate's maximums ([`MAX_M_COST_KIB`], [`MAX_T_COST`], [`MAX_P_COST`]).
    ///
    /// Cheap values (`new(8, 1, 1)`) are accepted so tests stay fast; only
    /// [`KdfParams::PRODUCTION`] belongs in real key files.
    pub fn new(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Result<Self, KeyFileError> {
        let invalid = |detail: String| KeyFileError::InvalidKdfParams { detail };
        if m_cost_kib > MAX_M_COST_KIB {
            return Err(invalid(format!("m_cost {m_cost_kib} KiB exceeds {MAX_M_COST_KIB} KiB")));
        }
        if t_cost > MAX_T_COST {
            return Err(invalid(format!("t_cost {t_cost} exceeds {MAX_T_COST}")));
        }
        if p_cost > MAX_P_COST {
            return Err(invalid(format!("p_cost {p_cost} exceeds {MAX_P_COST}")));
        }
        Params::new(m_cost_kib, t_cost, p_cost, Some(32)).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { m_cost_kib, t_cost, p_cost })
    }

    /// Memory cost in KiB.
    pub fn m_cost_kib(&self) -> u32 {
        self.m_cost_kib
    }

    /// Number of passes.
    pub fn t_cost(&self) -> u32 {
        self.t_cost
    }

    /// Number of lanes.
    pub fn p_cost(&self) -> u32 {
        self.p_cost
    }

    /// Argon2id of `passphrase` and `salt` into 32 bytes.
    fn derive(&self, passphrase: &Passphrase, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
        let invalid = |e: argon2::Error| KeyFileError::InvalidKdfParams { detail: e.to_string() };
        let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32)).map_err(invalid)?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.expose().as_bytes(), salt, out.as_mut())
            .map_err(invalid)?;
        Ok(out)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::PRODUCTION
    }
}

/// What [`EncryptedKeyFile::save`] does when the file exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveMode {
    /// Refuse with [`KeyFileError::AlreadyExists`] (the default for enrollment).
    CreateNew,
    /// Atomically replace the existing file (e.g. after a passphrase change).
    Replace,
}

/// The JSON shape of version 1 (see the module documentation).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileV1 {
    version: u64,
    owner: String,
    public_key: String,
    kdf: String,
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
    check: String,
    aead: String,
    nonce: String,
    ciphertext: String,
}

/// A master key sealed under a passphrase, bound to its owner and public key.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedKeyFile {
    owner: OwnerId,
    public_key: PublicKey,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    check: [u8; CHECK_LEN],
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl std::fmt::Debug for EncryptedKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedKeyFile")
            .field("owner", &self.owner)
            .field("public_key", &self.public_key)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

fn aad(owner: &OwnerId, public_key: &PublicKey) -> Vec<u8> {
    format!("{AAD_PREFIX}\n{owner}\n{}", public_key.to_base64()).into_bytes()
}

fn expand(pk: &[u8; 32], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(None, pk);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 255·32 limit, so expand cannot fail.
    if hk.expand(info, out.as_mut()).is_err() {
        unreachable!("HKDF output length is fixed at 32 bytes");
    }
    out
}

fn decode_fixed<const N: usize>(field: &str, text: &str) -> Result<[u8; N], KeyFileError> {
    let bytes =
        STANDARD.decode(text).map_err(|_| corrupt(format!("field {field:?} is not standard base64")))?;
    bytes.try_into().map_err(|_| corrupt(format!("field {field:?} must be {N} bytes")))
}

impl EncryptedKeyFile {
    /// Encrypts `key` for `owner` under `passphrase`, drawing salt and nonce from `rng`.
    pub fn seal(
        key: &MasterKey,
        owner: &OwnerId,
        passphrase: &Passphrase,
        params: KdfParams,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Result<Self, KeyFileError> {
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let pk = params.derive(passphrase, &salt)?;
        let aead_key = expand(&pk, HKDF_INFO_AEAD);
        let check = expand(&pk, HKDF_INFO_CHECK);
        let public_key = key.public_key();
        let seed = key.secret_seed();
        let cipher = XChaCha20Poly1305::new(aead_key.as_ref().into());
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload { msg: seed.as_ref(), aad: &aad(owner, &public_key) },
            )
            .map_err(|_| corrupt("encryption failed"))?;
        Ok(Self { owner: owner.clone(), public_key, params, salt, check: *check, nonce, ciphertext })
    }

    /// Decrypts the master key.
    ///
    /// [`KeyFileError::WrongPassphrase`] when the passphrase does not match;
    /// [`KeyFileError::Corrupt`] when the file was altered after sealing.
    pub fn unlock(&self, passphrase: &Passphrase) -> Result<MasterKey, KeyFileError> {
        let pk = self.params.derive(passphrase, &self.salt)?;
        let check = expand(&pk, HKDF_INFO_CHECK);
        if !bool::from(check.as_ref().ct_eq(&self.check)) {
            return Err(KeyFileError::WrongPassphrase);
        }
        let aead_key = expand(&pk, HKDF_INFO_AEAD);
        let cipher = XChaCha20Poly1305::new(aead_key.as_ref().into());
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&self.nonce),
                    Payload { msg: &self.ciphertext, aad: &aad(&self.owner, &self.public_key) },
                )
                .map_err(|_| corrupt("the sealed key does not authenticate (the file was altered)"))?,
        );
        let seed: Zeroizing<[u8; SECRET_SEED_LEN]> = Zeroizing::new(
            plaintext.as_slice().try_into().map_err(|_| corrupt("the sealed key has the wrong length"))?,
        );
        let key = MasterKey::from_seed(&seed);
        if key.public_key() != self.public_key {
            return Err(corrupt("the sealed key does not match public_key"));
        }
        Ok(key)
    }

    /// The owner this key belongs to.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }

    /// The public half, readable without the passphrase.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The Argon2id parameters the file was sealed with.
    pub fn params(&self) -> KdfParams {
        self.params
    }

    /// The version-1 JSON text (pretty-printed, trailing newline).
    pub fn to_json(&self) -> String {
        let file = KeyFileV1 {
            version: KEY_FILE_VERSION,
            owner: self.owner.to_string(),
            public_key: self.public_key.to_base64(),
            kdf: KDF_ARGON2ID.to_owned(),
            m_cost: self.params.m_cost_kib,
            t_cost: self.params.t_cost,
            p_cost: self.params.p_cost,
            salt: STANDARD.encode(self.salt),
            check: STANDARD.encode(self.check),
            aead: AEAD_XCHACHA20POLY1305.to_owned(),
            nonce: STANDARD.encode(self.nonce),
            ciphertext: STANDARD.encode(&self.ciphertext),
        };
        let mut text = match serde_json::to_string_pretty(&file) {
            Ok(text) => text,
            Err(_) => unreachable!("a struct of strings and integers always serializes"),
        };
        text.push('\n');
        text
    }

    /// Parses and checks the JSON text. The version is read first, so a newer file
    /// gives [`KeyFileError::UnsupportedVersion`] rather than a field error.
    pub fn from_json(text: &str) -> Result<Self, KeyFileError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| corrupt(format!("not JSON: {e}")))?;
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt("missing or non-integer \"version\""))?;
        if version != KEY_FILE_VERSION {
            return Err(KeyFileError::UnsupportedVersion { version });
        }
        let file: KeyFileV1 =
            serde_json::from_value(value).map_err(|e| corrupt(format!("not a version-1 key file: {e}")))?;
        if file.kdf != KDF_ARGON2ID {
            return Err(corrupt(format!("unsupported kdf {:?}, expected {KDF_ARGON2ID:?}", file.kdf)));
        }
        if file.aead != AEAD_XCHACHA20POLY1305 {
            return Err(corrupt(format!(
                "unsupported aead {:?}, expected {AEAD_XCHACHA20POLY1305:?}",
                file.aead
            )));
        }
        let owner: OwnerId = file.owner.parse().map_err(|e| corrupt(format!("field \"owner\": {e}")))?;
        if owner.as_str() != file.owner {
            return Err(corrupt("field \"owner\" must be lowercase"));
        }
        let public_key =
            PublicKey::from_bytes(&decode_fixed::<PUBLIC_KEY_LEN>("public_key", &file.public_key)?)
                .map_err(|e| corrupt(format!("field \"public_key\": {e}")))?;
        let params = KdfParams::new(file.m_cost, file.t_cost, file.p_cost)?;
        let ciphertext = STANDARD
            .decode(&file.ciphertext)
            .map_err(|_| corrupt("field \"ciphertext\" is not standard base64"))?;
        if ciphertext.len() != SECRET_SEED_LEN + TAG_LEN {
            return Err(corrupt(format!("field \"ciphertext\" must be {} bytes", SECRET_SEED_LEN + TAG_LEN)));
        }
        Ok(Self {
            owner,
            public_key,
            params,
            salt: decode_fixed("salt", &file.salt)?,
            check: decode_fixed("check", &file.check)?,
            nonce: decode_fixed("nonce", &file.nonce)?,
            ciphertext,
        })
    }

    /// Writes the file atomically with mode 0600: a temporary file in the same
    /// directory is written and fsynced, then moved into place, then the directory
    /// is fsynced. A missing directory is created with mode 0700.
    ///
    /// With [`SaveMode::CreateNew`] the move is a hard link, which fails if `path`
    /// exists, so two concurrent enrollments cannot overwrite each other.
    pub fn save(&self, path: &Path, mode: SaveMode) -> Result<(), KeyFileError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyFileError::Io { path, source }
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().ok_or_else(|| KeyFileError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        })?;
        fs::DirBuilder::new().recursive(true).mode(CONFIG_DIR_MODE).create(&dir).map_err(io(&dir))?;
        if mode == SaveMode::CreateNew && fs::symlink_metadata(path).is_ok() {
            return Err(KeyFileError::AlreadyExists { path: path.to_path_buf() });
        }

        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(KEY_FILE_MODE)
                .open(&tmp)
                .map_err(io(&tmp))?;
            // The umask can only clear bits; set the mode explicitly anyway.
            file.set_permissions(fs::Permissions::from_mode(KEY_FILE_MODE)).map_err(io(&tmp))?;
            file.write_all(self.to_json().as_bytes()).map_err(io(&tmp))?;
            file.sync_all().map_err(io(&tmp))?;
            drop(file);
            match mode {
                SaveMode::Replace => fs::rename(&tmp, path).map_err(io(path)),
                SaveMode::CreateNew => match fs::hard_link(&tmp, path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(KeyFileError::AlreadyExists { path: path.to_path_buf() })
                    }
                    Err(e) => Err(io(path)(e)),
                },
            }
        })();
        // After a rename the temporary name is gone; after a link or a failure it is
        // removed here. Failing to remove it leaves a 0600 file, never a broken key file.
        let _ = fs::remove_file(&tmp);
        result?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))
    }

    /// Reads and checks a key file. Refuses a file readable or writable by group or
    /// others ([`KeyFileError::InsecurePermissions`], which says to `chmod 600`),
    /// anything that is not a regular file, and files over [`MAX_KEY_FILE_LEN`].
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source: std::io::Error| KeyFileError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KeyFileError::NotFound { path: path.to_path_buf() },
            _ => io(e),
        })?;
        // Metadata of the opened file, not of the path: no race with a swapped file.
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(corrupt(format!("{} is not a regular file", path.display())));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::InsecurePermissions { path: path.to_path_buf(), mode });
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(corrupt(format!("larger than {MAX_KEY_FILE_LEN} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
        Self::from_json(&text)
    }
}

/// The owner's config directory: `$AGENTKEYS_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/agentkeys` (when absolute), else `$HOME/.config/agentkeys`.
pub fn config_dir() -> Result<PathBuf, KeyFileError> {
    config_dir_from(|name| std::env::var_os(name))
}

/// [`config_dir`] with the environment passed in (empty values count as unset).
pub fn config_dir_from(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, KeyFileError> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var(CONFIG_DIR_ENV) {
        return Ok(dir);
    }
    // The XDG base directory spec says relative values are to be ignored.
    if let Some(xdg) = var("XDG_CONFIG_HOME").filter(|p| p.is_absolute()) {
        return Ok(xdg.join("agentkeys"));
    }
    var("HOME").map(|home| home.join(".config").join("agentkeys")).ok_or(KeyFileError::NoConfigDir)
}

/// The key file's name: `owner-<id>.key`.
pub fn key_file_name(owner: &OwnerId) -> String {
    format!("owner-{owner}.key")
}

/// Where `owner`'s key file lives by default: [`config_dir`] / [`key_file_name`].
pub fn default_path(owner: &OwnerId) -> Result<PathBuf, KeyFileError> {
    Ok(config_dir()?.join(key_file_name(owner)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn owner() -> OwnerId {
        "0x00000000000000000000000000000000000000aa".parse().unwrap()
    }

    fn cheap() -> KdfParams {
        KdfParams::new(8, 1, 1).unwrap()
    }

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.into()).unwrap()
    }

    fn sealed() -> (MasterKey, EncryptedKeyFile) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let key = MasterKey::generate(&mut rng);
        let file = EncryptedKeyFile::seal(&key, &owner(), &pass("correct horse"), cheap(), &mut rng).unwrap();
        (key, file)
    }

    #[test]
    fn production_parameters_are_the_documented_constants() {
        assert_eq!(KdfParams::PRODUCTION, KdfParams::default());
        assert_eq!(KdfParams::PRODUCTION.m_cost_kib(), 65_536, "64 MiB");
        assert_eq!(KdfParams::PRODUCTION.t_cost(), 3);
        assert_eq!(KdfParams::PRODUCTION.p_cost(), 1);
        assert_eq!(KdfParams::new(65_536, 3, 1).unwrap(), KdfParams::PRODUCTION);
        assert_eq!((SALT_LEN, NONCE_LEN, CHECK_LEN), (16, 24, 32));
        assert_eq!(KEY_FILE_MODE, 0o600);
    }

    #[test]
    fn kdf_limits() {
        assert!(KdfParams::new(MAX_M_COST_KIB, MAX_T_COST, MAX_P_COST).is_ok());
        for (m, t, p) in [
            (MAX_M_COST_KIB + 1, 1, 1),
            (8, MAX_T_COST + 1, 1),
            (256, 1, MAX_P_COST + 1),
            (8, 0, 1),
            (8, 1, 0),
            (7, 1, 1),
            (15, 1, 2),
        ] {
            assert_eq!(KdfParams::new(m, t, p).unwrap_err().code(), "KDF_PARAMS", "{m} {t} {p}");
        }
    }

    #[test]
    fn round_trip_through_json_and_disk() {
        let (key, file) = sealed();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(key_file_name(&owner()));
        file.save(&path, SaveMode::CreateNew).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        let loaded = EncryptedKeyFile::load(&path).unwrap();
        assert_eq!(loaded, file);
        assert_eq!(loaded.owner(), &owner());
        assert_eq!(loaded.public_key(), &key.public_key());
        let unlocked = loaded.unlock(&pass("correct horse")).unwrap();
        assert_eq!(unlocked.public_key(), key.public_key());
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let (_, file) = sealed();
        let value: serde_json::Value = serde_json::from_str(&file.to_json()).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "aead",
                "check",
                "ciphertext",
                "kdf",
                "m_cost",
                "nonce",
                "owner",
                "p_cost",
                "public_key",
                "salt",
                "t_cost",
                "version"
            ]
        );
        assert_eq!(value["version"], 1);
        assert_eq!(value["kdf"], "argon2id");
        assert_eq!(value["aead"], "xchacha20poly1305");
        assert_eq!(value["owner"], owner().as_str());
    }

    #[test]
    fn wrong_passphrase_is_reported_as_such() {
        let (_, file) = sealed();
        let err = file.unlock(&pass("correct horsE")).unwrap_err();
        assert!(matches!(err, KeyFileError::WrongPassphrase), "{err:?}");
        assert_eq!(err.code(), "WRONG_PASSPHRASE");
        assert_eq!(err.to_string(), "wrong passphrase");
    }

    /// Edits one JSON field of a sealed file and unlocks with the right passphrase.
    fn tampered(field: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Result<MasterKey, KeyFileError> {
        let (_, file) = sealed();
        let mut value: serde_json::Value = serde_json::from_str(&file.to_json()).unwrap();
        edit(&mut value[field]);
        EncryptedKeyFile::from_json(&value.to_string())?.unlock(&pass("correct horse"))
    }

    fn flip_b64(v: &mut serde_json::Value) {
        let mut bytes = STANDARD.decode(v.as_str().unwrap()).unwrap();
        bytes[0] ^= 1;
        *v = STANDARD.encode(bytes).into();
    }

    #[test]
    fn tampered_ciphertext_and_bound_fields_are_corrupt() {
        for field in ["ciphertext", "nonce"] {
            let err = tampered(field, flip_b64).unwrap_err();
            assert_eq!(err.code(), "KEY_FILE_CORRUPT", "{field}: {err:?}");
        }
        // Another owner: the AAD no longer matches.
        let err =
            tampered("owner", |v| *v = "0x00000000000000000000000000000000000000bb".into()).unwrap_err();
        assert_eq!(err.code(), "KEY_FILE_CORRUPT", "{err:?}");
        // Another valid public key: the AAD no longer matches.
        let other = MasterKey::from_seed(&[3; 32]).public_key().to_base64();
        let err = tampered("public_key", |v| *v = other.into()).unwrap_err();
        assert_eq!(err.code(), "KEY_FILE_CORRUPT", "{err:?}");
        // Fields the key derivation depends on cannot be told from a wrong passphrase (documented).
        for field in ["salt", "check"] {
            let err = tampered(field, flip_b64).unwrap_err();
            assert_eq!(err.code(), "WRONG_PASSPHRASE", "{field}");
        }
    }

    #[test]
    fn malformed_files_are_corrupt_or_unsupported() {
        let err = tampered("version", |v| *v = 2.into()).unwrap_err();
        assert!(matches!(err, KeyFileError::UnsupportedVersion { version: 2 }), "{err:?}");
        for (field, value) in [
            ("kdf", serde_json::Value::from("scrypt")),
            ("aead", "aes256gcm".into()),
            ("owner", "0xABC".into()),
            ("owner", "0x00000000000000000000000000000000000000AA".into()),
            ("salt", "!!".into()),
            ("nonce", "AAAA".into()),
            ("ciphertext", "AAAA".into()),
            ("public_key", "AAAA".into()),
            ("m_cost", "8".into()),
        ] {
            let err = tampered(field, |v| *v = value.clone()).unwrap_err();
            assert_eq!(err.code(), "KEY_FILE_CORRUPT", "{field}={value}: {err:?}");
        }
        let err = tampered("m_cost", |v| *v = (MAX_M_COST_KIB + 1).into()).unwrap_err();
        assert_eq!(err.code(), "KDF_PARAMS");
        let (_, file) = sealed();
        let mut value: serde_json::Value = serde_json::from_str(&file.to_json()).unwrap();
        value["extra"] = 1.into();
        assert_eq!(EncryptedKeyFile::from_json(&value.to_string()).unwrap_err().code(), "KEY_FILE_CORRUPT");
        assert_eq!(EncryptedKeyFile::from_json("not json").unwrap_err().code(), "KEY_FILE_CORRUPT");
        assert_eq!(EncryptedKeyFile::from_json("{}").unwrap_err().code(), "KEY_FILE_CORRUPT");
    }

    #[test]
    fn load_refuses_group_or_world_accessible_files() {
        let (_, file) = sealed();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        file.save(&path, SaveMode::CreateNew).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o644, 0o620] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = EncryptedKeyFile::load(&path).unwrap_err();
            assert_eq!(err.code(), "KEY_FILE_PERMISSIONS", "{mode:o}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("chmod 600 {}", path.display())), "{msg}");
            assert!(msg.contains(&format!("{mode:03o}")), "{msg}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(EncryptedKeyFile::load(&path).is_ok(), "owner-only read is fine");
    }

    #[test]
    fn save_refuses_to_overwrite_unless_asked() {
        let (_, file) = sealed();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        file.save(&path, SaveMode::CreateNew).unwrap();
        let err = file.save(&path, SaveMode::CreateNew).unwrap_err();
        assert_eq!(err.code(), "KEY_FILE_EXISTS");
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let other_key = MasterKey::generate(&mut rng);
        let other = EncryptedKeyFile::seal(&other_key, &owner(), &pass("p"), cheap(), &mut rng).unwrap();
        other.save(&path, SaveMode::Replace).unwrap();
        assert_eq!(EncryptedKeyFile::load(&path).unwrap(), other);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary files left");
    }

    #[test]
    fn load_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = EncryptedKeyFile::load(&dir.path().join("missing.key")).unwrap_err();
        assert_eq!(err.code(), "KEY_FILE_NOT_FOUND");
        let big = dir.path().join("big.key");
        fs::write(&big, vec![b' '; MAX_KEY_FILE_LEN as usize + 1]).unwrap();
        fs::set_permissions(&big, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(EncryptedKeyFile::load(&big).unwrap_err().code(), "KEY_FILE_CORRUPT");
    }

    #[test]
    fn config_dir_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        let all = env(&[("AGENTKEYS_CONFIG_DIR", "/ak"), ("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(config_dir_from(all).unwrap(), PathBuf::from("/ak"));
        let xdg = env(&[("AGENTKEYS_CONFIG_DIR", ""), ("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(config_dir_from(xdg).unwrap(), PathBuf::from("/xdg/agentkeys"));
        let relative_xdg = env(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/home/u")]);
        assert_eq!(config_dir_from(relative_xdg).unwrap(), PathBuf::from("/home/u/.config/agentkeys"));
        assert_eq!(config_dir_from(env(&[])).unwrap_err().code(), "NO_CONFIG_DIR");
        assert_eq!(key_file_name(&owner()), "owner-0x00000000000000000000000000000000000000aa.key");
    }
}

//! Sources of the master key: a file, an environment variable, or a key
//! wrapped by AWS KMS and unwrapped through the KMS Decrypt API.
//!
//! `vault.master_key_source` picks the source; `docs/OPERATIONS.md` describes
//! each one and how to set it up.

pub mod kms;
pub mod sigv4;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use keygate_vault::keys::KEY_LEN;
use keygate_vault::{MasterKey, VaultError};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::config::{Config, MasterKeySourceKind};
use kms::{KmsClient, KmsClientError, KmsError, KmsSettings};
use sigv4::{Credentials, CredentialsError};

/// Largest wrapped key file accepted: a KMS ciphertext blob of a 32-byte key
/// is under 300 bytes, and base64 adds a third.
const MAX_WRAPPED_KEY_FILE_BYTES: u64 = 16 * 1024;

/// Failure to get the master key from its source. No message contains key
/// bytes, the variable's value or AWS credentials.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    File(Box<VaultError>),
    #[error("the environment variable {variable} is not set; set it to the master key as 64 hexadecimal characters (`openssl rand -hex 32` prints a new key)")]
    EnvMissing { variable: String },
    #[error("the environment variable {variable} does not hold a master key: {reason}")]
    EnvInvalid { variable: String, reason: String },
    #[error("cannot read the wrapped master key file {path}: {reason}")]
    WrappedKeyFile { path: PathBuf, reason: String },
    #[error("cannot call KMS at {endpoint}: {source}")]
    Credentials {
        endpoint: String,
        source: CredentialsError,
    },
    #[error(transparent)]
    Kms(Box<KmsError>),
    #[error("KMS at {endpoint} unwrapped {path} to {length} bytes, but a master key is {KEY_LEN} bytes; the file does not hold a wrapped keygate master key")]
    WrongLength {
        endpoint: String,
        path: PathBuf,
        length: usize,
    },
    #[error("invalid [vault.aws_kms] settings: {0}")]
    Client(#[from] KmsClientError),
}

impl From<KmsError> for SourceError {
    fn from(error: KmsError) -> SourceError {
        SourceError::Kms(Box::new(error))
    }
}

/// The configured source of the master key.
pub enum MasterKeySource {
    File { path: PathBuf },
    Env { variable: String },
    AwsKms(AwsKmsSource),
}

/// A master key wrapped by AWS KMS, in a file of base64 text.
pub struct AwsKmsSource {
    client: KmsClient,
    /// The KMS key that wraps the master key; Decrypt checks it when set.
    key_id: Option<String>,
    wrapped_key_file: PathBuf,
}

impl MasterKeySource {
    /// Builds the source that `config` names. Only an `aws_kms` source can
    /// fail here, when its CA file cannot be read.
    pub fn from_config(config: &Config) -> Result<MasterKeySource, SourceError> {
        match config.vault.master_key_source {
            MasterKeySourceKind::File => Ok(MasterKeySource::File {
                path: config.master_key_path(),
            }),
            MasterKeySourceKind::Env => Ok(MasterKeySource::Env {
                variable: config.master_key_env().to_owned(),
            }),
            MasterKeySourceKind::AwsKms => {
                let kms = &config.vault.aws_kms;
                let client = KmsClient::new(KmsSettings {
                    endpoint: kms.endpoint.as_deref().unwrap_or_default(),
                    region: kms.region.as_deref().unwrap_or_default(),
                    ca_file: kms.ca_file.as_deref(),
                    timeout: Duration::from_millis(kms.timeout_ms),
                })?;
                Ok(MasterKeySource::AwsKms(AwsKmsSource {
                    client,
                    key_id: kms.key_id.clone(),
                    wrapped_key_file: config.wrapped_key_path(),
                }))
            }
        }
    }

    /// Names the source for logs and messages, e.g. `file /etc/keygate/master.key`.
    pub fn describe(&self) -> String {
        match self {
            MasterKeySource::File { path } => format!("file {}", path.display()),
            MasterKeySource::Env { variable } => format!("environment variable {variable}"),
            MasterKeySource::AwsKms(source) => format!(
                "{} unwrapped by AWS KMS at {}",
                source.wrapped_key_file.display(),
                source.client.endpoint()
            ),
        }
    }

    /// Reads, or for AWS KMS unwraps, the master key.
    pub async fn fetch(&self) -> Result<MasterKey, SourceError> {
        match self {
            MasterKeySource::File { path } => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || MasterKey::load(&path))
                    .await
                    .map_err(|e| {
                        SourceError::File(Box::new(VaultError::MasterKey {
                            path: None,
                            reason: format!("the task reading the file failed: {e}"),
                        }))
                    })?
                    .map_err(|e| SourceError::File(Box::new(e)))
            }
            MasterKeySource::Env { variable } => {
                let value = std::env::var_os(variable).ok_or_else(|| SourceError::EnvMissing {
                    variable: variable.clone(),
                })?;
                let text = Zeroizing::new(value.into_encoded_bytes());
                let key = parse_hex_key(&text).map_err(|reason| SourceError::EnvInvalid {
                    variable: variable.clone(),
                    reason,
                })?;
                Ok(MasterKey::from_bytes(&key[..]).expect("the key has 32 bytes"))
            }
            MasterKeySource::AwsKms(source) => source.unwrap_key().await,
        }
    }
}

impl AwsKmsSource {
    pub fn client(&self) -> &KmsClient {
        &self.client
    }

    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    pub fn wrapped_key_file(&self) -> &Path {
        &self.wrapped_key_file
    }

    /// Reads the wrapped key file and unwraps it with KMS Decrypt.
    async fn unwrap_key(&self) -> Result<MasterKey, SourceError> {
        let blob = read_wrapped_key_file(&self.wrapped_key_file)?;
        let credentials = self.credentials()?;
        let plaintext = self
            .client
            .decrypt(&credentials, &blob, self.key_id.as_deref())
            .await?;
        MasterKey::from_bytes(&plaintext).map_err(|_| SourceError::WrongLength {
            endpoint: self.client.endpoint().to_string(),
            path: self.wrapped_key_file.clone(),
            length: plaintext.len(),
        })
    }

    /// Wraps `key` with KMS Encrypt under `key_id`; returns the file contents
    /// to store: the ciphertext blob in base64 and a newline.
    pub async fn wrap(&self, key_id: &str, key: &[u8; KEY_LEN]) -> Result<String, SourceError> {
        let credentials = self.credentials()?;
        let blob = self.client.encrypt(&credentials, key_id, key).await?;
        Ok(format!("{}\n", STANDARD.encode(blob)))
    }

    /// Reads AWS credentials from the environment. Nothing else is consulted:
    /// no instance metadata, no profile files.
    pub fn credentials(&self) -> Result<Credentials, SourceError> {
        Credentials::from_environment().map_err(|source| SourceError::Credentials {
            endpoint: self.client.endpoint().to_string(),
            source,
        })
    }
}

/// Reads a file of base64 text (surrounding whitespace allowed) and decodes it.
pub fn read_wrapped_key_file(path: &Path) -> Result<Vec<u8>, SourceError> {
    let error = |reason: String| SourceError::WrappedKeyFile {
        path: path.to_owned(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
    if !metadata.is_file() {
        return Err(error("it is not a regular file".into()));
    }
    if metadata.len() > MAX_WRAPPED_KEY_FILE_BYTES {
        return Err(error(format!(
            "it is {} bytes long, more than the maximum of {MAX_WRAPPED_KEY_FILE_BYTES} bytes",
            metadata.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error(
            "it is empty; run `keygate vault wrap-key` to create it".into(),
        ));
    }
    STANDARD.decode(trimmed).map_err(|e| {
        error(format!(
            "it is not base64 text of a KMS ciphertext blob ({e}); it must hold what `keygate vault wrap-key` writes"
        ))
    })
}

/// Generates the bytes of a new master key from the operating system's generator.
pub fn generate_key_bytes() -> Zeroizing<[u8; KEY_LEN]> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .expect("the operating system's random number generator failed");
    bytes
}

/// Encodes key bytes as 64 lowercase hexadecimal characters.
pub fn encode_hex_key(key: &[u8; KEY_LEN]) -> Zeroizing<String> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = Zeroizing::new(String::with_capacity(KEY_LEN * 2));
    for byte in key {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Decodes 64 hexadecimal characters with optional surrounding whitespace.
/// The error never quotes the input, which is key material.
pub fn parse_hex_key(text: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let text = text.trim_ascii();
    if text.len() != KEY_LEN * 2 {
        return Err(format!(
            "expected {} hexadecimal characters, found {} bytes",
            KEY_LEN * 2,
            text.len()
        ));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (index, pair) in text.chunks_exact(2).enumerate() {
        let (Some(high), Some(low)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
            return Err(format!(
                "character {} or {} is not a hexadecimal digit",
                index * 2 + 1,
                index * 2 + 2
            ));
        };
        key[index] = (high << 4) | low;
    }
    Ok(key)
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_key_round_trip() {
        let key = generate_key_bytes();
        let text = encode_hex_key(&key);
        assert_eq!(text.len(), 64);
        let parsed = parse_hex_key(format!(" {}\n", text.as_str()).as_bytes()).unwrap();
        assert_eq!(*parsed, *key);
        let upper = parse_hex_key(text.to_uppercase().as_bytes()).unwrap();
        assert_eq!(*upper, *key);
    }

    #[test]
    fn hex_key_errors_never_quote_input() {
        let short = parse_hex_key(b"abcd").unwrap_err();
        assert_eq!(short, "expected 64 hexadecimal characters, found 4 bytes");
        let bad = format!("{}zz", "0".repeat(62));
        let err = parse_hex_key(bad.as_bytes()).unwrap_err();
        assert_eq!(err, "character 63 or 64 is not a hexadecimal digit");
    }

    #[test]
    fn wrapped_key_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key.kms");
        std::fs::write(&path, "AQIDBA==\n").unwrap();
        assert_eq!(read_wrapped_key_file(&path).unwrap(), vec![1, 2, 3, 4]);

        std::fs::write(&path, " \n").unwrap();
        let empty = read_wrapped_key_file(&path).unwrap_err().to_string();
        assert!(empty.contains("keygate vault wrap-key"), "{empty}");

        std::fs::write(&path, "not base64!").unwrap();
        let invalid = read_wrapped_key_file(&path).unwrap_err().to_string();
        assert!(invalid.contains("not base64"), "{invalid}");

        let missing = read_wrapped_key_file(&dir.path().join("none")).unwrap_err();
        assert!(missing.to_string().contains("none"), "{missing}");
    }

    #[tokio::test]
    async fn env_source_errors_name_variable() {
        // A name no other test or shell sets, so the process environment is
        // only read here.
        let variable = "KEYGATE_TEST_UNSET_MASTER_KEY_7F3A".to_owned();
        let source = MasterKeySource::Env {
            variable: variable.clone(),
        };
        assert_eq!(
            source.describe(),
            format!("environment variable {variable}")
        );
        let err = source.fetch().await.expect_err("unset variable");
        assert!(matches!(err, SourceError::EnvMissing { .. }), "{err:?}");
        assert!(err.to_string().contains(&variable), "{err}");
    }

    #[tokio::test]
    async fn file_source_reads_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::create(&path).unwrap();
        let source = MasterKeySource::File { path: path.clone() };
        assert!(source.fetch().await.is_ok());

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = source.fetch().await.expect_err("group-readable file");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}

//! Key material and secret values: types that zeroize on drop and whose `Debug`
//! output never shows their bytes.
//!
//! # Master key file format
//!
//! The file contains the 32-byte key as 64 hexadecimal characters (either case),
//! optionally followed by whitespace such as a newline. `openssl rand -hex 32`
//! prints a valid key. On Unix the file must not be readable or writable by
//! the group or by others (`chmod 600 FILE`), and [`MasterKey::load`] rejects it
//! otherwise.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::VaultError;

/// Length of the master key and of data keys, in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Maximum size of a master key file. A valid file is 64 bytes plus a little
/// whitespace, so anything larger is rejected before it is read.
const MAX_KEY_FILE_BYTES: u64 = 1024;

/// The key that encrypts the data keys of every project.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    /// Generates a new random key from the operating system's generator.
    ///
    /// # Panics
    ///
    /// Panics if the operating system's random number generator fails.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut());
        MasterKey(bytes)
    }

    /// Builds a key from exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VaultError> {
        if bytes.len() != KEY_LEN {
            return Err(VaultError::MasterKey {
                path: None,
                reason: format!("expected exactly {KEY_LEN} bytes, got {}", bytes.len()),
            });
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        Ok(MasterKey(key))
    }

    /// Loads the key from a file in the format described in the module
    /// documentation: 64 hexadecimal characters and optional trailing whitespace.
    ///
    /// On Unix, a file whose mode gives the group or others any access
    /// (`mode & 0o077 != 0`) is rejected, and the error names the fix.
    pub fn load(path: &Path) -> Result<Self, VaultError> {
        let error = |reason: String| VaultError::MasterKey {
            path: Some(path.to_owned()),
            reason,
        };
        // The mode is checked on the opened file, so the file that is read is
        // the file that was checked.
        let mut file = fs::File::open(path).map_err(|e| error(format!("cannot open: {e}")))?;
        let metadata = file
            .metadata()
            .map_err(|e| error(format!("cannot read metadata: {e}")))?;
        if !metadata.is_file() {
            return Err(error("is not a regular file".to_owned()));
        }
        check_private_mode(path, &metadata).map_err(error)?;
        if metadata.len() > MAX_KEY_FILE_BYTES {
            return Err(error(format!(
                "is {} bytes long, more than the maximum of {MAX_KEY_FILE_BYTES} bytes for a key file",
                metadata.len()
            )));
        }

        // The buffer is sized up front, so reading does not reallocate and
        // leave a copy of the key in freed memory.
        let mut contents = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_BYTES as usize));
        file.read_to_end(&mut contents)
            .map_err(|e| error(format!("cannot read: {e}")))?;
        let key = decode_hex_key(&contents).map_err(error)?;
        Ok(MasterKey(key))
    }

    /// Generates a key and writes it to a new file with mode 0600, then fsyncs
    /// the file and its folder. A missing parent folder is created with mode
    /// 0700. An existing file is never overwritten: that case is an error.
    pub fn create(path: &Path) -> Result<Self, VaultError> {
        let error = |reason: String| VaultError::MasterKey {
            path: Some(path.to_owned()),
            reason,
        };
        let key = MasterKey::generate();
        let parent = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty());
        if let Some(parent) = parent {
            create_private_dir(parent)
                .map_err(|e| error(format!("cannot create folder {}: {e}", parent.display())))?;
        }

        let mut file = open_new_private_file(path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => {
                error("the file already exists and is never overwritten".to_owned())
            }
            _ => error(format!("cannot create: {e}")),
        })?;
        let text = encode_key_file(&key.0);
        let written = file.write_all(&text).and_then(|()| file.sync_all());
        if let Err(e) = written {
            // A partial file would fail every later load, so remove it.
            let _ = fs::remove_file(path);
            return Err(error(format!("cannot write: {e}")));
        }
        if let Some(parent) = parent {
            sync_dir(parent)
                .map_err(|e| error(format!("cannot sync folder {}: {e}", parent.display())))?;
        }
        Ok(key)
    }

    /// Loads the key file, or creates it with a new key if it does not exist.
    /// The boolean is true when the key was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), VaultError> {
        match fs::symlink_metadata(path) {
            Ok(_) => return MasterKey::load(path).map(|key| (key, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(VaultError::MasterKey {
                    path: Some(path.to_owned()),
                    reason: format!("cannot read: {e}"),
                })
            }
        }
        match MasterKey::create(path) {
            Ok(key) => Ok((key, true)),
            // Another process created the file between the check and the
            // create, so load the key it wrote.
            Err(_) if path.exists() => MasterKey::load(path).map(|key| (key, false)),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(REDACTED)")
    }
}

/// A secret's plaintext value: arbitrary bytes, often UTF-8 text or JSON.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps bytes. Pass a `Vec<u8>` to avoid leaving a second, unzeroized copy.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        SecretValue(Zeroizing::new(bytes.into()))
    }

    /// Wraps the bytes of a string without copying them.
    pub fn from_string(text: String) -> Self {
        SecretValue(Zeroizing::new(text.into_bytes()))
    }

    pub(crate) fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> Self {
        SecretValue(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Returns the value as text, or `None` if it is not valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(REDACTED, {} bytes)", self.0.len())
    }
}

/// Fills `buffer` from the operating system's random number generator.
///
/// # Panics
///
/// Panics if the generator fails, because no key or nonce is safe without it.
pub(crate) fn fill_random(buffer: &mut [u8]) {
    SystemRandom::new()
        .fill(buffer)
        .expect("the operating system's random number generator failed");
}

/// Encodes a key as the contents of a key file: 64 lowercase hexadecimal
/// characters and a newline, in a buffer that never reallocates.
fn encode_key_file(key: &[u8; KEY_LEN]) -> Zeroizing<Vec<u8>> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = Zeroizing::new(Vec::with_capacity(KEY_LEN * 2 + 1));
    for byte in key {
        text.push(DIGITS[usize::from(byte >> 4)]);
        text.push(DIGITS[usize::from(byte & 0x0f)]);
    }
    text.push(b'\n');
    text
}

/// Decodes 64 hexadecimal characters followed by optional whitespace. The
/// error never quotes the file's contents, which are key material.
fn decode_hex_key(contents: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let text = contents.trim_ascii_end();
    if text.len() != KEY_LEN * 2 {
        return Err(format!(
            "expected {} hexadecimal characters and optional trailing whitespace, found {} bytes before the trailing whitespace",
            KEY_LEN * 2,
            text.len()
        ));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (index, pair) in text.chunks_exact(2).enumerate() {
        let (Some(high), Some(low)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
            return Err(format!(
                "byte {} or {} is not a hexadecimal character",
                index * 2,
                index * 2 + 1
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

#[cfg(unix)]
fn check_private_mode(path: &Path, metadata: &fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;

    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:04o} gives the group or others access to the key; run `chmod 600 {}`",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path, _metadata: &fs::Metadata) -> Result<(), String> {
    // TODO: check the file's ACL on Windows; only Unix modes are checked now.
    Ok(())
}

#[cfg(unix)]
fn open_new_private_file(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;

    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_new_private_file(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)
}

#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests;

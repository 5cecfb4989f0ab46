//! Ids of HTTP requests: 32 hex digits, unique within a process and opaque
//! to clients, made without a system call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;

static COUNTER: AtomicU64 = AtomicU64::new(0);
static CIPHER: OnceLock<Aes128> = OnceLock::new();

/// Returns the next request id.
///
/// The id is a counter encrypted with AES-128, under a key drawn from the
/// system's random source at the first call. A block cipher is a
/// permutation, so no two ids of one process are equal. Without the key, an
/// id shows neither the counter nor how many requests came between two ids.
/// Ids of different processes collide only by chance. The ids are not
/// secrets and must not be used as such.
pub fn next() -> String {
    let cipher = CIPHER.get_or_init(|| {
        let mut key = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .expect("the system random source failed");
        Aes128::new(&GenericArray::from(key))
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut block = GenericArray::from(u128::from(count).to_be_bytes());
    cipher.encrypt_block(&mut block);
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for byte in block {
        id.push(char::from(DIGITS[usize::from(byte >> 4)]));
        id.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_hex_and_distinct() {
        let ids: Vec<String> = (0..10_000).map(|_| next()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn consecutive_ids_look_unrelated() {
        let (first, second) = (next(), next());
        let bits = |id: &str| u128::from_str_radix(id, 16).unwrap();
        let changed = (bits(&first) ^ bits(&second)).count_ones();
        // Consecutive counters differ in one or two bits, but their
        // encryptions differ in about 64 of 128. A count outside 32 to 96
        // happens by chance with a probability below 1e-8.
        assert!((32..=96).contains(&changed), "{changed} bits differ");
    }
}

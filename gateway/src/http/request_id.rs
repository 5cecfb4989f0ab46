//! Ids of HTTP requests: 16 hex digits, unique within a process, made
//! without a system call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static COUNTER: AtomicU64 = AtomicU64::new(0);
static OFFSET: OnceLock<u64> = OnceLock::new();

/// Returns the next request id.
///
/// A counter, moved by an offset drawn from the system's random source at
/// the first call, goes through a bijective mixing function. So no two ids
/// of one process are equal, ids of different processes collide only by
/// chance (1 in 2^64 per pair), and an id does not show how many requests
/// came before it. The ids are not secrets and must not be used as such.
pub fn next() -> String {
    let offset = *OFFSET.get_or_init(|| {
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the system random source failed");
        u64::from_le_bytes(bytes)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_add(offset);
    format!("{:016x}", mix(n))
}

/// Applies the SplitMix64 finalizer, a bijection on u64 whose outputs for
/// consecutive inputs look unrelated.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_sixteen_hex_digits_and_distinct() {
        let ids: Vec<String> = (0..10_000).map(|_| next()).collect();
        for id in &ids {
            assert_eq!(id.len(), 16, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{id}"
            );
        }
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn mixing_separates_neighbours_and_inverts() {
        // Neighbouring counters differ in about half of their 64 bits.
        let changed = (mix(41) ^ mix(42)).count_ones();
        assert!((16..=48).contains(&changed), "{changed} bits differ");
        // The steps of `mix` undone in reverse order give the input back,
        // which shows it is a bijection.
        let unmix = |mut z: u64| {
            z = unshift(z, 31);
            z = z.wrapping_mul(inverse(0x94d0_49bb_1331_11eb));
            z = unshift(z, 27);
            z = z.wrapping_mul(inverse(0xbf58_476d_1ce4_e5b9));
            unshift(z, 30)
        };
        for n in [0, 1, 42, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(unmix(mix(n)), n);
        }
    }

    /// Inverts `z ^ (z >> shift)`.
    fn unshift(z: u64, shift: u32) -> u64 {
        let mut x = z;
        for _ in 0..64 / shift {
            x = z ^ (x >> shift);
        }
        x
    }

    /// Returns the multiplicative inverse of an odd number modulo 2^64, by
    /// Newton's method.
    fn inverse(a: u64) -> u64 {
        let mut x = a;
        for _ in 0..6 {
            x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        }
        x
    }
}

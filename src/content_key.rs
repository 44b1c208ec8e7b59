//! FNV-1a: a stable 64-bit key for content, the same in every process and every release (std's
//! hasher is seeded per process). Not a security boundary: a collision only costs a rebuild or
//! a shared lock file.

/// FNV-1a over several byte strings, each followed by a separator, so `["ab", "c"]` and
/// `["a", "bc"]` differ.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}


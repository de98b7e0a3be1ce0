//! `consistent_hash`: Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016). Each backend gets a permutation of a
//! prime-sized table from two hashes of its `host:port`; backends take turns claiming
//! their next free preferred slot, each turn `weight` claims long, until the table is
//! full. A key picks `table[key % M]`.
//!
//! The table depends only on the set of (host:port, weight) pairs: backends are visited
//! in sorted id order and hashed with a fixed algorithm (FNV-1a and a 64-bit finaliser,
//! no per-process seed), so every instance maps keys alike, whatever the config order.
//! Removing one of N backends moves mostly the keys that were on it. An unavailable
//! backend is skipped by probing forward from the key's slot, so a health flip never
//! rebuilds the table or moves the keys of healthy backends.

use std::hash::Hasher;
use std::sync::Arc;

use super::{Pick, PickCtx};
use crate::upstream::Backend;

/// Table size: prime, and ≫ the number of backends (the paper uses 65537).
pub const TABLE_SIZE: usize = 65_537;
const EMPTY: u16 = u16::MAX;

/// A Maglev lookup table over one tier.
pub struct Maglev {
    /// Tier index per slot; EMPTY only for an empty tier.
    table: Box<[u16]>,
}

/// Fixed, version-independent 64-bit hash of `bytes` with a `salt`.
pub fn hash(salt: u64, bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write_u64(salt);
    h.write(bytes);
    mix(h.finish())
}

/// A 64-bit finaliser (splitmix64's): FNV alone spreads short, similar inputs (ports
/// one apart) poorly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Maglev {
    fn fill(tier: &[Arc<Backend>]) -> Box<[u16]> {
        if tier.is_empty() {
            // Never read (`pick` answers an empty tier first): no 128 KiB table for an
            // upstream without backups.
            return Box::new([]);
        }
        let m = TABLE_SIZE as u64;
        let mut table = vec![EMPTY; TABLE_SIZE].into_boxed_slice();
        if tier.len() >= EMPTY as usize {
            return table;
        }
        // Visit backends by id, not config order, so the table is order-independent.
        let mut order: Vec<usize> = (0..tier.len()).collect();
        order.sort_by(|&a, &b| tier[a].id.cmp(&tier[b].id));
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let id = tier[i].id.as_bytes();
                (hash(1, id) % m, hash(2, id) % (m - 1) + 1) // (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut filled = 0;
        while filled < TABLE_SIZE {
            for (k, &i) in order.iter().enumerate() {
                for _ in 0..tier[i].weight.max(1) {
                    let (offset, skip) = perms[k];
                    loop {
                        let slot = ((offset + next[k] * skip) % m) as usize;
                        next[k] += 1;
                        if table[slot] == EMPTY {
                            table[slot] = i as u16;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == TABLE_SIZE {
                        return table;
                    }
                }
            }
        }
        table
    }
}

impl Pick for Maglev {
    fn build(tier: &[Arc<Backend>]) -> Self {
        Maglev {
            table: Self::fill(tier),
        }
    }

    /// The backend of the key's slot, or of the next slots if it is not usable. Without
    /// a key (cannot happen: the caller hashes the client address then), slot 0.
    fn pick(&self, tier: &[Arc<Backend>], ctx: &PickCtx<'_>) -> Option<usize> {
        // With no usable backend the probe below would walk the whole table, on every
        // request, just when backups are serving.
        if !tier.iter().any(|b| ctx.usable(b)) {
            return None;
        }
        let start = (ctx.key.unwrap_or(0) % TABLE_SIZE as u64) as usize;
        // Probing at most one lap; in practice a few slots, as runs of one backend are
        // short.
        (0..TABLE_SIZE)
            .map(|i| self.table[(start + i) % TABLE_SIZE] as usize)
            .find(|&i| tier.get(i).is_some_and(|b| ctx.usable(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Tried;
    use crate::config::BackendUrl;

    fn tier(ids: &[(&str, u32)]) -> Vec<Arc<Backend>> {
        ids.iter()
            .map(|(id, w)| {
                let url = BackendUrl::parse(id).unwrap();
                Arc::new(Backend::new(url, *w, false, Arc::default()))
            })
            .collect()
    }

    fn owner(m: &Maglev, t: &[Arc<Backend>], key: u64) -> String {
        let tried = Tried::default();
        let ctx = PickCtx {
            key: Some(key),
            tried: &tried,
            now: tokio::time::Instant::now(),
        };
        t[m.pick(t, &ctx).unwrap()].id.to_string()
    }

    fn ids(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:8080"), 1)).collect()
    }

    fn as_refs(v: &[(String, u32)]) -> Vec<(&str, u32)> {
        v.iter().map(|(s, w)| (s.as_str(), *w)).collect()
    }

    const KEYS: u64 = 20_000;

    #[test]
    fn the_mapping_does_not_depend_on_list_order() {
        let v = ids(7);
        let mut rev = v.clone();
        rev.reverse();
        let (a, b) = (tier(&as_refs(&v)), tier(&as_refs(&rev)));
        let (ma, mb) = (Maglev::build(&a), Maglev::build(&b));
        for k in 0..KEYS {
            let key = hash(9, &k.to_le_bytes());
            assert_eq!(owner(&ma, &a, key), owner(&mb, &b, key));
        }
    }

    #[test]
    fn removing_one_of_ten_moves_little_else() {
        let v = ids(10);
        let all = tier(&as_refs(&v));
        let less = tier(&as_refs(&v[..9]));
        let (m_all, m_less) = (Maglev::build(&all), Maglev::build(&less));
        let (mut others, mut stayed) = (0, 0);
        for k in 0..KEYS {
            let key = hash(9, &k.to_le_bytes());
            let before = owner(&m_all, &all, key);
            if before == v[9].0 {
                continue;
            }
            others += 1;
            if owner(&m_less, &less, key) == before {
                stayed += 1;
            }
        }
        let kept = stayed as f64 / others as f64;
        assert!(
            kept >= 0.95,
            "only {:.1}% of other keys stayed",
            kept * 100.0
        );
    }

    #[test]
    fn shares_follow_weights() {
        let t = tier(&[("10.0.0.1:80", 3), ("10.0.0.2:80", 1)]);
        let m = Maglev::build(&t);
        let heavy = m.table.iter().filter(|&&i| i == 0).count() as f64 / TABLE_SIZE as f64;
        assert!((heavy - 0.75).abs() < 0.05, "{heavy}");
    }

    #[test]
    fn an_unavailable_backend_moves_only_its_own_keys() {
        let t = tier(&as_refs(&ids(5)));
        let m = Maglev::build(&t);
        let before: Vec<String> = (0..KEYS)
            .map(|k| owner(&m, &t, hash(9, &k.to_le_bytes())))
            .collect();
        t[2].stats.set_unhealthy(true);
        for (k, was) in before.iter().enumerate() {
            let now = owner(&m, &t, hash(9, &(k as u64).to_le_bytes()));
            assert_ne!(now, t[2].id.to_string());
            if *was != *t[2].id {
                assert_eq!(&now, was, "a healthy backend's key moved");
            }
        }
    }
}

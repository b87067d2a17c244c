//! A bounded, TTL'd map from 32-byte keys to byte strings over proxy-wasm shared data, which every
//! worker shares and which cannot delete a key.
//!
//! So the cache lives in a fixed set of keys: `sets` index values, each describing `WAYS` entries
//! (key hash, expiry, insertion time, length), and one body value per way. A key hashes to one set;
//! a lookup reads that set's index (one hostcall) and, on a hit, the body (one more). An insertion
//! takes a free or expired way, or the set's oldest entry, and evicts further entries of the set,
//! oldest first, until the set's bodies fit its share of the byte bound (`max_bytes / sets`). An
//! evicted body is overwritten with nothing, which frees its memory in Envoy. Every body starts with
//! its key hash, so a body that a concurrent insertion replaced reads as a miss, never as another
//! request's answer.

use super::super::policy::store::{update, SharedStore, UpdateError};

/// Entries per set.
pub const WAYS: usize = 4;
const WAY_BYTES: usize = 1 + 32 + 8 + 8 + 4;
const INDEX_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Way {
    used: bool,
    hash: [u8; 32],
    expires_ms: u64,
    stored_ms: u64,
    len: u32,
}

fn decode_index(bytes: Option<&[u8]>) -> [Way; WAYS] {
    let mut ways = [Way::default(); WAYS];
    let Some(b) = bytes else { return ways };
    if b.len() != 1 + WAYS * WAY_BYTES || b.first() != Some(&INDEX_VERSION) {
        return ways;
    }
    for (i, w) in ways.iter_mut().enumerate() {
        let Some(s) = b.get(1 + i * WAY_BYTES..1 + (i + 1) * WAY_BYTES) else { return [Way::default(); WAYS] };
        let u64_at = |o: usize| s.get(o..o + 8).and_then(|x| x.try_into().ok()).map_or(0, u64::from_le_bytes);
        w.used = s.first() == Some(&1);
        if let Some(h) = s.get(1..33).and_then(|x| x.try_into().ok()) {
            w.hash = h;
        }
        w.expires_ms = u64_at(33);
        w.stored_ms = u64_at(41);
        w.len = s.get(49..53).and_then(|x| x.try_into().ok()).map_or(0, u32::from_le_bytes);
    }
    ways
}

fn encode_index(ways: &[Way; WAYS]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + WAYS * WAY_BYTES);
    v.push(INDEX_VERSION);
    for w in ways {
        v.push(u8::from(w.used));
        v.extend_from_slice(&w.hash);
        v.extend_from_slice(&w.expires_ms.to_le_bytes());
        v.extend_from_slice(&w.stored_ms.to_le_bytes());
        v.extend_from_slice(&w.len.to_le_bytes());
    }
    v
}

/// Why an insertion did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Larger than `max_entry_bytes` or than a set's share of `max_bytes`.
    TooLarge,
    /// Other workers kept changing the set.
    Contention,
}

/// The geometry of one cache in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    prefix: String,
    sets: u32,
    set_bytes: u64,
    max_entry_bytes: u32,
    ttl_ms: u64,
}

impl Slots {
    /// `name` separates caches (exact, semantic); the geometry is part of every key, so a reloaded
    /// configuration with another size never reads the old layout.
    pub fn new(name: &str, max_entries: u32, max_bytes: u64, max_entry_bytes: u32, ttl_ms: u64) -> Slots {
        let sets = (max_entries as usize).div_ceil(WAYS).max(1) as u32;
        Slots {
            prefix: format!("sw:{name}:{sets}x{WAYS}:"),
            sets,
            set_bytes: max_bytes / u64::from(sets),
            max_entry_bytes,
            ttl_ms,
        }
    }

    pub fn capacity(&self) -> usize {
        self.sets as usize * WAYS
    }

    fn set_of(&self, hash: &[u8; 32]) -> u32 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&hash[..8]);
        (u64::from_le_bytes(x) % u64::from(self.sets)) as u32
    }

    fn index_key(&self, set: u32) -> String {
        format!("{}i:{set}", self.prefix)
    }

    fn body_key(&self, set: u32, way: usize) -> String {
        format!("{}b:{set}:{way}", self.prefix)
    }

    /// The value stored under `hash`, if it is there and has not expired.
    pub fn get<S: SharedStore + ?Sized>(&self, store: &S, hash: &[u8; 32], now_ms: u64) -> Option<Vec<u8>> {
        let set = self.set_of(hash);
        let (index, _) = store.get(&self.index_key(set));
        let ways = decode_index(index.as_deref());
        let way = ways.iter().position(|w| w.used && w.hash == *hash && w.expires_ms > now_ms)?;
        let (body, _) = store.get(&self.body_key(set, way));
        let mut body = body?;
        if body.len() < 32 || body[..32] != hash[..] {
            return None; // replaced by a concurrent insertion
        }
        body.drain(..32);
        Some(body)
    }

    /// Stores `value` under `hash` for the TTL, evicting as needed. Returns how many entries it evicted.
    pub fn insert<S: SharedStore + ?Sized>(&self, store: &S, hash: &[u8; 32], value: &[u8], now_ms: u64) -> Result<usize, InsertError> {
        let len = value.len() as u64 + 32;
        if value.len() as u64 > u64::from(self.max_entry_bytes) || len > self.set_bytes {
            return Err(InsertError::TooLarge);
        }
        let set = self.set_of(hash);
        let mut chosen = 0usize;
        let mut evicted: Vec<usize> = Vec::new();
        let res = update(store, &self.index_key(set), |cur| -> Result<Vec<u8>, ()> {
            let mut ways = decode_index(cur);
            evicted.clear();
            // Expired entries are free.
            for (i, w) in ways.iter_mut().enumerate() {
                if w.used && w.expires_ms <= now_ms {
                    *w = Way::default();
                    evicted.push(i);
                }
            }
            chosen = ways
                .iter()
                .position(|w| w.used && w.hash == *hash)
                .or_else(|| ways.iter().position(|w| !w.used))
                .unwrap_or_else(|| oldest(&ways, None).unwrap_or(0));
            if ways[chosen % WAYS].used && ways[chosen % WAYS].hash != *hash {
                evicted.push(chosen);
            }
            ways[chosen % WAYS] = Way::default();
            // Evict the oldest others until the set's bodies fit its share of the bound.
            while ways.iter().map(|w| u64::from(w.len)).sum::<u64>() + len > self.set_bytes {
                match oldest(&ways, Some(chosen)) {
                    Some(o) => {
                        ways[o] = Way::default();
                        evicted.push(o);
                    }
                    None => break,
                }
            }
            ways[chosen % WAYS] = Way { used: true, hash: *hash, expires_ms: now_ms.saturating_add(self.ttl_ms), stored_ms: now_ms, len: len as u32 };
            Ok(encode_index(&ways))
        });
        match res {
            Ok(()) => {}
            Err(UpdateError::Rejected(())) | Err(UpdateError::Contention) => return Err(InsertError::Contention),
        }
        let mut body = Vec::with_capacity(value.len() + 32);
        body.extend_from_slice(hash);
        body.extend_from_slice(value);
        let _ = store.set(&self.body_key(set, chosen), &body, 0);
        for e in evicted.iter().filter(|e| **e != chosen) {
            let _ = store.set(&self.body_key(set, *e), &[], 0);
        }
        Ok(evicted.len())
    }
}

/// The way stored longest ago, other than `except`.
fn oldest(ways: &[Way; WAYS], except: Option<usize>) -> Option<usize> {
    ways.iter()
        .enumerate()
        .filter(|(i, w)| w.used && Some(*i) != except)
        .min_by_key(|(_, w)| w.stored_ms)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::store::MemStore;

    fn h(n: u64) -> [u8; 32] {
        let mut x = [0u8; 32];
        x[..8].copy_from_slice(&n.to_le_bytes());
        x[8] = 0xab;
        x
    }

    /// Total bytes of live bodies in the store (what Envoy holds for the cache's bodies).
    fn body_bytes(store: &MemStore, slots: &Slots) -> usize {
        let mut n = 0;
        for s in 0..slots.sets {
            for w in 0..WAYS {
                n += store.get(&slots.body_key(s, w)).0.map_or(0, |b| b.len());
            }
        }
        n
    }

    #[test]
    fn get_what_was_put_until_it_expires() {
        let store = MemStore::new();
        let slots = Slots::new("t", 16, 1 << 20, 4096, 1000);
        assert_eq!(slots.get(&store, &h(1), 0), None);
        slots.insert(&store, &h(1), b"one", 100).unwrap();
        slots.insert(&store, &h(2), b"two", 100).unwrap();
        assert_eq!(slots.get(&store, &h(1), 500).as_deref(), Some(&b"one"[..]));
        assert_eq!(slots.get(&store, &h(2), 1099).as_deref(), Some(&b"two"[..]));
        assert_eq!(slots.get(&store, &h(2), 1100), None, "expired at stored + ttl");
        assert_eq!(slots.get(&store, &h(3), 500), None);
        // Re-inserting refreshes in place.
        slots.insert(&store, &h(1), b"uno", 2000).unwrap();
        assert_eq!(slots.get(&store, &h(1), 2500).as_deref(), Some(&b"uno"[..]));
    }

    #[test]
    fn entries_are_bounded_and_the_oldest_goes_first() {
        let store = MemStore::new();
        // One set of four ways: keys all land in it.
        let slots = Slots::new("t", 4, 1 << 20, 4096, 1_000_000);
        for i in 0..4u64 {
            assert_eq!(slots.insert(&store, &h(i), format!("v{i}").as_bytes(), 10 + i), Ok(0));
        }
        assert_eq!(slots.insert(&store, &h(9), b"v9", 20), Ok(1));
        assert_eq!(slots.get(&store, &h(0), 30), None, "the oldest was evicted");
        for i in [1u64, 2, 3, 9] {
            assert!(slots.get(&store, &h(i), 30).is_some(), "{i}");
        }
        // Only the fixed keys exist: 1 index + 4 bodies, however many insertions.
        for i in 100..200u64 {
            slots.insert(&store, &h(i), b"x", 100 + i).unwrap();
        }
        assert_eq!(store.len(), 1 + WAYS);
    }

    #[test]
    fn bytes_are_bounded_per_set() {
        let store = MemStore::new();
        // 8 entries in 2 sets, 2000 bytes: 1000 per set.
        let slots = Slots::new("t", 8, 2000, 900, 1_000_000);
        assert_eq!(slots.insert(&store, &h(1), &[1u8; 901], 0), Err(InsertError::TooLarge));
        for i in 0..50u64 {
            slots.insert(&store, &h(i), &vec![7u8; 300 + (i as usize * 37) % 500], i).unwrap();
            assert!(body_bytes(&store, &slots) <= 2000, "after {i}: {}", body_bytes(&store, &slots));
        }
        // The newest entry is always there.
        assert!(slots.get(&store, &h(49), 60).is_some());
    }

    #[test]
    fn a_replaced_body_is_a_miss_not_another_answer() {
        let store = MemStore::new();
        let slots = Slots::new("t", 4, 1 << 20, 4096, 1_000_000);
        slots.insert(&store, &h(1), b"one", 0).unwrap();
        // Another worker overwrote the body of that way (the index still names h(1)).
        let mut other = h(2).to_vec();
        other.extend_from_slice(b"two");
        store.set(&slots.body_key(slots.set_of(&h(1)), 0), &other, 0).unwrap();
        assert_eq!(slots.get(&store, &h(1), 1), None);
        // Garbage in the index reads as empty.
        store.set(&slots.index_key(0), b"junk", 0).unwrap();
        assert_eq!(slots.get(&store, &h(1), 1), None);
        slots.insert(&store, &h(1), b"one", 2).unwrap();
        assert_eq!(slots.get(&store, &h(1), 3).as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn an_expired_entry_frees_its_body() {
        let store = MemStore::new();
        let slots = Slots::new("t", 4, 1 << 20, 4096, 100);
        slots.insert(&store, &h(1), &[0u8; 1000], 0).unwrap();
        slots.insert(&store, &h(2), b"small", 500).unwrap();
        assert_eq!(body_bytes(&store, &slots), 32 + 5);
    }
}

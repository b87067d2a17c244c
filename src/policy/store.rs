//! The state every worker shares: a model of proxy-wasm shared data (`get_shared_data` /
//! `set_shared_data`), a compare-and-swap update loop over it, and the compact binary encoding the
//! policy's counters use.
//!
//! Semantics mirrored from Envoy's implementation of proxy-wasm shared data:
//! - `get` of a missing key returns `(None, 0)`;
//! - `set` with `cas == 0` is unconditional; with a non-zero `cas` it fails with [`CasMismatch`]
//!   unless `cas` is the key's current CAS value; a `set` of a key that does not exist yet always
//!   succeeds (whatever `cas` says), so two workers racing to *create* a key can lose one write.
//!   [`crate::policy::Policy::prime`] creates every key once at configuration time so that every
//!   later update is a real compare-and-swap.
//! - every successful `set` gives the key a new CAS value.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// A conditional write lost the race: the value changed since it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// Proxy-wasm shared data, as the policy needs it. The filter implements it over
/// `hostcalls::{get_shared_data, set_shared_data}` (mapping any host error of `set` to
/// [`CasMismatch`], which makes [`update`] retry and then give up); tests use [`MemStore`].
pub trait SharedStore {
    /// The value and its CAS token; `(None, 0)` when the key does not exist.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32);
    /// Writes `value` if `cas` is 0 or still the key's CAS token (see the module notes).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch>;
}

impl<T: SharedStore + ?Sized> SharedStore for &T {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch> {
        (**self).set(key, value, cas)
    }
}

/// How many read-modify-write attempts [`update`] makes before giving up. Envoy serialises
/// shared-data calls under one lock and a worker's critical section is a few microseconds, so a
/// conflict needs another worker writing the same key in that window; 32 losses in a row means the
/// key is pathologically hot, and giving up (a fail-closed rejection for admissions) is better
/// than spinning inside a request callback.
pub const MAX_CAS_ATTEMPTS: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub enum UpdateError<E> {
    /// `f` refused the update (e.g. a limit would be exceeded); nothing was written.
    Rejected(E),
    /// Every attempt lost the compare-and-swap race.
    Contention,
}

/// Read-modify-write of one key under compare-and-swap: reads the value, lets `f` compute the new
/// one from it and writes it back conditionally, retrying from a fresh read when another worker
/// wrote in between. `f` may run several times; side effects must go through captured variables
/// that each run overwrites (the last run is the one that was written).
pub fn update<S, E, F>(store: &S, key: &str, mut f: F) -> Result<(), UpdateError<E>>
where
    S: SharedStore + ?Sized,
    F: FnMut(Option<&[u8]>) -> Result<Vec<u8>, E>,
{
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas) = store.get(key);
        let next = f(current.as_deref()).map_err(UpdateError::Rejected)?;
        match store.set(key, &next, cas) {
            Ok(()) => return Ok(()),
            Err(CasMismatch) => continue,
        }
    }
    Err(UpdateError::Contention)
}

/// An in-memory [`SharedStore`] with Envoy's semantics, for host tests and the command line.
#[derive(Default)]
pub struct MemStore {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    last_cas: Cell<u32>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn next_cas(&self) -> u32 {
        let mut next = self.last_cas.get().wrapping_add(1);
        if next == 0 {
            next = 1;
        }
        self.last_cas.set(next);
        next
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        match self.map.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), *cas),
            None => (None, 0),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch> {
        let next = self.next_cas();
        let mut map = self.map.borrow_mut();
        match map.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Err(CasMismatch);
                }
                *entry = (value.to_vec(), next);
            }
            None => {
                map.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Compact binary encoding: little-endian fixed-width integers. Decoding never panics; a short or
// malformed buffer yields `None`.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    /// A writer that holds `n` bytes without growing: re-encoding a value of known size in one
    /// allocation (growing byte by byte from empty was a fifth of a policy update's work).
    pub fn with_capacity(n: usize) -> Self {
        Writer { buf: Vec::with_capacity(n) }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|s| s.first().copied())
    }
    pub fn u16(&mut self) -> Option<u16> {
        let s = self.take(2)?;
        Some(u16::from_le_bytes(s.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        let s = self.take(8)?;
        Some(u64::from_le_bytes(s.try_into().ok()?))
    }
    pub fn is_at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Stores for tests: one that injects CAS conflicts, one that is shared between threads.

    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// Wraps a [`MemStore`]; on the reads it is told to, it rewrites the key behind the caller's
    /// back (same value, new CAS), as another worker would, so the caller's next `set` fails.
    pub struct ConflictStore {
        pub inner: MemStore,
        /// Conflict on read number `i` (0-based) when `pattern(i)` is true.
        pattern: Box<dyn Fn(usize) -> bool>,
        reads: Cell<usize>,
        pub conflicts: Cell<usize>,
    }

    impl ConflictStore {
        pub fn new(pattern: impl Fn(usize) -> bool + 'static) -> Self {
            ConflictStore { inner: MemStore::new(), pattern: Box::new(pattern), reads: Cell::new(0), conflicts: Cell::new(0) }
        }
    }

    impl SharedStore for ConflictStore {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
            let i = self.reads.get();
            self.reads.set(i + 1);
            let got = self.inner.get(key);
            if (self.pattern)(i) {
                if let Some(v) = &got.0 {
                    self.conflicts.set(self.conflicts.get() + 1);
                    let _ = self.inner.set(key, v, 0);
                }
            }
            got
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch> {
            self.inner.set(key, value, cas)
        }
    }

    /// Values with their CAS, and the last CAS handed out.
    type SyncInner = (HashMap<String, (Vec<u8>, u32)>, u32);

    /// A thread-safe store with the same semantics, for real interleavings between threads. The
    /// lock is held only inside one `get` or one `set`, never across both, as in Envoy.
    #[derive(Default)]
    pub struct SyncStore {
        map: Mutex<SyncInner>,
    }

    impl SharedStore for SyncStore {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
            let guard = self.map.lock().unwrap();
            let r = match guard.0.get(key) {
                Some((v, c)) => (Some(v.clone()), *c),
                None => (None, 0),
            };
            drop(guard);
            // Give other threads a chance to write between this read and the caller's set.
            std::thread::yield_now();
            r
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), CasMismatch> {
            let mut guard = self.map.lock().unwrap();
            guard.1 = guard.1.wrapping_add(1).max(1);
            let next = guard.1;
            match guard.0.get_mut(key) {
                Some(e) if cas != 0 && cas != e.1 => Err(CasMismatch),
                Some(e) => {
                    *e = (value.to_vec(), next);
                    Ok(())
                }
                None => {
                    guard.0.insert(key.to_string(), (value.to_vec(), next));
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::ConflictStore;
    use super::*;

    fn incr(cur: Option<&[u8]>) -> Result<Vec<u8>, ()> {
        let n = cur.and_then(|b| Reader::new(b).u64()).unwrap_or(0);
        let mut w = Writer::new();
        w.u64(n + 1);
        Ok(w.finish())
    }

    fn read(store: &impl SharedStore, key: &str) -> u64 {
        store.get(key).0.and_then(|b| Reader::new(&b).u64()).unwrap_or(0)
    }

    #[test]
    fn mem_store_mirrors_proxy_wasm_cas() {
        let s = MemStore::new();
        assert_eq!(s.get("k"), (None, 0));
        // Creating a key succeeds whatever the cas.
        s.set("k", b"a", 77).unwrap();
        let (v, c1) = s.get("k");
        assert_eq!(v.as_deref(), Some(&b"a"[..]));
        assert_ne!(c1, 0);
        s.set("k", b"b", c1).unwrap();
        let (_, c2) = s.get("k");
        assert_ne!(c1, c2);
        // A stale cas fails; 0 is unconditional.
        assert_eq!(s.set("k", b"c", c1), Err(CasMismatch));
        s.set("k", b"d", 0).unwrap();
        assert_eq!(s.get("k").0.as_deref(), Some(&b"d"[..]));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn update_retries_on_injected_conflicts() {
        // Every other read is followed by a concurrent write: each update needs two attempts.
        let s = ConflictStore::new(|i| i % 2 == 0);
        s.inner.set("n", &0u64.to_le_bytes(), 0).unwrap();
        let mut runs = 0;
        for _ in 0..10 {
            update(&s, "n", |cur| {
                runs += 1;
                incr(cur)
            })
            .unwrap();
        }
        assert_eq!(read(&s.inner, "n"), 10, "no increment lost, none doubled");
        assert_eq!(runs, 20);
        assert_eq!(s.conflicts.get(), 10);
    }

    #[test]
    fn update_gives_up_after_bounded_attempts() {
        let s = ConflictStore::new(|_| true);
        s.inner.set("n", &5u64.to_le_bytes(), 0).unwrap();
        let mut runs = 0;
        let r = update(&s, "n", |cur| {
            runs += 1;
            incr(cur)
        });
        assert_eq!(r, Err(UpdateError::Contention));
        assert_eq!(runs, MAX_CAS_ATTEMPTS);
        assert_eq!(read(&s.inner, "n"), 5);
    }

    #[test]
    fn rejected_update_writes_nothing() {
        let s = MemStore::new();
        s.set("n", &1u64.to_le_bytes(), 0).unwrap();
        let (_, before) = s.get("n");
        let r: Result<(), UpdateError<&str>> = update(&s, "n", |_| Err("no"));
        assert_eq!(r, Err(UpdateError::Rejected("no")));
        assert_eq!(s.get("n").1, before);
    }

    #[test]
    fn reader_never_panics_on_short_input() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0201));
        assert_eq!(r.u64(), None);
        assert_eq!(r.u8(), Some(3));
        assert_eq!(r.u8(), None);
        assert!(r.is_at_end());
    }
}

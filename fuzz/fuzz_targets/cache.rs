//! The answer cache's parsers on untrusted bytes (`cache::key`, `cache::replay`, `cache::semantic`,
//! `cache::slots`, `cache::Entry`).
//!
//! Input: `[mode][bytes]`.
//!
//! Properties: nothing panics; a canonical request is JSON and canonicalising it again changes
//! nothing; a stream that folds replays as a stream that folds back to the same completion; garbage
//! in shared data (an index, a body, a vector bucket) reads as a miss, and an insertion over it works.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::cache::{key, replay, semantic, slots::Slots, Entry};
use switchyard::policy::store::{MemStore, SharedStore};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            // A stream in pieces of the sizes the first byte suggests.
            let step = usize::from(bytes.first().copied().unwrap_or(1)).max(1);
            let mut fold = replay::StreamFold::new(1 << 20);
            for piece in bytes.chunks(step) {
                fold.push(piece);
            }
            if let Some(completion) = fold.finish() {
                let again = replay::stream_from_completion(&completion, true).expect("a folded completion replays");
                let mut fold2 = replay::StreamFold::new(1 << 22);
                fold2.push(&again);
                let back = fold2.finish().expect("a replayed stream folds");
                let a: serde_json::Value = serde_json::from_slice(&completion).unwrap();
                let b: serde_json::Value = serde_json::from_slice(&back).unwrap();
                assert_eq!(a["choices"], b["choices"]);
                assert_eq!(a.get("usage"), b.get("usage"));
            }
        }
        1 => {
            if let Ok(c) = key::canonical_request(bytes, "m", true) {
                let v: serde_json::Value = serde_json::from_slice(&c).expect("canonical JSON");
                assert_eq!(key::canonical_request(&c, "m", true).as_deref(), Ok(&c[..]), "{v}");
            }
            let _ = key::semantic_parts(bytes, "m", true);
        }
        2 => {
            let _ = semantic::parse_embedding(bytes);
            if let Some(e) = Entry::decode(bytes) {
                let _ = e.answer(true, true);
                let _ = e.usage();
            }
            let _ = replay::stream_from_completion(bytes, bytes.len() % 2 == 0);
        }
        _ => {
            // Garbage in every key the cache and the semantic index read.
            let store = MemStore::new();
            let slots = Slots::new("cache", 4, 1 << 20, 1 << 16, 1000);
            let cfg: semantic::SemanticConfig = serde_json::from_str(r#"{"cluster":"c","model":"m","max_entries":8,"threshold":0.5}"#).unwrap();
            let index = semantic::SemanticIndex::new(&cfg, 1000);
            for k in ["sw:cache:1x4:i:0", "sw:cache:1x4:b:0:0", "sw:cache:1x4:b:0:1", "sw:semantic:1x8:0"] {
                store.set(k, bytes, 0).unwrap();
            }
            let mut h = [0u8; 32];
            for (i, b) in bytes.iter().take(32).enumerate() {
                h[i] = *b;
            }
            let _ = slots.get(&store, &h, 1);
            let _ = index.nearest(&store, &h, &[0.6, 0.8], 1);
            slots.insert(&store, &h, b"answer", 1).expect("an insertion over garbage");
            assert_eq!(slots.get(&store, &h, 2).as_deref(), Some(&b"answer"[..]));
            assert!(index.insert(&store, &h, &h, &[0.6, 0.8], 1));
            assert!(index.nearest(&store, &h, &[0.6, 0.8], 2).is_some());
        }
    }
});

//! Switchyard: an LLM gateway inside Envoy, as a proxy-wasm filter.
//!
//! Everything but [`filter`] is plain Rust that builds and tests on the host; `filter` only moves
//! bytes between Envoy and that code.

pub mod api;
pub mod cache;
pub mod config;
pub mod policy;
pub mod providers;
/// The gateway file and its rendering into Envoy and Istio configuration (command line only).
#[cfg(not(target_arch = "wasm32"))]
pub mod render;
pub mod stream;
pub mod telemetry;

#[cfg(target_arch = "wasm32")]
mod filter;

/// PROTOTYPE: the same core as an Envoy dynamic module (see `native`'s docs).
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
mod native;

//! Pure decisions: routing, keys, limits.
pub mod routing;

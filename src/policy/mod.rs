//! Pure decisions: routing, keys, limits.
pub mod routing;
pub mod rules;

// Virtual keys, rate limits, budgets and cost (host-testable; the filter wires them to Envoy).
pub mod budget;
pub mod canary;
pub mod capabilities;
pub mod deadline;
pub mod estimate;
pub mod fleet;
pub mod gate;
pub mod guardrails;
pub mod headers;
pub mod keys;
pub mod latency;
pub mod limits;
pub mod pricing;
pub mod route_check;
pub mod store;

pub use gate::{Admission, FleetCharge, FleetTags, LedgerKind, Outcome, Policy, PolicyConfig, Principal, Rejection, Settlement};

//! The OpenAI contract the gateway serves to applications.

pub mod chat;
pub mod embeddings;
pub mod error;
pub mod ingress;
pub mod limits;
pub mod messages;
pub mod models;
pub mod responses;

pub use error::ApiError;

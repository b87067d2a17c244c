//! One module per provider wire schema. Each translates an OpenAI chat request into the schema's
//! request and the schema's answer (whole or streamed) back into OpenAI's shape.

pub mod anthropic;
pub mod openai;

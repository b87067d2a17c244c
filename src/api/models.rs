//! `GET /v1/models`: the list of models the gateway serves, built from its configuration.

use serde::Serialize;

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
}

/// Serialises the model list; `models` are `(id, owned_by)` pairs.
pub fn model_list_json<'a>(models: impl Iterator<Item = (&'a str, &'a str)>, created: u64) -> Vec<u8> {
    let list = ModelList {
        object: "list",
        data: models.map(|(id, owned_by)| ModelObject { id, object: "model", created, owned_by }).collect(),
    };
    serde_json::to_vec(&list).unwrap_or_default()
}

/// One model object (`GET /v1/models/{id}`).
pub fn model_json(id: &str, owned_by: &str, created: u64) -> Vec<u8> {
    serde_json::to_vec(&ModelObject { id, object: "model", created, owned_by }).unwrap_or_default()
}

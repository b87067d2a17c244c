//! `switchyard render FILE --target istio` (below).

use super::yaml::Node;
use super::GatewayFile;

pub fn render(_f: &GatewayFile) -> Result<Vec<Node>, String> {
    Err("--target istio is not implemented yet".into())
}

pub fn to_yaml(docs: &[Node], header: &str) -> String {
    let mut out = header.to_string();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&super::yaml::to_yaml(d, ""));
    }
    out
}

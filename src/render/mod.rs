//! The gateway file: one short YAML (or JSON) file that describes a whole gateway — listener,
//! module, backends, models with their candidates in order, keys and limits, routing — and its
//! rendering into a complete Envoy bootstrap (`switchyard render FILE --target envoy`) or Istio
//! resources (`--target istio`). Native command line only: the filter never links it.
//!
//! ```yaml
//! listen: 127.0.0.1:10000
//! backends:
//!   openai: { schema: openai, credential: { env: OPENAI_API_KEY } }
//!   anthropic: { schema: anthropic, credential: { env: ANTHROPIC_API_KEY } }
//! models:
//! - name: gpt-4o-mini
//!   candidates: [openai/gpt-4o-mini, anthropic/claude-3-5-haiku-20241022]
//! ```

pub mod envoy;
pub mod istio;
pub mod yaml;

use yaml::Node;

/// Where the filter's module comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Module {
    /// A local file Envoy reads (`vm_config.code.local.filename`).
    File(String),
    /// An HTTP(S) URL with its pinned sha256 (`vm_config.code.remote`).
    Remote { url: String, sha256: String },
    /// An OCI image (`oci://registry/repository:tag`, the Wasm image spec's compat variant that
    /// `scripts/package` writes), for `--target istio` only: istio-agent pulls it. `sha256` is the
    /// image's manifest digest (hex), which istio-agent checks; Envoy itself cannot pull images.
    Image { image: String, sha256: Option<String> },
}

/// How Envoy reaches a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    /// TLS with this name as SNI and as the certificate's required DNS SAN.
    pub tls: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BackendDef {
    pub name: String,
    /// The backend plugin's configuration of this backend (renderer-only fields removed).
    pub config: Node,
    pub endpoint: Endpoint,
    /// Environment variables the backend reads its credentials from.
    pub env: Vec<String>,
    /// A credential Envoy reads from an SDS file it watches (rotated without a restart).
    pub sds: Option<SdsCredential>,
    /// Bedrock with `aws: {signer: envoy}`: Envoy's AWS request signing filter signs its requests.
    pub aws_signer: Option<EnvoyAwsSigner>,
}

/// `aws: {signer: envoy, …}` of a Bedrock backend: Envoy's `aws_request_signing` filter (an
/// upstream filter after the backend filter, so it signs the translated request) signs requests
/// whose `:authority` is the backend's `host`, with credentials from Envoy's own providers, which
/// re-read or refresh them (session tokens included) without a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyAwsSigner {
    pub region: String,
    pub host: String,
    pub credentials: AwsCredentialSource,
}

/// Where Envoy's signer gets AWS credentials.
#[derive(Debug, Clone, PartialEq)]
pub enum AwsCredentialSource {
    /// Only an AWS credentials file (INI, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_session_token` under `[profile]`), re-read when it is replaced in its directory.
    File { path: String, profile: Option<String> },
    /// Envoy's default chain: environment, credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
    /// `~/.aws/credentials`), web identity (IRSA), container and instance metadata; `profile`
    /// picks the credentials file's profile.
    DefaultChain { profile: Option<String> },
}

/// `credential: {sds: PATH}`: Envoy's credential injector (an upstream filter after the backend
/// filter) sets the header from the generic secret in PATH, an SDS file Envoy watches; it applies
/// to requests whose `:authority` is the backend's `host`.
#[derive(Debug, Clone)]
pub struct SdsCredential {
    pub path: String,
    pub secret: String,
    pub header: String,
    pub prefix: String,
    pub host: String,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub backend: String,
    pub model: Option<String>,
    pub priority: u32,
    pub weight: Option<u32>,
}

/// One Envoy route (and its cluster): the candidates of the model that defines it.
#[derive(Debug, Clone)]
pub struct RouteDef {
    pub name: String,
    pub candidates: Vec<Candidate>,
    pub retries: u32,
    pub timeout: String,
    pub idle_timeout: String,
    /// Every model entry on this route hedges.
    pub hedge: bool,
}

#[derive(Debug, Clone)]
pub struct GatewayFile {
    pub listen: (String, u16),
    pub admin: Option<(String, u16)>,
    pub module: Module,
    pub vm_id: String,
    pub env: Vec<String>,
    pub access_log: Option<String>,
    pub stats_flush_interval: Option<String>,
    pub connect_timeout: String,
    pub ca_file: String,
    pub outlier_detection: bool,
    /// The gateway plugin's configuration, as rendered.
    pub gateway: Node,
    pub backends: Vec<BackendDef>,
    pub routes: Vec<RouteDef>,
    /// Whether the gateway sets `x-switchyard-needs-*` headers (capabilities are configured).
    pub capabilities: bool,
    /// `--target istio`: namespace, workload labels, route configuration port.
    pub istio: IstioSettings,
    /// Limits and budgets counted fleet-wide (`auth.ledger: fleet`): the rate limit service.
    pub fleet: Option<FleetSettings>,
}

/// `fleet:` — where the rate limit service is, and what a request gets when it cannot be reached.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub rate_limit_service: (String, u16),
    pub failure_mode_deny: bool,
}

#[derive(Debug, Clone)]
pub struct IstioSettings {
    pub namespace: String,
    pub selector: Vec<(String, String)>,
    pub port: Option<u16>,
}

pub const DEFAULT_MODULE: &str = "target/wasm32-wasip1/release/switchyard.wasm";
const RENDER_MODEL_KEYS: &[&str] = &["candidates", "retries", "timeout", "idle_timeout"];
const RENDER_BACKEND_KEYS: &[&str] = &["address", "tls"];
/// Gateway plugin fields that may be written at the top of the file (the rest go under `gateway:`).
const GATEWAY_TOP: &[&str] = &["auth", "routing", "capabilities", "limits", "metrics", "guardrails", "cache"];
const TOP: &[&str] = &[
    "listen",
    "admin",
    "module",
    "vm_id",
    "env",
    "access_log",
    "stats_flush_interval",
    "connect_timeout",
    "ca_file",
    "outlier_detection",
    "gateway",
    "backends",
    "models",
    "auth",
    "routing",
    "capabilities",
    "limits",
    "metrics",
    "guardrails",
    "cache",
    "istio",
    "fleet",
];

/// Errors that name the field and say what to do.
#[derive(Debug, Default)]
pub struct Problems {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Problems {
    fn err(&mut self, field: &str, msg: impl std::fmt::Display) {
        self.errors.push(format!("{field}: {msg}"));
    }
}

/// Whether a parsed YAML/JSON document is a gateway file (rather than a plugin configuration or an
/// Envoy configuration).
pub fn is_gateway_file(doc: &serde_yaml::Value) -> bool {
    doc.get("models").is_some() && doc.get("backends").is_some() && doc.get("role").is_none() && doc.get("static_resources").is_none()
}

/// Parses and validates a gateway file. `Err` carries every problem found.
pub fn parse(text: &str) -> Result<(GatewayFile, Vec<String>), Vec<String>> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| vec![format!("not valid YAML or JSON: {e}")])?;
    let node = Node::from_yaml(&doc).map_err(|e| vec![e])?;
    let mut p = Problems::default();
    let file = build(&node, &mut p);
    match file {
        Some(f) if p.errors.is_empty() => {
            check_plugins(&f, &mut p);
            if p.errors.is_empty() {
                Ok((f, p.warnings))
            } else {
                Err(p.errors)
            }
        }
        _ => Err(p.errors),
    }
}

fn str_field(n: &Node, key: &str, p: &mut Problems, path: &str) -> Option<String> {
    match n.get(key) {
        None | Some(Node::Null) => None,
        Some(Node::Str(s)) => Some(s.clone()),
        Some(Node::Int(i)) => Some(i.to_string()),
        Some(_) => {
            p.err(&format!("{path}{key}"), "must be a string");
            None
        }
    }
}

fn host_port(s: &str, field: &str, default_port: Option<u16>, p: &mut Problems) -> Option<(String, u16)> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, port)) => match port.parse::<u16>() {
            Ok(port) if port > 0 => (h.trim_start_matches('[').trim_end_matches(']').to_string(), port),
            _ => {
                p.err(field, format!("{s:?}: the port must be a number from 1 to 65535 (write host:port, e.g. 127.0.0.1:10000)"));
                return None;
            }
        },
        None => match default_port {
            Some(port) => (s.to_string(), port),
            None => {
                p.err(field, format!("{s:?}: write host:port, e.g. 127.0.0.1:10000"));
                return None;
            }
        },
    };
    if host.is_empty() || host.contains(['/', ' ']) {
        p.err(field, format!("{s:?}: the host must be a hostname or an IP address"));
        return None;
    }
    Some((host, port))
}

/// A duration as Envoy takes it (`5s`, `0.5s`, `250ms` is not: Envoy's proto durations are seconds).
fn duration(s: &str, field: &str, p: &mut Problems) -> Option<String> {
    let ok = s.strip_suffix('s').is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok_and(|v| v >= 0.0));
    if !ok {
        p.err(field, format!("{s:?}: write a duration in seconds with an `s`, e.g. 5s or 0.5s"));
        return None;
    }
    Some(s.to_string())
}

/// Strings that look like a provider secret (API keys, AWS access key ids).
pub fn looks_like_secret(s: &str) -> bool {
    let long_token = |prefix: &str, min: usize| {
        s.strip_prefix(prefix).is_some_and(|rest| rest.len() >= min && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    };
    long_token("sk-", 20)
        || long_token("sk-ant-", 20)
        || long_token("AIza", 30)
        || long_token("gsk_", 20)
        || long_token("xai-", 20)
        || long_token("ya29.", 20)
        || (s.len() == 20 && (s.starts_with("AKIA") || s.starts_with("ASIA")) && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
}

fn find_secrets(n: &Node, path: &str, p: &mut Problems) {
    match n {
        Node::Str(s) if looks_like_secret(s) => p.err(
            path,
            "looks like a credential; the gateway file (and what it renders) must hold no secrets: put it in an environment variable and refer to it (credential: {env: NAME})",
        ),
        Node::Map(m) => {
            for (k, v) in m {
                find_secrets(v, &format!("{path}.{k}"), p);
            }
        }
        Node::List(l) => {
            for (i, v) in l.iter().enumerate() {
                find_secrets(v, &format!("{path}[{i}]"), p);
            }
        }
        _ => {}
    }
}

fn build(doc: &Node, p: &mut Problems) -> Option<GatewayFile> {
    let Node::Map(top) = doc else {
        p.err("(file)", "a gateway file is a mapping with at least `backends` and `models`");
        return None;
    };
    for (k, _) in top {
        if !TOP.contains(&k.as_str()) {
            p.err(k, format!("unknown field; the gateway file knows {} (other gateway plugin fields go under `gateway:`)", TOP.join(", ")));
        }
    }
    find_secrets(doc, "", p);
    let listen = str_field(doc, "listen", p, "").unwrap_or_else(|| "0.0.0.0:10000".into());
    let listen = host_port(&listen, "listen", None, p).unwrap_or(("0.0.0.0".into(), 10000));
    let admin = match doc.get("admin") {
        Some(Node::Bool(false)) => None,
        _ => {
            let a = str_field(doc, "admin", p, "").unwrap_or_else(|| "127.0.0.1:9901".into());
            host_port(&a, "admin", None, p)
        }
    };
    let module = match doc.get("module") {
        None | Some(Node::Null) => Module::File(DEFAULT_MODULE.into()),
        Some(Node::Str(s)) => Module::File(s.clone()),
        Some(m @ Node::Map(_)) => {
            let url = str_field(m, "url", p, "module.");
            let sha = str_field(m, "sha256", p, "module.");
            let file = str_field(m, "file", p, "module.");
            let image = str_field(m, "image", p, "module.");
            if let Node::Map(fields) = m {
                for (k, _) in fields {
                    if !["url", "sha256", "file", "image"].contains(&k.as_str()) {
                        p.err(&format!("module.{k}"), "unknown field; module knows file, url and sha256, or image and sha256");
                    }
                }
            }
            let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            match (file, url, image, sha) {
                (Some(f), None, None, None) => Module::File(f),
                (None, Some(url), None, Some(sha)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        p.err("module.url", "must be an http:// or https:// URL");
                    }
                    if !hex64(&sha) {
                        p.err("module.sha256", "must be the module's sha256 as 64 lower-case hex digits (sha256sum switchyard.wasm)");
                    }
                    Module::Remote { url, sha256: sha }
                }
                (None, Some(_), None, None) => {
                    p.err("module.sha256", "a module fetched from a URL needs its pinned sha256 (sha256sum switchyard.wasm)");
                    return None;
                }
                (None, None, Some(image), sha) => {
                    let rest = image.strip_prefix("oci://").unwrap_or("");
                    let (repo, tag_or_digest) = match rest.rsplit_once('@') {
                        Some((r, d)) => (r, Some(d)),
                        None => match rest.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                            Some((r, t)) => (r, Some(t)),
                            None => (rest, None),
                        },
                    };
                    if !repo.contains('/') || tag_or_digest.is_none_or(str::is_empty) {
                        p.err(
                            "module.image",
                            "must be an OCI image reference with a tag or a digest: oci://registry.example.com/switchyard/filter:0.1.0 \
                             (push scripts/package's image there)",
                        );
                    }
                    // scripts/package prints the digest as sha256:HEX; Istio compares the hex.
                    let sha = sha.map(|s| s.strip_prefix("sha256:").map(str::to_string).unwrap_or(s));
                    if let Some(s) = &sha {
                        if !hex64(s) {
                            p.err(
                                "module.sha256",
                                "must be the image's manifest digest (scripts/package prints it as \"manifest\"): sha256:HEX or 64 lower-case hex digits",
                            );
                        }
                    }
                    if sha.is_none() && !rest.contains('@') {
                        p.warnings.push(
                            "module.image: a tag without sha256 is not pinned: each gateway pulls whatever the tag names when it starts \
                             (unverified bytes, possibly different versions across pods); add sha256 (the manifest digest) or use @sha256:…"
                                .to_string(),
                        );
                    }
                    Module::Image { image, sha256: sha }
                }
                _ => {
                    p.err("module", "write a path, {file: PATH}, {url: URL, sha256: HEX}, or {image: oci://REGISTRY/REPO:TAG, sha256: DIGEST}");
                    return None;
                }
            }
        }
        Some(_) => {
            p.err("module", "write a path, {file: PATH}, {url: URL, sha256: HEX}, or {image: oci://REGISTRY/REPO:TAG, sha256: DIGEST}");
            return None;
        }
    };
    let vm_id = str_field(doc, "vm_id", p, "").unwrap_or_else(|| "switchyard".into());
    let mut env: Vec<String> = Vec::new();
    match doc.get("env") {
        None => {}
        Some(Node::List(l)) => {
            for (i, e) in l.iter().enumerate() {
                match e.as_str() {
                    Some(s) if valid_env(s) => push_unique(&mut env, s),
                    _ => p.err(&format!("env[{i}]"), "must be an environment variable name (letters, digits, _)"),
                }
            }
        }
        Some(_) => p.err("env", "must be a list of environment variable names passed into the VM"),
    }
    let access_log = match doc.get("access_log") {
        Some(Node::Bool(false)) | Some(Node::Null) => None,
        _ => Some(str_field(doc, "access_log", p, "").unwrap_or_else(|| "/dev/stdout".into())),
    };
    let stats_flush_interval = str_field(doc, "stats_flush_interval", p, "").and_then(|s| duration(&s, "stats_flush_interval", p));
    let connect_timeout =
        str_field(doc, "connect_timeout", p, "").and_then(|s| duration(&s, "connect_timeout", p)).unwrap_or_else(|| "5s".into());
    let ca_file = str_field(doc, "ca_file", p, "").unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let outlier_detection = match doc.get("outlier_detection") {
        None => true,
        Some(Node::Bool(b)) => *b,
        Some(_) => {
            p.err("outlier_detection", "must be true or false");
            true
        }
    };

    // Backends.
    let mut backends = Vec::new();
    match doc.get("backends") {
        Some(Node::Map(m)) if !m.is_empty() => {
            for (name, b) in m {
                if let Some(def) = backend(name, b, p) {
                    for e in &def.env {
                        push_unique(&mut env, e);
                    }
                    backends.push(def);
                }
            }
        }
        _ => p.err("backends", "must be a mapping of backend names to their configuration, e.g. openai: {schema: openai, credential: {env: OPENAI_API_KEY}}"),
    }

    // Envoy's credential injector and AWS signer pick their backend by `:authority`: its host must
    // be that backend's alone.
    for b in &backends {
        let keyed = b.sds.as_ref().map(|s| s.host.as_str()).or(b.aws_signer.as_ref().map(|s| s.host.as_str()));
        let Some(host) = keyed else { continue };
        for o in backends.iter().filter(|o| o.name != b.name) {
            if o.config.get("host").and_then(Node::as_str).is_some_and(|h| h.eq_ignore_ascii_case(host)) {
                p.err(
                    &format!("backends.{}.host", b.name),
                    format!(
                        "backend {} has the same host ({host}); Envoy applies this backend's credential (credential.sds or aws.signer: envoy) by the request's :authority: give each such backend its own host",
                        o.name
                    ),
                );
            }
            // A backend without `host` is sent with its name as `:authority` when the client's
            // names a configured host: that name must not be this host either.
            if o.config.get("host").is_none() && o.name.eq_ignore_ascii_case(host) {
                p.err(
                    &format!("backends.{}", o.name),
                    format!("is named like backend {}'s host ({host}), whose credential Envoy applies by :authority: rename it or set its host", b.name),
                );
            }
        }
    }

    // Models → gateway entries and routes.
    let mut entries = Vec::new();
    let mut routes: Vec<RouteDef> = Vec::new();
    let mut defined_by: Vec<(String, usize)> = Vec::new();
    let mut pending: Vec<(usize, String, String)> = Vec::new();
    let mut hedges: Vec<(String, bool)> = Vec::new();
    match doc.get("models") {
        Some(Node::List(l)) if !l.is_empty() => {
            for (i, m) in l.iter().enumerate() {
                let path = format!("models[{i}]");
                let Node::Map(fields) = m else {
                    p.err(&path, "must be a mapping with at least `name` and `candidates`");
                    continue;
                };
                let Some(name) = m.get("name").and_then(Node::as_str).map(str::to_string) else {
                    p.err(&format!("{path}.name"), "is required (the model name clients send)");
                    continue;
                };
                let path = format!("models[{i}] ({name})");
                let route = match m.get("route") {
                    Some(Node::Str(r)) => r.clone(),
                    Some(_) => {
                        p.err(&format!("{path}.route"), "must be a string");
                        continue;
                    }
                    None => name.clone(),
                };
                hedges.push((route.clone(), matches!(m.get("hedge"), Some(Node::Bool(true)))));
                match m.get("candidates") {
                    Some(c) => {
                        if let Some((_, j)) = defined_by.iter().find(|(r, _)| *r == route) {
                            p.err(
                                &format!("{path}.candidates"),
                                format!("route {route} already has candidates from models[{j}]; give a route's candidates once and point the other entries at it with `route: {route}`"),
                            );
                            continue;
                        }
                        if name.contains('*') && m.get("route").is_none() {
                            p.err(&format!("{path}.route"), "a pattern entry (with *) needs `route:`, the name of its Envoy route");
                        }
                        let candidates = candidates(c, &format!("{path}.candidates"), &backends, p);
                        let levels = candidates.iter().map(|c| c.priority).max().map_or(1, |m| m + 1);
                        let retries = match m.get("retries") {
                            None => levels.saturating_sub(1).max(2),
                            Some(Node::Int(r)) if (0..=10).contains(r) => *r as u32,
                            Some(_) => {
                                p.err(&format!("{path}.retries"), "must be a number of retries from 0 to 10");
                                2
                            }
                        };
                        let timeout = str_field(m, "timeout", p, &format!("{path}."))
                            .and_then(|s| duration(&s, &format!("{path}.timeout"), p))
                            .unwrap_or_else(|| "600s".into());
                        let idle_timeout = str_field(m, "idle_timeout", p, &format!("{path}."))
                            .and_then(|s| duration(&s, &format!("{path}.idle_timeout"), p))
                            .unwrap_or_else(|| "120s".into());
                        defined_by.push((route.clone(), i));
                        routes.push(RouteDef { name: route.clone(), candidates, retries, timeout, idle_timeout, hedge: false });
                    }
                    None => pending.push((i, name.clone(), route.clone())),
                }
                for k in ["retries", "timeout", "idle_timeout"] {
                    if m.get(k).is_some() && m.get("candidates").is_none() {
                        p.err(&format!("{path}.{k}"), "belongs to the entry that gives the route's candidates");
                    }
                }
                let entry: Vec<(String, Node)> =
                    fields.iter().filter(|(k, _)| !RENDER_MODEL_KEYS.contains(&k.as_str())).cloned().collect();
                entries.push(Node::Map(entry));
            }
        }
        _ => p.err("models", "must be a list of models, each with `name` and `candidates` (backend/model, in failover order)"),
    }
    for (i, name, route) in pending {
        if !routes.iter().any(|r| r.name == route) {
            p.err(
                &format!("models[{i}] ({name})"),
                format!("no candidates for route {route}: add `candidates:` (e.g. [openai/gpt-4o-mini]) or `route:` naming a model that has them"),
            );
        }
    }
    for r in &mut routes {
        let on_route: Vec<bool> = hedges.iter().filter(|(n, _)| *n == r.name).map(|(_, h)| *h).collect();
        r.hedge = !on_route.is_empty() && on_route.iter().all(|h| *h);
    }
    for b in &backends {
        if !routes.iter().any(|r| r.candidates.iter().any(|c| c.backend == b.name)) {
            p.warnings.push(format!("backends.{}: no model's candidates use it (remove it, or add it to a model's candidates)", b.name));
        }
    }

    // The gateway plugin's configuration.
    let mut gateway = vec![("role".to_string(), Node::from("gateway"))];
    match doc.get("gateway") {
        None => {}
        Some(Node::Map(m)) => {
            for (k, v) in m {
                if k == "role" || k == "models" {
                    p.err(&format!("gateway.{k}"), "is written by the renderer; remove it (models come from `models:`)");
                } else if GATEWAY_TOP.contains(&k.as_str()) && doc.get(k).is_some() {
                    p.err(&format!("gateway.{k}"), "is also given at the top of the file; keep one");
                } else {
                    gateway.push((k.clone(), v.clone()));
                }
            }
        }
        Some(_) => p.err("gateway", "must be a mapping of gateway plugin fields (e.g. max_request_body_bytes)"),
    }
    gateway.push(("models".into(), Node::List(entries)));
    for k in GATEWAY_TOP {
        if let Some(v) = doc.get(k) {
            gateway.push((k.to_string(), v.clone()));
        }
    }
    let gateway = Node::Map(gateway);
    let capabilities = gateway.get("capabilities").is_some_and(|c| !matches!(c, Node::Null));
    let istio = istio_settings(doc.get("istio"), p);
    let fleet = fleet_settings(doc.get("fleet"), gateway.get("auth").and_then(|a| a.get("ledger")), p);
    if p.errors.is_empty() {
        Some(GatewayFile {
            listen,
            admin,
            module,
            vm_id,
            env,
            access_log,
            stats_flush_interval,
            connect_timeout,
            ca_file,
            outlier_detection,
            gateway,
            backends,
            routes,
            capabilities,
            istio,
            fleet,
        })
    } else {
        None
    }
}

fn valid_env(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !s.as_bytes()[0].is_ascii_digit()
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|e| e == s) {
        v.push(s.to_string());
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

fn backend(name: &str, b: &Node, p: &mut Problems) -> Option<BackendDef> {
    let path = format!("backends.{name}");
    if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.') {
        p.err(&path, "a backend name uses letters, digits, '-', '_' and '.' only");
        return None;
    }
    let Node::Map(fields) = b else {
        p.err(&path, "must be a mapping, e.g. {schema: openai, credential: {env: OPENAI_API_KEY}}");
        return None;
    };
    let mut sds_fields: Option<Node> = None;
    if let Some(Node::Map(c)) = b.get("credential") {
        for (k, _) in c {
            if !["env", "header", "prefix", "sds", "name"].contains(&k.as_str()) {
                p.err(
                    &format!("{path}.credential.{k}"),
                    "a credential is read from the environment (credential: {env: VARIABLE}) or from an SDS file Envoy watches (credential: {sds: /path/secret.yaml}), never written here",
                );
                return None;
            }
        }
        if b.get("credential").and_then(|c| c.get("sds")).is_some() {
            sds_fields = b.get("credential").cloned();
        }
    }
    let mut config = Node::Map(fields.iter().filter(|(k, _)| !RENDER_BACKEND_KEYS.contains(&k.as_str())).cloned().collect());
    let signer = aws_signer_fields(b, &path, p)?;
    if signer.is_some() {
        // The credential source is the renderer's (Envoy's signer); the backend filter only learns
        // that Envoy signs.
        if let Some(aws) = b.get("aws") {
            let mut aws = aws.clone();
            aws.remove("credentials_file");
            aws.remove("profile");
            config.set("aws", aws);
        }
    }
    if let Some(c) = &sds_fields {
        // The backend filter gets a credential-less backend (it sends none); its header and prefix
        // are worked out by the filter's own rules with a stand-in variable.
        if c.get("env").is_some() {
            p.err(&format!("{path}.credential"), "give either env or sds, not both");
            return None;
        }
        let mut stand_in = c.clone();
        stand_in.remove("sds");
        stand_in.remove("name");
        stand_in.set("env", "SWITCHYARD_SDS_STAND_IN".into());
        config.set("credential", stand_in);
    }
    // The backend plugin's own parse: schema, preset, vertex, aws… and the preset's defaults.
    let mut one = serde_json::Map::new();
    one.insert(name.to_string(), config.to_json());
    let plugin = serde_json::json!({"role": "backend", "backends": one});
    let parsed = match crate::config::PluginConfig::parse(plugin.to_string().as_bytes()) {
        Ok(crate::config::PluginConfig::Backend(cfg)) => cfg,
        Ok(_) => return None,
        Err(e) => {
            p.err(&path, format!("{} (see README \"Backend configuration\")", e.trim_start_matches("invalid plugin configuration: ")));
            return None;
        }
    };
    let parsed = parsed.backends.get(name)?;
    let schema_host = match parsed.schema {
        crate::config::Schema::Openai if parsed.preset.is_none() => Some("api.openai.com"),
        crate::config::Schema::Anthropic => Some("api.anthropic.com"),
        crate::config::Schema::Gemini => Some("generativelanguage.googleapis.com"),
        crate::config::Schema::Cohere => Some("api.cohere.com"),
        _ => None,
    };
    let host = parsed.host.clone().or_else(|| schema_host.map(str::to_string));
    let tls_field = match b.get("tls") {
        None => None,
        Some(Node::Bool(t)) => Some(*t),
        Some(_) => {
            p.err(&format!("{path}.tls"), "must be true or false");
            None
        }
    };
    let endpoint = match str_field(b, "address", p, &format!("{path}.")) {
        Some(a) => {
            let (address, port) = host_port(&a, &format!("{path}.address"), Some(443), p)?;
            let tls = tls_field.unwrap_or(port == 443);
            let sni = host.clone().unwrap_or_else(|| address.clone());
            if tls && is_ip(&sni) {
                p.err(&format!("{path}.tls"), "TLS needs a hostname to check the certificate against: set `host`");
            }
            Endpoint { address, port, tls: tls.then_some(sni) }
        }
        None => match &host {
            Some(h) => {
                let (address, port) = host_port(h, &format!("{path}.host"), Some(443), p)?;
                // The provider's name is also the :authority it is sent (and what TLS checks).
                if config.get("host").is_none() {
                    config.set("host", h.as_str().into());
                }
                let tls = tls_field.unwrap_or(true);
                Endpoint { tls: tls.then(|| address.clone()), address, port }
            }
            None => {
                p.err(&path, "Envoy needs to know where this backend is: set `host` (the provider's hostname) or `address` (host:port)");
                return None;
            }
        },
    };
    let mut env = Vec::new();
    let mut sds = None;
    if let Some(c) = &sds_fields {
        config.remove("credential");
        let sds_path = c.get("sds").and_then(Node::as_str).unwrap_or_default().to_string();
        if !sds_path.starts_with('/') {
            p.err(&format!("{path}.credential.sds"), "must be the absolute path of an SDS file holding the secret (see README \"Provider credentials\")");
        }
        if parsed.schema == crate::config::Schema::Bedrock {
            p.err(&format!("{path}.credential.sds"), "Bedrock signs requests with AWS keys: for keys that rotate, let Envoy sign (aws: {signer: envoy, credentials_file: PATH}); see README \"Provider credentials\"");
        }
        let Some(host) = b.get("host").and_then(Node::as_str).map(str::to_string) else {
            p.err(&format!("{path}.host"), "a credential from SDS is applied by the request's :authority: set the backend's `host`");
            return None;
        };
        let secret = c.get("name").and_then(Node::as_str).unwrap_or(name).to_string();
        sds = Some(SdsCredential { path: sds_path, secret, header: parsed.credential_header().to_string(), prefix: parsed.credential_prefix().to_string(), host });
    } else if let Some(c) = &parsed.credential {
        env.push(c.env.clone());
    }
    let mut aws_signer = None;
    if let Some(credentials) = signer {
        let region = parsed.aws_region();
        let host = config.get("host").and_then(Node::as_str).map(str::to_string);
        match (region, host) {
            (Some(region), Some(host)) => aws_signer = Some(EnvoyAwsSigner { region, host, credentials }),
            // The backend plugin's own checks already said what is missing.
            _ => p.err(&format!("{path}.aws"), "Envoy's signer needs the backend's `host` and a region (aws.region or a bedrock-runtime.<region>.amazonaws.com host)"),
        }
    } else if parsed.schema == crate::config::Schema::Bedrock {
        let d = crate::config::AwsConfig::default();
        let aws = parsed.aws.as_ref().unwrap_or(&d);
        for e in [&aws.access_key_id_env, &aws.secret_access_key_env, &aws.session_token_env] {
            push_unique(&mut env, e);
        }
    }
    // The :authority the provider sees: keep the file's `host` (or none, for a local server).
    Some(BackendDef { name: name.to_string(), config, endpoint, env, sds, aws_signer })
}

/// A Bedrock backend's `aws:` fields about who signs: `Ok(Some(source))` for `signer: envoy`,
/// `Ok(None)` for the filter's own SigV4 (the default), `None` (after an error) for an inconsistent
/// combination.
fn aws_signer_fields(b: &Node, path: &str, p: &mut Problems) -> Option<Option<AwsCredentialSource>> {
    let Some(aws @ Node::Map(_)) = b.get("aws") else { return Some(None) };
    let envoy = match aws.get("signer") {
        None | Some(Node::Null) => false,
        Some(Node::Str(s)) if s == "filter" => false,
        Some(Node::Str(s)) if s == "envoy" => true,
        Some(_) => {
            p.err(
                &format!("{path}.aws.signer"),
                "must be `filter` (the backend filter's own SigV4, keys read once from the environment) or `envoy` (Envoy's AWS request signing filter and credential providers, which refresh credentials without a restart)",
            );
            return None;
        }
    };
    let file = match aws.get("credentials_file") {
        None | Some(Node::Null) => None,
        Some(Node::Str(s)) if s.starts_with('/') && !s.ends_with('/') => Some(s.clone()),
        Some(_) => {
            p.err(
                &format!("{path}.aws.credentials_file"),
                "must be the absolute path of an AWS credentials file (replace it with a rename: Envoy re-reads it when it is moved into its directory)",
            );
            return None;
        }
    };
    let profile = match aws.get("profile") {
        None | Some(Node::Null) => None,
        Some(Node::Str(s)) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.@+".contains(&c)) => Some(s.clone()),
        Some(_) => {
            p.err(&format!("{path}.aws.profile"), "must be a profile name of the credentials file (letters, digits, '-', '_', '.')");
            return None;
        }
    };
    if !envoy {
        for (k, v) in [("credentials_file", file.is_some()), ("profile", profile.is_some())] {
            if v {
                p.err(
                    &format!("{path}.aws.{k}"),
                    "is read by Envoy's signer: add `signer: envoy` (without it the backend filter signs with keys from the environment variables access_key_id_env, secret_access_key_env, session_token_env)",
                );
                return None;
            }
        }
        return Some(None);
    }
    let mut ok = true;
    for k in ["access_key_id_env", "secret_access_key_env", "session_token_env"] {
        if aws.get(k).is_some() {
            p.err(
                &format!("{path}.aws.{k}"),
                "names a variable the backend filter signs with; with `signer: envoy` Envoy's credential providers supply the keys: remove it (use credentials_file, or Envoy's default chain, which reads AWS_ACCESS_KEY_ID… itself)",
            );
            ok = false;
        }
    }
    if b.get("credential").is_some() {
        p.err(
            &format!("{path}.credential"),
            "with aws.signer: envoy, Envoy signs every request to this backend (its `authorization` header): remove the credential (a Bedrock API key), or let the filter sign (signer: filter)",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(Some(match file {
        Some(path) => AwsCredentialSource::File { path, profile },
        None => AwsCredentialSource::DefaultChain { profile },
    }))
}

fn candidates(c: &Node, path: &str, backends: &[BackendDef], p: &mut Problems) -> Vec<Candidate> {
    let Node::List(l) = c else {
        p.err(path, "must be a list in failover order, e.g. [openai/gpt-4o-mini, anthropic/claude-3-5-haiku-20241022]");
        return Vec::new();
    };
    if l.is_empty() {
        p.err(path, "needs at least one candidate (backend/model)");
    }
    let mut out = Vec::new();
    let mut next_priority = 0u32;
    for (i, item) in l.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let (backend, model, priority, weight) = match item {
            Node::Str(s) => match s.split_once('/') {
                Some((b, m)) if !m.is_empty() => (b.to_string(), Some(m.to_string()), None, None),
                _ => (s.clone(), None, None, None),
            },
            Node::Map(m) => {
                for (k, _) in m {
                    if !["backend", "model", "priority", "weight"].contains(&k.as_str()) {
                        p.err(&format!("{path}.{k}"), "unknown field; a candidate has backend, model, priority and weight");
                    }
                }
                let Some(b) = item.get("backend").and_then(Node::as_str) else {
                    p.err(&format!("{path}.backend"), "is required (a name under `backends:`)");
                    continue;
                };
                let model = item.get("model").and_then(Node::as_str).map(str::to_string);
                let priority = match item.get("priority") {
                    None => None,
                    Some(Node::Int(v)) if (0..=100).contains(v) => Some(*v as u32),
                    Some(_) => {
                        p.err(&format!("{path}.priority"), "must be a number from 0 (tried first) to 100");
                        None
                    }
                };
                let weight = match item.get("weight") {
                    None => None,
                    Some(Node::Int(v)) if (1..=1000).contains(v) => Some(*v as u32),
                    Some(_) => {
                        p.err(&format!("{path}.weight"), "must be a number from 1 to 1000 (the share among candidates of one priority)");
                        None
                    }
                };
                (b.to_string(), model, priority, weight)
            }
            _ => {
                p.err(&path, "write backend/model or {backend: NAME, model: UPSTREAM_MODEL, priority: N, weight: W}");
                continue;
            }
        };
        if !backends.iter().any(|b| b.name == backend) {
            let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
            p.err(&path, format!("unknown backend {backend:?}; define it under `backends:` or use one of: {}", known.join(", ")));
            continue;
        }
        let priority = priority.unwrap_or(next_priority);
        if priority > next_priority {
            p.err(&format!("{path}.priority"), format!("priorities must count up from 0 without gaps (expected at most {next_priority})"));
        }
        next_priority = next_priority.max(priority + 1);
        out.push(Candidate { backend, model, priority, weight });
    }
    out
}

/// The rendered plugin configurations pass the filter's own checks.
fn check_plugins(f: &GatewayFile, p: &mut Problems) {
    let gw = yaml::json_plugin(&f.gateway);
    match crate::config::PluginConfig::parse(gw.as_bytes()) {
        Ok(crate::config::PluginConfig::Gateway(g)) => {
            if let Err(e) = crate::config::Gateway::new(g) {
                p.err("gateway configuration", format!("{e} (see README \"Gateway configuration\")"));
            }
        }
        Ok(_) => {}
        Err(e) => p.err("gateway configuration (models, auth, routing, capabilities, gateway)", e),
    }
    let be = yaml::json_plugin(&envoy::backend_plugin(f));
    if let Err(e) = crate::config::PluginConfig::parse(be.as_bytes()) {
        p.err("backends", e);
    }
}

/// `switchyard check` of a gateway file: the file's own checks, then the rendered Envoy
/// configuration's route checks (capability regressions, version pinning).
pub fn check(text: &str) -> Result<(usize, usize, Vec<String>), Vec<String>> {
    let (f, mut warnings) = parse(text)?;
    let doc = envoy::render(&f).to_json();
    match crate::policy::route_check::check_envoy(&doc) {
        Ok(findings) => {
            if !findings.errors.is_empty() {
                return Err(findings.errors);
            }
            warnings.extend(findings.warnings);
        }
        Err(e) => return Err(vec![e]),
    }
    Ok((f.routes.len(), f.backends.len(), warnings))
}

/// The comment at the top of every rendered file.
pub fn header(source: &str, target: &str) -> String {
    format!(
        "# Rendered by `switchyard render {source} --target {target}`: do not edit. Edit {source}, then\n# render again (`switchyard check {source}` validates it first).\n"
    )
}

fn fleet_settings(n: Option<&Node>, ledger: Option<&Node>, p: &mut Problems) -> Option<FleetSettings> {
    let fleet_ledger = ledger.and_then(Node::as_str) == Some("fleet");
    let Some(n) = n else {
        if fleet_ledger {
            p.err("auth.ledger", "is fleet: add `fleet: {rate_limit_service: HOST:PORT}` (switchyard-rls, envoyproxy/ratelimit or Limitador) so the rate limit filters are rendered");
        }
        return None;
    };
    let Node::Map(m) = n else {
        p.err("fleet", "must be a mapping: {rate_limit_service: HOST:PORT, failure_mode_deny: true}");
        return None;
    };
    let mut service = None;
    let mut failure_mode_deny = true;
    for (k, v) in m {
        match (k.as_str(), v) {
            ("rate_limit_service", Node::Str(s)) => service = host_port(s, "fleet.rate_limit_service", None, p),
            ("failure_mode_deny", Node::Bool(b)) => failure_mode_deny = *b,
            ("rate_limit_service", _) => p.err("fleet.rate_limit_service", "write HOST:PORT of the rate limit service's gRPC port, e.g. 127.0.0.1:8081"),
            ("failure_mode_deny", _) => p.err("fleet.failure_mode_deny", "true (refuse requests while the service is down: 503) or false (serve them uncounted)"),
            _ => p.err(&format!("fleet.{k}"), "unknown field; fleet knows rate_limit_service and failure_mode_deny"),
        }
    }
    let Some(rate_limit_service) = service else {
        p.err("fleet", "set rate_limit_service: HOST:PORT");
        return None;
    };
    if !fleet_ledger {
        p.err("fleet", "counts limits on the rate limit service only with `auth: {ledger: fleet, …}`; add it, or remove fleet:");
    }
    Some(FleetSettings { rate_limit_service, failure_mode_deny })
}

fn istio_settings(n: Option<&Node>, p: &mut Problems) -> IstioSettings {
    let mut out = IstioSettings {
        namespace: "istio-system".into(),
        selector: vec![("istio".into(), "ingressgateway".into())],
        port: None,
    };
    let Some(n) = n else { return out };
    let Node::Map(m) = n else {
        p.err("istio", "must be a mapping: {namespace: NS, selector: {label: value}, port: N}");
        return out;
    };
    for (k, v) in m {
        match (k.as_str(), v) {
            ("namespace", Node::Str(s)) if !s.is_empty() => out.namespace = s.clone(),
            ("selector", Node::Map(labels)) if !labels.is_empty() => {
                out.selector.clear();
                for (lk, lv) in labels {
                    match lv.as_str() {
                        Some(v) => out.selector.push((lk.clone(), v.to_string())),
                        None => p.err(&format!("istio.selector.{lk}"), "a label value is a string"),
                    }
                }
            }
            ("port", Node::Int(i)) if (1..=65535).contains(i) => out.port = Some(*i as u16),
            ("namespace" | "selector" | "port", _) => {
                p.err(&format!("istio.{k}"), "namespace is a string, selector a mapping of labels, port a number")
            }
            _ => p.err(&format!("istio.{k}"), "unknown field; istio knows namespace, selector (the gateway's pod labels) and port"),
        }
    }
    out
}

//! Switchyard's command line: checks plugin configurations before Envoy loads them.
//!
//!   switchyard check FILE...   validate gateway files, plugin configuration JSON files and whole Envoy configurations
//!   switchyard render FILE [--target envoy|istio] [--reloadable DIR]
//!                              render a gateway file into an Envoy bootstrap (stdout) or Istio
//!                              resources; --reloadable writes DIR/envoy.yaml, listeners.yaml and
//!                              clusters.yaml, which Envoy watches (render into DIR again to reload)
//!   switchyard version
//!   switchyard hash-key [KEY]  print the sha256 to configure for a virtual key (KEY, else read from stdin)
//!   switchyard new-key [ID]    generate a virtual key and print it with its configuration entry
//!   switchyard fleet-limits GATEWAY.json [DOMAIN]
//!                              the fleet rate limit service's limits (envoyproxy/ratelimit YAML)

use std::process::ExitCode;

use switchyard::config::{Gateway, PluginConfig};

fn check(path: &str) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if let Ok(doc) = serde_yaml::from_slice::<serde_yaml::Value>(&bytes) {
        if switchyard::render::is_gateway_file(&doc) {
            let text = String::from_utf8_lossy(&bytes);
            return match switchyard::render::check(&text) {
                Ok((routes, backends, warnings)) => {
                    for w in &warnings {
                        eprintln!("{path}: warning: {w}");
                    }
                    Ok(format!(
                        "{path}: gateway file is valid: {routes} routes, {backends} backends ({} warnings)",
                        warnings.len()
                    ))
                }
                Err(errors) => Err(errors.iter().map(|e| format!("{path}: error: {e}")).collect::<Vec<_>>().join("\n")),
            };
        }
    }
    let is_plugin = serde_json::from_slice::<serde_json::Value>(&bytes).ok().is_some_and(|v| v.get("role").is_some());
    if !is_plugin {
        return check_envoy(path, &bytes);
    }
    match PluginConfig::parse(&bytes).map_err(|e| format!("{path}: {e}"))? {
        PluginConfig::Gateway(g) => {
            let models = g.models.len();
            if let Some(auth) = g.auth.clone() {
                switchyard::policy::Policy::new(auth).map_err(|e| format!("{path}: auth: {e}"))?;
            }
            Gateway::new(g).map_err(|e| format!("{path}: {e}"))?;
            Ok(format!("{path}: gateway configuration with {models} model entries is valid"))
        }
        PluginConfig::Backend(b) => Ok(format!("{path}: backend configuration with {} backends is valid", b.backends.len())),
        PluginConfig::Noop => Ok(format!("{path}: no-op (pass-through) configuration is valid")),
    }
}

/// A whole Envoy configuration (YAML or JSON): its plugin configurations, and each route's
/// candidates against the gateway's capabilities and version pinning.
fn check_envoy(path: &str, bytes: &[u8]) -> Result<String, String> {
    let doc: serde_json::Value = serde_yaml::from_slice(bytes).map_err(|e| format!("{path}: not a plugin configuration, nor Envoy YAML/JSON: {e}"))?;
    let findings = switchyard::policy::route_check::check_envoy(&doc).map_err(|e| format!("{path}: {e}"))?;
    for w in &findings.warnings {
        eprintln!("{path}: warning: {w}");
    }
    if !findings.errors.is_empty() {
        return Err(findings.errors.iter().map(|e| format!("{path}: error: {e}")).collect::<Vec<_>>().join("\n"));
    }
    Ok(format!("{path}: Envoy configuration is valid ({} warnings)", findings.warnings.len()))
}

/// `hash-key`: the key from the argument, else the first line of stdin (keeps it out of shell history).
fn hash_key_cmd(arg: Option<&str>) -> Result<String, String> {
    let key = match arg {
        Some(k) => k.to_string(),
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| format!("reading the key from stdin: {e}"))?;
            line.trim().to_string()
        }
    };
    if key.is_empty() {
        return Err("hash-key: empty key".into());
    }
    Ok(switchyard::policy::keys::hash_key(&key))
}

/// `new-key`: 32 bytes from the operating system's random source.
fn new_key_cmd(id: Option<&str>) -> Result<String, String> {
    use std::io::Read;
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("new-key: cannot read /dev/urandom: {e}"))?;
    let key = switchyard::policy::keys::generate_key(&random);
    let hash = switchyard::policy::keys::hash_key(&key);
    let id = id.unwrap_or("my-key");
    Ok(format!(
        "key:    {key}\nsha256: {hash}\n\nGive the key to its user (it is shown only now) and add to the gateway's auth.keys:\n  {{\"id\": \"{id}\", \"sha256\": \"{hash}\"}}"
    ))
}

/// `render FILE [--target envoy|istio] [--reloadable DIR]`.
fn render_cmd(args: &[String]) -> Result<String, String> {
    use switchyard::render::{envoy, istio, yaml};
    let mut file = None;
    let mut target = "envoy".to_string();
    let mut reloadable = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--target" => target = it.next().ok_or("--target needs envoy or istio")?.clone(),
            "--reloadable" => reloadable = Some(it.next().ok_or("--reloadable needs a directory")?.clone()),
            f if file.is_none() && !f.starts_with("--") => file = Some(f.to_string()),
            other => return Err(format!("render: unexpected argument {other:?}")),
        }
    }
    let path = file.ok_or("render: which gateway file? switchyard render FILE --target envoy")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let (gw, warnings) = switchyard::render::parse(&text)
        .map_err(|errors| errors.iter().map(|e| format!("{path}: error: {e}")).collect::<Vec<_>>().join("\n"))?;
    for w in &warnings {
        eprintln!("{path}: warning: {w}");
    }
    let header = switchyard::render::header(&path, &target);
    if target == "envoy" && matches!(gw.module, switchyard::render::Module::Image { .. }) {
        return Err(format!(
            "{path}: module.image: an OCI image is pulled by istio-agent (--target istio); Envoy itself loads a file or an http(s) URL: \
             write module: {{file: PATH}} or {{url: URL, sha256: HEX}} (the image's plugin.wasm)"
        ));
    }
    match (target.as_str(), reloadable) {
        ("envoy", None) => Ok(yaml::to_yaml(&envoy::render(&gw), &header)),
        ("envoy", Some(dir)) => {
            let abs = std::fs::canonicalize(&dir).map_err(|e| format!("--reloadable {dir}: {e}"))?;
            let abs = abs.to_string_lossy().to_string();
            let (boot, listeners, clusters) = envoy::render_reloadable(&gw, &abs);
            // Clusters first, then the listener whose routes name them; each file replaces the
            // old one by a rename, which is what Envoy's watched directory reacts to.
            for (name, node) in [("envoy.yaml", boot), ("clusters.yaml", clusters), ("listeners.yaml", listeners)] {
                let tmp = format!("{abs}/.{name}.tmp");
                std::fs::write(&tmp, yaml::to_yaml(&node, &header)).map_err(|e| format!("{tmp}: {e}"))?;
                std::fs::rename(&tmp, format!("{abs}/{name}")).map_err(|e| format!("{abs}/{name}: {e}"))?;
            }
            Ok(format!("# wrote {abs}/envoy.yaml (run Envoy with it), {abs}/clusters.yaml and {abs}/listeners.yaml (render again to reload)"))
        }
        ("istio", None) => istio::render(&gw).map(|docs| istio::to_yaml(&docs, &header)),
        ("istio", Some(_)) => Err("--reloadable is for --target envoy (Istio delivers configuration itself)".into()),
        (other, _) => Err(format!("render: unknown target {other:?} (envoy or istio)")),
    }
}

/// `fleet-limits`: the rate limit service's limits from a gateway configuration's `auth`.
fn fleet_limits_cmd(path: &str, domain: Option<&str>) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let PluginConfig::Gateway(g) = PluginConfig::parse(&bytes).map_err(|e| format!("{path}: {e}"))? else {
        return Err(format!("{path}: not a gateway configuration"));
    };
    let auth = g.auth.ok_or_else(|| format!("{path}: no auth object"))?;
    let policy = switchyard::policy::Policy::new(auth).map_err(|e| format!("{path}: auth: {e}"))?;
    let domain = domain.unwrap_or(switchyard::policy::fleet::DEFAULT_DOMAIN);
    switchyard::policy::fleet::limits_yaml(&policy, domain).map_err(|e| format!("{path}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("check") if args.len() > 1 => {
            let mut ok = true;
            for path in &args[1..] {
                match check(path) {
                    Ok(msg) => println!("{msg}"),
                    Err(e) => {
                        eprintln!("{e}");
                        ok = false;
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(cmd @ ("hash-key" | "new-key")) if args.len() <= 2 => {
            let arg = args.get(1).map(String::as_str);
            let result = if cmd == "hash-key" { hash_key_cmd(arg) } else { new_key_cmd(arg) };
            match result {
                Ok(out) => {
                    println!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("fleet-limits") if (2..=3).contains(&args.len()) => match fleet_limits_cmd(&args[1], args.get(2).map(String::as_str)) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some("render") if args.len() > 1 => match render_cmd(&args[1..]) {
            Ok(out) => {
                print!("{out}");
                if !out.ends_with('\n') {
                    println!();
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some("version") => {
            println!("switchyard {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: switchyard check FILE...   |   switchyard render FILE [--target envoy|istio] [--reloadable DIR]   |   switchyard hash-key [KEY]   |   switchyard new-key [ID]   |   switchyard fleet-limits GATEWAY.json [DOMAIN]   |   switchyard version");
            ExitCode::from(2)
        }
    }
}

//! Switchyard's command line: checks plugin configurations before Envoy loads them.
//!
//!   switchyard check FILE...   parse and validate plugin configuration JSON files
//!   switchyard version

use std::process::ExitCode;

use switchyard::config::{Gateway, PluginConfig};

fn check(path: &str) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    match PluginConfig::parse(&bytes).map_err(|e| format!("{path}: {e}"))? {
        PluginConfig::Gateway(g) => {
            let models = g.models.len();
            Gateway::new(g).map_err(|e| format!("{path}: {e}"))?;
            Ok(format!("{path}: gateway configuration with {models} model entries is valid"))
        }
        PluginConfig::Backend(b) => Ok(format!("{path}: backend configuration with {} backends is valid", b.backends.len())),
        PluginConfig::Noop => Ok(format!("{path}: no-op (pass-through) configuration is valid")),
    }
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
        Some("version") => {
            println!("switchyard {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: switchyard check FILE...   |   switchyard version");
            ExitCode::from(2)
        }
    }
}

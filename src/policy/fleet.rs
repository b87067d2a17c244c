//! Limits for a fleet's rate limit service, from the gateway's keys and teams (one source of
//! truth): `switchyard fleet-limits gateway.json` writes them in envoyproxy/ratelimit's YAML
//! format, which `tools/rls` (Switchyard's service on Redis) reads as well.
//!
//! The descriptors are those the Envoy configuration builds from the gateway's filter state
//! (`envoy/fleet.yaml`): `[switchyard_key = <id>, limit = requests | tokens | budget]` and the same
//! with `switchyard_team`. `rpm` and `tpm` are per minute; a budget is counted in micro-dollars per
//! day (`daily`), calendar month (`monthly`) or calendar year (`total`: the protocol has no
//! never-ending window). `max_concurrent` stays with each Envoy (a counter that is given back
//! cannot be expressed in the protocol).

use super::budget::{Budget, BudgetWindow};
use super::limits::LimitsConfig;
use super::Policy;

pub const DEFAULT_DOMAIN: &str = "switchyard";

fn quoted(s: &str) -> String {
    // A JSON string is a YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn limit(out: &mut String, what: &str, value: &str, unit: &str, n: u64) -> Result<(), String> {
    let n: u32 = n.try_into().map_err(|_| format!("{what}: {value} of {n} is more than a rate limit service counts (4294967295)"))?;
    out.push_str(&format!(
        "      - key: limit\n        value: {value}\n        rate_limit: {{unit: {unit}, requests_per_unit: {n}}}\n"
    ));
    Ok(())
}

fn scope(out: &mut String, descriptor: &str, id: &str, limits: &LimitsConfig, budget: Option<&Budget>) -> Result<(), String> {
    if limits.rpm.is_none() && limits.tpm.is_none() && budget.is_none() {
        return Ok(());
    }
    let what = format!("{descriptor} {id}");
    out.push_str(&format!("  - key: {descriptor}\n    value: {}\n    descriptors:\n", quoted(id)));
    if let Some(n) = limits.rpm {
        limit(out, &what, "requests", "minute", n)?;
    }
    if let Some(n) = limits.tpm {
        limit(out, &what, "tokens", "minute", n)?;
    }
    if let Some(b) = budget {
        let unit = match b.window {
            BudgetWindow::Daily => "day",
            BudgetWindow::Monthly => "month",
            BudgetWindow::Total => "year",
        };
        limit(out, &what, "budget", unit, b.amount_micros)?;
    }
    Ok(())
}

/// The limits file for `domain`. Disabled keys are left out (the gateway refuses them anyway).
pub fn limits_yaml(policy: &Policy, domain: &str) -> Result<String, String> {
    let mut out = format!("# Written by `switchyard fleet-limits` from the gateway's auth configuration.\ndomain: {}\ndescriptors:\n", quoted(domain));
    let before = out.len();
    let mut keys: Vec<_> = policy.key_records().filter(|k| !k.disabled).collect();
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    for k in keys {
        scope(&mut out, "switchyard_key", &k.id, &k.limits, k.budget.as_ref())?;
    }
    let mut teams: Vec<_> = policy.team_records().collect();
    teams.sort_by(|a, b| a.id.cmp(&b.id));
    for t in teams {
        scope(&mut out, "switchyard_team", &t.id, &t.limits, t.budget.as_ref())?;
    }
    if out.len() == before {
        out.truncate(before - "descriptors:\n".len());
        out.push_str("descriptors: []\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;

    fn policy(json: &str) -> Policy {
        Policy::new(serde_json::from_str::<PolicyConfig>(json).unwrap()).unwrap()
    }

    #[test]
    fn keys_and_teams_become_descriptors() {
        let p = policy(
            r#"{"ledger": "fleet",
                "keys": [
                  {"id": "b-key", "team": "t", "sha256": "853d75458bd7bc785195e0b5d97673cfe9a71c935650405815c34de06d821182",
                   "limits": {"rpm": 10, "tpm": 5000, "max_concurrent": 4}, "budget": {"amount_usd": 0.5, "window": "daily"}},
                  {"id": "a:key", "sha256": "4cbd62afc502948dbcfecc04619a43dbd61a459994d7eec3645e174b2e5792bf", "limits": {"max_concurrent": 2}},
                  {"id": "off", "disabled": true, "sha256": "2f390382bf88864e73ecb1f3d04b9e8d01935e61d23afd4ea44b085c3bbf7acc", "limits": {"rpm": 1}}
                ],
                "teams": [{"id": "t", "budget": {"amount_usd": 200, "window": "monthly"}}]}"#,
        );
        let y = limits_yaml(&p, "switchyard").unwrap();
        let v: serde_json::Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(v["domain"], "switchyard");
        let d = v["descriptors"].as_array().unwrap();
        assert_eq!(d.len(), 2, "{y}");
        assert_eq!(d[0]["key"], "switchyard_key");
        assert_eq!(d[0]["value"], "b-key");
        let lim = d[0]["descriptors"].as_array().unwrap();
        let get = |v: &str| lim.iter().find(|l| l["value"] == v).unwrap()["rate_limit"].clone();
        assert_eq!(get("requests"), serde_json::json!({"unit": "minute", "requests_per_unit": 10}));
        assert_eq!(get("tokens"), serde_json::json!({"unit": "minute", "requests_per_unit": 5000}));
        assert_eq!(get("budget"), serde_json::json!({"unit": "day", "requests_per_unit": 500000}));
        assert_eq!(d[1]["key"], "switchyard_team");
        assert_eq!(d[1]["descriptors"][0]["rate_limit"], serde_json::json!({"unit": "month", "requests_per_unit": 200000000u64}));
    }

    #[test]
    fn a_budget_the_protocol_cannot_count_is_an_error() {
        let p = policy(
            r#"{"keys": [{"id": "big", "sha256": "853d75458bd7bc785195e0b5d97673cfe9a71c935650405815c34de06d821182",
                         "budget": {"amount_usd": 5000, "window": "monthly"}}]}"#,
        );
        let e = limits_yaml(&p, "switchyard").unwrap_err();
        assert!(e.contains("switchyard_key big") && e.contains("budget"), "{e}");
    }

    #[test]
    fn nothing_to_limit() {
        let p = policy(r#"{"keys": []}"#);
        let v: serde_json::Value = serde_yaml::from_str(&limits_yaml(&p, "d").unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"domain": "d", "descriptors": []}));
    }
}

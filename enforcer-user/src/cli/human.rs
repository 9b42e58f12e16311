//! Human-readable output of admin responses.

use std::fmt::Write as _;

use serde_json::Value;

use crate::admin::Request;

/// Renders `result` of `request` for a terminal.
pub fn render(request: &Request, result: &Value) -> String {
    let mut out = String::new();
    match request {
        Request::Status => status(&mut out, result),
        Request::DeviceList => devices(&mut out, result),
        Request::SessionList { .. } => sessions(&mut out, result),
        Request::DeviceShow { .. } => {
            devices(&mut out, &Value::Array(vec![result["device"].clone()]));
            let auth = &result["last_authentication"];
            if auth.is_null() {
                let _ = writeln!(out, "\nlast authentication: none");
            } else {
                let _ = writeln!(
                    out,
                    "\nlast authentication: {} by {} (amr {})",
                    time(&auth["at"]["wall_unix_ns"]),
                    auth["user"]["subject"].as_str().unwrap_or("?"),
                    auth["amr"]
                );
            }
            let _ = writeln!(out);
            sessions(&mut out, &result["sessions"]);
        }
        Request::ResourceList => resources(&mut out, result),
        Request::SessionRevoke { .. } => {
            let _ = writeln!(
                out,
                "revoked {} session(s); removed {} kernel entr{}",
                result["sessions"],
                result["kernel_entries"],
                if result["kernel_entries"] == 1 {
                    "y"
                } else {
                    "ies"
                }
            );
        }
        Request::SessionGrant { .. } => {
            let _ = writeln!(
                out,
                "granted {} until {}",
                result["resource"].as_str().unwrap_or("?"),
                time(&result["expires_unix_ns"])
            );
        }
        Request::SessionGrantBatch { .. } => {
            let granted = result.as_array().map_or(&[][..], Vec::as_slice);
            let _ = writeln!(out, "granted {} session(s)", granted.len());
            for session in granted {
                let _ = writeln!(
                    out,
                    "  device {} to {} until {}",
                    session["device_id"],
                    session["resource"].as_str().unwrap_or("?"),
                    time(&session["expires_unix_ns"])
                );
            }
        }
        Request::Explain { .. } => explain(&mut out, result),
        Request::Audit { .. } => audit(&mut out, result),
        Request::Stats => {
            let mut engine = result.clone();
            if let Some(map) = engine.as_object_mut() {
                map.remove("counters");
            }
            key_values(&mut out, "", &engine);
            let _ = writeln!(out, "counters");
            key_values(&mut out, "  ", &result["counters"]);
        }
        Request::DeviceEnroll { .. } => devices(&mut out, &Value::Array(vec![result.clone()])),
        _ => key_values(&mut out, "", result),
    }
    out
}

fn status(out: &mut String, result: &Value) {
    let _ = writeln!(
        out,
        "interface   {} ({} mode, {})",
        plain(&result["interface"]),
        plain(&result["xdp_mode"]),
        plain(&result["link_kind"])
    );
    let _ = writeln!(
        out,
        "program     {} id {}{}",
        plain(&result["program"]),
        result["program_id"],
        if result["adopted"] == true {
            " (adopted from pins)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "pins        {}", plain(&result["pin_folder"]));
    let _ = writeln!(out, "store       {}", plain(&result["store"]));
    let _ = writeln!(
        out,
        "policy      {} ({} resources)",
        plain(&result["policy"]),
        result["resources"]
    );
    let _ = writeln!(
        out,
        "sessions    {} live, {} expired",
        result["sessions_live"], result["sessions_expired"]
    );
    let idp = &result["idp"];
    let reachable = match idp["reachable"].as_bool() {
        Some(true) => "reachable".to_owned(),
        Some(false) => format!("unreachable ({})", plain(&idp["error"])),
        None => "not checked yet".to_owned(),
    };
    let _ = writeln!(out, "idp         {reachable}");
    let _ = writeln!(out, "counters");
    key_values(out, "  ", &result["counters"]);
}

fn devices(out: &mut String, result: &Value) {
    let _ = writeln!(
        out,
        "{:<6} {:<20} {:<24} {:<8} ADDRESSES",
        "ID", "NAME", "OWNER", "SOURCE"
    );
    for device in result.as_array().into_iter().flatten() {
        let addresses: Vec<String> = device["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(plain)
            .collect();
        let _ = writeln!(
            out,
            "{:<6} {:<20} {:<24} {:<8} {}",
            plain(&device["id"]),
            plain(&device["name"]),
            plain(&device["owner"]),
            plain(&device["source"]),
            addresses.join(", ")
        );
    }
}

fn sessions(out: &mut String, result: &Value) {
    let rows: Vec<&Value> = result.as_array().into_iter().flatten().collect();
    let devices: Vec<String> = rows
        .iter()
        .map(|session| {
            format!(
                "{} ({})",
                plain(&session["device"]),
                plain(&session["device_id"])
            )
        })
        .collect();
    let device_width = column_width(
        "DEVICE",
        devices.iter().map(|device| device.chars().count()),
    );
    let resource_width = column_width(
        "RESOURCE",
        rows.iter()
            .map(|session| plain(&session["resource"]).chars().count()),
    );
    let _ = writeln!(
        out,
        "{:<device_width$} {:<resource_width$} {:<8} {:<20} USER",
        "DEVICE", "RESOURCE", "STATE", "EXPIRES"
    );
    for (session, device) in rows.iter().zip(&devices) {
        let state = if session["live"] == true {
            "live"
        } else if session["in_kernel"] == true {
            "expired"
        } else {
            "inactive"
        };
        let _ = writeln!(
            out,
            "{:<device_width$} {:<resource_width$} {:<8} {:<20} {}",
            device,
            plain(&session["resource"]),
            state,
            time(&session["expires_unix_ns"]),
            plain(&session["user"]["subject"])
        );
    }
}

/// Returns the width of a column: the longest of its header and its cells, in characters.
fn column_width(header: &str, cells: impl Iterator<Item = usize>) -> usize {
    cells.fold(header.len(), usize::max)
}

fn resources(out: &mut String, result: &Value) {
    let _ = writeln!(
        out,
        "{:<4} {:<16} {:<10} {:<8} {:<7} DESTINATIONS",
        "ID", "NAME", "SESSION", "STEP-UP", "EXPIRY"
    );
    for entry in result.as_array().into_iter().flatten() {
        let resource = &entry["resource"];
        let destinations: Vec<String> = resource["destinations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|destination| {
                let ports = match destination["ports"].as_array() {
                    Some(range) if range[0] == range[1] => format!(":{}", range[0]),
                    Some(range) => format!(":{}-{}", range[0], range[1]),
                    None => String::new(),
                };
                // "any" protocol is left out; a number is shown by name, such as udp.
                let protocol = destination["protocol"]["Number"]
                    .as_u64()
                    .and_then(|number| u8::try_from(number).ok())
                    .map(|number| format!(" {}", crate::policy::Protocol::Number(number).name()))
                    .unwrap_or_default();
                format!("{}{protocol}{ports}", plain(&destination["prefix"]))
            })
            .collect();
        let session = resource["session"].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<4} {:<16} {:<10} {:<8} {:<7} {}{}",
            plain(&entry["id"]),
            plain(&resource["name"]),
            humantime::format_duration(std::time::Duration::from_secs(session)).to_string(),
            if resource["step_up"] == true {
                "yes"
            } else {
                "no"
            },
            plain(&resource["on_expiry"]),
            destinations.join(", "),
            if resource["monitor"] == true {
                " (monitor)"
            } else {
                ""
            }
        );
    }
}

fn explain(out: &mut String, result: &Value) {
    let explanation = &result["explanation"];
    let device = match explanation["device_id"].as_u64() {
        Some(id) => format!("{} (id {id})", plain(&result["device"])),
        None => "none: the source address is not enrolled".to_owned(),
    };
    let _ = writeln!(out, "device    {device}");
    let rule = &explanation["rule"];
    if rule.is_null() {
        let _ = writeln!(out, "resource  none: the destination is not protected");
    } else {
        let _ = writeln!(
            out,
            "resource  {} (id {}, prefix {}, on expiry {}{})",
            plain(&result["resource"]),
            rule["resource_id"],
            plain(&rule["prefix"]),
            plain(&rule["action"]),
            if rule["monitor"] == true {
                ", monitor mode"
            } else {
                ""
            }
        );
    }
    let session = &explanation["session"];
    if session.is_null() {
        let _ = writeln!(out, "session   none");
    } else {
        let _ = writeln!(
            out,
            "session   {} until {}",
            if session["live"] == true {
                "live"
            } else {
                "expired"
            },
            time(&session["expires_unix_ns"])
        );
    }
    let _ = writeln!(out, "verdict   {}", plain(&explanation["verdict"]));
    if explanation["mac_bound"] == true {
        let _ = writeln!(
            out,
            "note      the device is bound to a source MAC, which explain does not check"
        );
    }
}

fn audit(out: &mut String, result: &Value) {
    for record in result.as_array().into_iter().flatten() {
        let at_ns = record["at_unix_ms"]
            .as_u64()
            .map(|ms| Value::from(ms * 1_000_000));
        let _ = writeln!(
            out,
            "{:<6} {} {:<14} {:<22} {}",
            plain(&record["seq"]),
            time(&at_ns.unwrap_or(Value::Null)),
            plain(&record["kind"]),
            plain(&record["actor"]),
            plain(&record["detail"])
        );
    }
}

fn key_values(out: &mut String, indent: &str, value: &Value) {
    match value.as_object() {
        Some(map) => {
            for (key, value) in map {
                if value.is_object() {
                    // A nested report, such as reload's map changes, indented under its key.
                    let _ = writeln!(out, "{indent}{key}");
                    key_values(out, &format!("{indent}  "), value);
                } else {
                    let _ = writeln!(out, "{indent}{key:<22} {}", plain(value));
                }
            }
        }
        None => {
            let _ = writeln!(out, "{indent}{}", plain(value));
        }
    }
}

/// Formats a JSON value without quotes around strings, and null as `-`.
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Formats Unix nanoseconds as RFC 3339 UTC, or `-`.
fn time(value: &Value) -> String {
    match value.as_u64() {
        Some(ns) => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resource_list_names_protocols() {
        let result = json!([{
            "id": 2,
            "resource": {
                "name": "files",
                "session": 28800,
                "step_up": false,
                "on_expiry": "reject",
                "destinations": [
                    { "prefix": "198.51.100.20/32", "protocol": { "Number": 17 }, "ports": [7, 7] },
                    { "prefix": "198.51.100.21/32", "protocol": "Any", "ports": null }
                ]
            }
        }]);
        let text = render(&Request::ResourceList, &result);
        assert!(text.contains("198.51.100.20/32 udp:7"), "{text}");
        assert!(text.contains("198.51.100.21/32"), "{text}");
        assert!(!text.contains("Any"), "{text}");
    }

    #[test]
    fn nested_report_is_indented() {
        let mut out = String::new();
        key_values(
            &mut out,
            "",
            &json!({ "resources": 3, "maps": { "prefixes_removed": 6 } }),
        );
        assert!(out.contains("maps\n  prefixes_removed"), "{out}");
        assert!(!out.contains('{'), "{out}");
    }

    #[test]
    fn session_list_aligns_device_column() {
        let result = json!([
            {
                "device_id": 1,
                "device": "alice-workstation",
                "resource": "wiki",
                "live": true,
                "in_kernel": true,
                "expires_unix_ns": 1_700_000_000_000_000_000u64,
                "user": { "subject": "alice" },
            },
            {
                "device_id": 12,
                "device": "bob",
                "resource": "payroll-reports",
                "live": false,
                "in_kernel": false,
                "expires_unix_ns": null,
                "user": { "subject": "bob" },
            },
        ]);
        let text = render(&Request::SessionList { device: None }, &result);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with("alice-workstation (1) "), "{text}");
        assert!(lines[2].starts_with("bob (12) "), "{text}");

        let resource_column = lines[0].find("RESOURCE").unwrap();
        assert_eq!(lines[1].find("wiki"), Some(resource_column), "{text}");
        assert_eq!(
            lines[2].find("payroll-reports"),
            Some(resource_column),
            "{text}"
        );
        let state_column = lines[0].find("STATE").unwrap();
        assert_eq!(lines[1].find("live"), Some(state_column), "{text}");
        assert_eq!(lines[2].find("inactive"), Some(state_column), "{text}");
    }
}

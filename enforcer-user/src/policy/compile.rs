//! Compiles a policy into the kernel's prefix table: for each destination prefix, the rules
//! tried in order, with the rules inherited from covering prefixes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::{
    MAX_RULES_PER_PREFIX, PrefixRules, RULE_FLAG_ANY_PORT, RULE_FLAG_MONITOR, ResourceRule,
};
use ipnet::IpNet;

use super::{Policy, PolicyError};

/// One entry of `PREFIXES_V4` or `PREFIXES_V6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPrefix {
    pub prefix: IpNet,
    pub rules: PrefixRules,
}

/// Builds the prefix table of `policy`. `resource_ids` maps each resource name to its id.
///
/// A prefix stores its own rules in policy order, then the rules of every covering prefix,
/// most specific first. The LPM lookup returns only the most specific prefix, so without the
/// inherited rules a packet to a port that only a covering prefix protects would pass.
pub fn compile_prefixes(
    file: &str,
    policy: &Policy,
    resource_ids: &HashMap<String, u32>,
) -> Result<Vec<CompiledPrefix>, Vec<PolicyError>> {
    // Rules of each prefix in policy order, with the line of their first destination.
    let mut own: BTreeMap<IpNet, (usize, Vec<ResourceRule>)> = BTreeMap::new();
    for resource in &policy.resources {
        let Some(&resource_id) = resource_ids.get(&resource.name) else {
            continue;
        };
        for destination in &resource.destinations {
            let mut flags = 0;
            if resource.monitor {
                flags |= RULE_FLAG_MONITOR;
            }
            let (port_lo, port_hi) = match destination.ports {
                Some(range) => range,
                None => {
                    flags |= RULE_FLAG_ANY_PORT;
                    (0, u16::MAX)
                }
            };
            let rule = ResourceRule {
                resource_id,
                port_lo,
                port_hi,
                protocol: destination.protocol.number(),
                action: resource.on_expiry.to_kernel() as u8,
                flags,
                _pad: 0,
            };
            own.entry(destination.prefix)
                .or_insert_with(|| (destination.line, Vec::new()))
                .1
                .push(rule);
        }
    }

    let mut errors = Vec::new();
    let mut compiled = Vec::new();
    // Parsing rejects prefixes with host bits set, so each key is a network, and the prefixes
    // covering one are found by truncating it to each shorter length the policy uses, rather
    // than by comparing it with every other prefix.
    let lengths: BTreeSet<(bool, u8)> = own
        .keys()
        .map(|prefix| (matches!(prefix, IpNet::V4(_)), prefix.prefix_len()))
        .collect();
    for (prefix, (line, rules)) in &own {
        let is_v4 = matches!(prefix, IpNet::V4(_));
        let mut covering: Vec<(&IpNet, &Vec<ResourceRule>)> = lengths
            .iter()
            .filter(|(v4, length)| *v4 == is_v4 && *length < prefix.prefix_len())
            .filter_map(|(_, length)| IpNet::new(prefix.addr(), *length).ok())
            .filter_map(|candidate| own.get_key_value(&candidate.trunc()))
            .map(|(other, (_, rules))| (other, rules))
            .collect();
        covering.sort_by_key(|(other, _)| std::cmp::Reverse(other.prefix_len()));

        let mut all: Vec<ResourceRule> = rules.clone();
        for (_, inherited) in covering {
            all.extend_from_slice(inherited);
        }
        if all.len() > MAX_RULES_PER_PREFIX {
            errors.push(PolicyError {
                file: file.to_owned(),
                line: *line,
                message: format!(
                    "prefix {prefix} has {} rules including those of covering prefixes, more than the maximum of {MAX_RULES_PER_PREFIX}; merge port ranges or split the prefix",
                    all.len()
                ),
            });
            continue;
        }
        let mut entry = PrefixRules {
            count: all.len() as u32,
            ..PrefixRules::default()
        };
        entry.rules[..all.len()].copy_from_slice(&all);
        compiled.push(CompiledPrefix {
            prefix: *prefix,
            rules: entry,
        });
    }
    if errors.is_empty() {
        Ok(compiled)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn ids(policy: &Policy) -> HashMap<String, u32> {
        policy
            .resources
            .iter()
            .enumerate()
            .map(|(index, resource)| (resource.name.clone(), index as u32 + 1))
            .collect()
    }

    fn compile(text: &str) -> Result<Vec<CompiledPrefix>, Vec<PolicyError>> {
        let policy = parse("policy.toml", text).unwrap();
        compile_prefixes("policy.toml", &policy, &ids(&policy))
    }

    const NESTED: &str = r#"
[[resource]]
name = "net"
destinations = [{ prefix = "198.51.100.0/24", protocol = "tcp", ports = 22 }]
session = "1h"
[[resource]]
name = "host"
destinations = [{ prefix = "198.51.100.7/32", protocol = "tcp", ports = 443 }]
session = "1h"
[[resource]]
name = "wide"
destinations = [{ prefix = "198.51.0.0/16" }]
session = "1h"
"#;

    #[test]
    fn specific_prefix_inherits_covering_rules() {
        let compiled = compile(NESTED).unwrap();
        let host = compiled
            .iter()
            .find(|entry| entry.prefix.to_string() == "198.51.100.7/32")
            .unwrap();
        let order: Vec<u32> = host.rules.rules[..host.rules.count as usize]
            .iter()
            .map(|rule| rule.resource_id)
            .collect();
        assert_eq!(order, vec![2, 1, 3]);
    }

    #[test]
    fn rule_without_ports_matches_any_port() {
        let compiled = compile(NESTED).unwrap();
        let wide = compiled
            .iter()
            .find(|entry| entry.prefix.to_string() == "198.51.0.0/16")
            .unwrap();
        assert_eq!(wide.rules.count, 1);
        assert_eq!(
            wide.rules.rules[0].flags & RULE_FLAG_ANY_PORT,
            RULE_FLAG_ANY_PORT
        );
        assert_eq!(wide.rules.rules[0].protocol, common::PROTOCOL_ANY);
    }

    #[test]
    fn too_many_rules_is_a_policy_error() {
        let mut text = String::new();
        for index in 0..=MAX_RULES_PER_PREFIX {
            text.push_str(&format!(
                "[[resource]]\nname = \"r{index}\"\ndestinations = [{{ prefix = \"203.0.113.0/24\", protocol = \"tcp\", ports = {} }}]\nsession = \"1h\"\n",
                1000 + index
            ));
        }
        let errors = compile(&text).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("maximum of 16"), "{}", errors[0]);
    }
    #[test]
    fn ten_thousand_hosts_inherit_once() {
        let mut text = String::from(
            "[[resource]]\nname = \"net\"\ndestinations = [{ prefix = \"10.0.0.0/8\" }, { prefix = \"2001:db8::/32\" }]\nsession = \"1h\"\n",
        );
        for index in 0..10_000u32 {
            let [_, _, high, low] = index.to_be_bytes();
            text.push_str(&format!(
                "[[resource]]\nname = \"host{index}\"\ndestinations = [{{ prefix = \"10.1.{high}.{low}\" }}]\nsession = \"1h\"\n"
            ));
        }
        let started = std::time::Instant::now();
        let compiled = compile(&text).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(compiled.len(), 10_002);
        for entry in &compiled {
            let is_host = matches!(entry.prefix, IpNet::V4(_)) && entry.prefix.prefix_len() == 32;
            let expected = if is_host { 2 } else { 1 };
            assert_eq!(entry.rules.count, expected, "{}", entry.prefix);
        }
        // Comparing every pair of prefixes made `enforcer check` of 10,000 prefixes take about 9 s
        // in a debug build on a 2-core VM.
        assert!(elapsed < std::time::Duration::from_secs(3), "{elapsed:?}");
    }
}

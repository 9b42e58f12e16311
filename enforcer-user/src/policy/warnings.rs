//! Warnings about a valid policy whose rules probably do not do what their author meant.
//! They never reject the file: `enforcer check` prints them and the daemon logs them.

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;

use super::Policy;

impl Policy {
    /// Returns one sentence per suspicious rule, each starting with `file:line`: a prefix that
    /// covers every address, a device address inside a protected prefix, and prefixes of
    /// different resources that overlap.
    pub fn warnings(&self, file: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        let destinations: Vec<(&str, &super::Destination)> = self
            .resources
            .iter()
            .flat_map(|resource| {
                resource
                    .destinations
                    .iter()
                    .map(move |destination| (resource.name.as_str(), destination))
            })
            .collect();

        for (name, destination) in &destinations {
            if destination.prefix.prefix_len() == 0 {
                warnings.push(format!(
                    "{file}:{}: resource {name} protects every {} address ({}), which also covers the portal and the identity provider when devices reach them through the enforced interface; list narrower prefixes",
                    destination.line,
                    family(&destination.prefix),
                    destination.prefix
                ));
            }
        }

        for device in &self.devices {
            for address in &device.addresses {
                for (name, destination) in &destinations {
                    if destination.prefix.prefix_len() > 0 && destination.prefix.contains(address) {
                        warnings.push(format!(
                            "{file}:{}: device {}'s address {address} is inside resource {name}'s prefix {}, so other devices need a session to reach it; check that the device is meant to be protected",
                            destination.line, device.name, destination.prefix
                        ));
                    }
                }
            }
        }

        for (wide, narrow) in overlapping_pairs(&destinations) {
            let (wide_name, wide) = destinations[wide];
            let (narrow_name, narrow) = destinations[narrow];
            warnings.push(format!(
                "{file}:{}: resource {wide_name}'s prefix {} contains resource {narrow_name}'s prefix {} (line {}), so packets to {} are classified as {narrow_name}, the most specific prefix, and need its session instead of {wide_name}'s",
                wide.line, wide.prefix, narrow.prefix, narrow.line, narrow.prefix,
            ));
        }
        warnings
    }
}

/// Returns `(wide, narrow)` index pairs of destinations of different resources where the
/// prefix at `wide` strictly contains the prefix at `narrow`, sorted. Each destination is
/// looked up once per prefix length in use, so the cost grows with the number of
/// destinations times at most 33 (IPv4) or 129 (IPv6) lengths, not with their square.
fn overlapping_pairs(destinations: &[(&str, &super::Destination)]) -> Vec<(usize, usize)> {
    let mut by_network: HashMap<IpNet, Vec<usize>> = HashMap::new();
    let mut lengths: BTreeSet<(bool, u8)> = BTreeSet::new();
    for (index, (_, destination)) in destinations.iter().enumerate() {
        let network = destination.prefix.trunc();
        by_network.entry(network).or_default().push(index);
        lengths.insert((is_v4(&network), network.prefix_len()));
    }

    let mut pairs = Vec::new();
    for (narrow, (narrow_name, destination)) in destinations.iter().enumerate() {
        let prefix = destination.prefix.trunc();
        for &(v4, length) in &lengths {
            if v4 != is_v4(&prefix) || length >= prefix.prefix_len() {
                continue;
            }
            let Ok(candidate) = IpNet::new(prefix.addr(), length) else {
                continue;
            };
            let Some(wides) = by_network.get(&candidate.trunc()) else {
                continue;
            };
            for &wide in wides {
                if destinations[wide].0 != *narrow_name {
                    pairs.push((wide, narrow));
                }
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

fn is_v4(prefix: &IpNet) -> bool {
    matches!(prefix, IpNet::V4(_))
}

fn family(prefix: &IpNet) -> &'static str {
    match prefix {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::parse;

    const RESOURCES: &str = r#"
[[resource]]
name = "everything"
destinations = [{ prefix = "0.0.0.0/0" }]
session = "1h"
users = ["alice@example.com"]

[[resource]]
name = "lab"
destinations = [{ prefix = "10.0.0.0/8" }]
session = "1h"
users = ["alice@example.com"]

[[resource]]
name = "printer"
destinations = [{ prefix = "10.1.2.3" }]
session = "1h"
users = ["alice@example.com"]

[[device]]
name = "alice-laptop"
addresses = ["10.9.9.9"]
"#;

    #[test]
    fn warnings_name_each_suspicious_rule() {
        let policy = parse("policy.toml", RESOURCES).expect("the policy is valid");
        let warnings = policy.warnings("policy.toml");
        assert!(
            warnings.iter().any(|w| w.starts_with(
                "policy.toml:4: resource everything protects every IPv4 address (0.0.0.0/0)"
            )),
            "{warnings:#?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains(
                "device alice-laptop's address 10.9.9.9 is inside resource lab's prefix 10.0.0.0/8"
            )),
            "{warnings:#?}"
        );
        assert!(
            warnings.iter().any(|w| w.starts_with("policy.toml:10: resource lab's prefix 10.0.0.0/8 contains resource printer's prefix 10.1.2.3/32 (line 16)")),
            "{warnings:#?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains(
                "resource everything's prefix 0.0.0.0/0 contains resource lab's prefix 10.0.0.0/8"
            )),
            "{warnings:#?}"
        );
    }

    #[test]
    fn separate_prefixes_give_no_warning() {
        let text = r#"
[[resource]]
name = "wiki"
destinations = [{ prefix = "198.51.100.10" }, { prefix = "198.51.100.0/30" }]
session = "1h"
users = ["alice@example.com"]

[[resource]]
name = "files"
destinations = [{ prefix = "198.51.100.20" }]
session = "1h"
users = ["alice@example.com"]

[[device]]
name = "alice-laptop"
addresses = ["192.0.2.10"]
"#;
        let policy = parse("policy.toml", text).expect("the policy is valid");
        assert_eq!(policy.warnings("policy.toml"), Vec::<String>::new());
    }

    #[test]
    fn overlap_warnings_scale_and_cover_ipv6() {
        let mut text = String::from(
            "[[resource]]\nname = \"net\"\ndestinations = [{ prefix = \"2001:db8::/32\" }, { prefix = \"10.0.0.0/8\" }]\nsession = \"1h\"\nusers = [\"alice@example.com\"]\n",
        );
        for index in 0..10_000u32 {
            let [_, _, high, low] = index.to_be_bytes();
            text.push_str(&format!(
                "\n[[resource]]\nname = \"host{index}\"\ndestinations = [{{ prefix = \"10.1.{high}.{low}\" }}, {{ prefix = \"2001:db8:1::{index:x}\" }}]\nsession = \"1h\"\nusers = [\"alice@example.com\"]\n"
            ));
        }
        let policy = parse("policy.toml", &text).expect("the policy is valid");
        let started = std::time::Instant::now();
        let warnings = policy.warnings("policy.toml");
        let elapsed = started.elapsed();
        assert_eq!(warnings.len(), 20_000);
        assert!(
            warnings[0].starts_with("policy.toml:3: resource net's prefix"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings.iter().any(|w| w.starts_with("policy.toml:3: resource net's prefix 2001:db8::/32 contains resource host9999's prefix 2001:db8:1::270f/128 (line 60003)")),
            "{:#?}",
            &warnings[..4]
        );
        // The pairwise comparison this replaces took seconds here in a debug build.
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
    }
}

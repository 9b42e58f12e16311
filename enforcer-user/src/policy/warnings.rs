//! Warnings about a valid policy whose rules probably do not do what their author meant.
//! They never reject the file: `enforcer check` prints them and the daemon logs them.

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

        for (index, (outer_name, outer)) in destinations.iter().enumerate() {
            for (inner_name, inner) in &destinations[index + 1..] {
                if outer_name == inner_name || outer.prefix == inner.prefix {
                    continue;
                }
                let (wide, narrow) = if outer.prefix.contains(&inner.prefix) {
                    ((outer_name, outer), (inner_name, inner))
                } else if inner.prefix.contains(&outer.prefix) {
                    ((inner_name, inner), (outer_name, outer))
                } else {
                    continue;
                };
                warnings.push(format!(
                    "{file}:{}: resource {}'s prefix {} contains resource {}'s prefix {} (line {}), so packets to {} are classified as {}, the most specific prefix, and need its session instead of {}'s",
                    wide.1.line,
                    wide.0,
                    wide.1.prefix,
                    narrow.0,
                    narrow.1.prefix,
                    narrow.1.line,
                    narrow.1.prefix,
                    narrow.0,
                    wide.0
                ));
            }
        }
        warnings
    }
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
}

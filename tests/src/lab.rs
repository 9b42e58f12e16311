//! The lab: a client namespace (a user's device), a gateway namespace that forwards between
//! the client and the resources, and a resource namespace with real services. The
//! `enforcer-lab` binary and the lab scenario test build it through this module.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;

use crate::{Netns, address, veth};

/// Client-facing interface of the gateway, where the XDP program is attached.
pub const GATEWAY_CLIENT_IF: &str = "gw-client";
pub const GATEWAY_RESOURCE_IF: &str = "gw-res";
pub const CLIENT_IF: &str = "lab0";
pub const RESOURCE_IF: &str = "res0";

pub const CLIENT_V4: &str = "192.0.2.10";
pub const CLIENT_V6: &str = "2001:db8:1::10";
/// Gateway address on the client side: the portal and the identity provider listen here.
pub const GATEWAY_V4: &str = "192.0.2.1";
pub const GATEWAY_V6: &str = "2001:db8:1::1";
pub const GATEWAY_RESOURCE_SIDE_V4: &str = "198.51.100.1";
pub const GATEWAY_RESOURCE_SIDE_V6: &str = "2001:db8:2::1";

/// One protected service host in the resource namespace.
pub struct ResourceHost {
    pub name: &'static str,
    pub v4: &'static str,
    pub v6: &'static str,
}

/// The resource hosts; the example policy protects each with its own session duration.
pub const RESOURCE_HOSTS: [ResourceHost; 3] = [
    ResourceHost {
        name: "wiki",
        v4: "198.51.100.10",
        v6: "2001:db8:2::10",
    },
    ResourceHost {
        name: "files",
        v4: "198.51.100.20",
        v6: "2001:db8:2::20",
    },
    ResourceHost {
        name: "admin",
        v4: "198.51.100.30",
        v6: "2001:db8:2::30",
    },
];

/// TCP and UDP port of the echo services on every resource host.
pub const ECHO_PORT: u16 = 7;
/// Port of the HTTP server on every resource host.
pub const HTTP_PORT: u16 = 80;

/// The three namespaces, wired and addressed, with forwarding on in the gateway.
pub struct Topology {
    pub client: Netns,
    pub gateway: Netns,
    pub resource: Netns,
}

impl Topology {
    /// Builds the namespaces `<prefix>client`, `<prefix>gw` and `<prefix>res`, replacing any
    /// left over from an earlier run with the same prefix.
    pub fn build(prefix: &str) -> anyhow::Result<Self> {
        let client = Netns::named(&format!("{prefix}client"))?;
        let gateway = Netns::named(&format!("{prefix}gw"))?;
        let resource = Netns::named(&format!("{prefix}res"))?;
        veth(&client, CLIENT_IF, &gateway, GATEWAY_CLIENT_IF)?;
        veth(&gateway, GATEWAY_RESOURCE_IF, &resource, RESOURCE_IF)?;

        address(&client, CLIENT_IF, &format!("{CLIENT_V4}/24"))?;
        address(&client, CLIENT_IF, &format!("{CLIENT_V6}/64"))?;
        address(&gateway, GATEWAY_CLIENT_IF, &format!("{GATEWAY_V4}/24"))?;
        address(&gateway, GATEWAY_CLIENT_IF, &format!("{GATEWAY_V6}/64"))?;
        address(
            &gateway,
            GATEWAY_RESOURCE_IF,
            &format!("{GATEWAY_RESOURCE_SIDE_V4}/24"),
        )?;
        address(
            &gateway,
            GATEWAY_RESOURCE_IF,
            &format!("{GATEWAY_RESOURCE_SIDE_V6}/64"),
        )?;
        for host in &RESOURCE_HOSTS {
            address(&resource, RESOURCE_IF, &format!("{}/24", host.v4))?;
            address(&resource, RESOURCE_IF, &format!("{}/64", host.v6))?;
        }

        // Routes name only the lab's own prefixes; no namespace gets a default route.
        client.exec(&["ip", "route", "add", "198.51.100.0/24", "via", GATEWAY_V4])?;
        client.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:2::/64",
            "via",
            GATEWAY_V6,
        ])?;
        resource.exec(&[
            "ip",
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            GATEWAY_RESOURCE_SIDE_V4,
        ])?;
        resource.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:1::/64",
            "via",
            GATEWAY_RESOURCE_SIDE_V6,
        ])?;
        gateway.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        gateway.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;

        Ok(Self {
            client,
            gateway,
            resource,
        })
    }

    /// Starts an HTTP server and TCP and UDP echo services on every resource host. `lab_binary`
    /// is the `enforcer-lab` binary, whose `echo` subcommand serves the echo ports.
    pub fn start_services(&mut self, lab_binary: &Path, web_root: &Path) -> anyhow::Result<()> {
        for host in &RESOURCE_HOSTS {
            let folder = web_root.join(host.name);
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("failed to create {}", folder.display()))?;
            let page = format!("resource {} reached\n", host.name);
            std::fs::write(folder.join("index.html"), page)
                .with_context(|| format!("failed to write {}", folder.display()))?;

            for bind in [host.v4, host.v6] {
                let folder = folder.to_string_lossy().into_owned();
                let port = HTTP_PORT.to_string();
                self.resource.spawn(&[
                    "python3",
                    "-m",
                    "http.server",
                    "--bind",
                    bind,
                    "--directory",
                    &folder,
                    &port,
                ])?;
                let echo = format!("{}", SocketText(bind, ECHO_PORT));
                self.resource
                    .spawn(&[&lab_binary.to_string_lossy(), "echo", "--listen", &echo])?;
            }
        }
        Ok(())
    }
}

/// Formats an address and port as `addr:port`, bracketing IPv6.
struct SocketText<'a>(&'a str, u16);

impl std::fmt::Display for SocketText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.0, self.1),
            _ => write!(f, "{}:{}", self.0, self.1),
        }
    }
}

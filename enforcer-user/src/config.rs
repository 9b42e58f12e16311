//! The daemon's configuration file (TOML): where it attaches, where it keeps state and where it
//! listens. Policy lives in its own file, named here, because it is reloaded at run time.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Default root under bpffs; the program, its link and its maps are pinned in one folder per
/// interface below it.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/enforcer";

/// Default path of the admin API socket.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/enforcer/admin.sock";

/// Errors from reading the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}: {source}; pass an existing file with --config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// XDP attach mode. `ip -d link` shows `xdp` for native mode and `xdpgeneric` for skb mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native (driver) mode when the driver supports it, else generic mode.
    #[default]
    Auto,
    /// Driver mode only; attaching fails on drivers without XDP support.
    Native,
    /// Generic (SKB) mode: works on every interface, slower.
    Skb,
    /// Offloaded to the NIC.
    Offload,
}

impl XdpAttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpAttachMode::Auto => "auto",
            XdpAttachMode::Native => "native",
            XdpAttachMode::Skb => "skb",
            XdpAttachMode::Offload => "offload",
        }
    }
}

/// Kind of the client-facing interface, which selects the XDP entry point.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    /// Frames start with an Ethernet header.
    #[default]
    Ethernet,
    /// Packets start at the IP header (tun, WireGuard).
    RawIp,
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client-facing interface the XDP program is attached to.
    pub interface: String,
    #[serde(default)]
    pub link_kind: LinkKind,
    #[serde(default)]
    pub xdp_mode: XdpAttachMode,
    /// bpffs folder whose `<interface>/` subfolder contains the pinned link and maps.
    #[serde(default = "default_pin_root")]
    pub pin_root: PathBuf,
    /// Policy file (TOML), reloaded on SIGHUP and `enforcer reload`.
    pub policy: PathBuf,
    /// Maximum number of (device, resource) sessions in the kernel map; the XDP object's own
    /// size when unset. It applies when the program is attached, not when a pinned one is
    /// adopted.
    pub session_capacity: Option<u32>,
    pub store: StoreConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub portal: ListenConfig,
    pub metrics: Option<ListenConfig>,
    /// The identity provider; the `idp` module defines and reads its keys.
    #[serde(default)]
    pub idp: toml::Table,
    /// The reauth responder (notifications, webhook); the `responder` module reads its keys.
    #[serde(default)]
    pub responder: toml::Table,
}

/// State store settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// redb file; created when missing, never recreated when unreadable.
    pub path: PathBuf,
}

/// The admin API socket.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
    /// Group whose members may use the admin API besides root; the socket gets this group.
    pub group: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            socket: default_admin_socket(),
            group: None,
        }
    }
}

/// An HTTP listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub listen: SocketAddr,
}

fn default_pin_root() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_ROOT)
}

fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}

impl Config {
    /// Reads and validates the file at `path`. Relative paths inside it are resolved against
    /// the file's folder, so a config and its policy can move together.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for relative in [
            &mut config.policy,
            &mut config.store.path,
            &mut config.admin.socket,
            &mut config.pin_root,
        ] {
            if relative.is_relative() {
                *relative = base.join(&*relative);
            }
        }
        // The `[idp]` and `[responder]` tables stay opaque, but their secret files are paths
        // like the others.
        if let Some(toml::Value::String(secret)) = config.idp.get_mut("client_secret_file") {
            if Path::new(secret.as_str()).is_relative() {
                *secret = base.join(&*secret).to_string_lossy().into_owned();
            }
        }
        if let Some(toml::Value::Table(webhook)) = config.responder.get_mut("webhook")
            && let Some(toml::Value::String(secret)) = webhook.get_mut("secret_file")
            && Path::new(secret.as_str()).is_relative()
        {
            *secret = base.join(&*secret).to_string_lossy().into_owned();
        }
        Ok(config)
    }

    /// Parses configuration text; the error message contains the line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(text).map_err(|err| err.to_string())?;
        if config.interface.is_empty() || config.interface.len() > 15 {
            return Err(format!(
                "interface {:?} is invalid: a Linux interface name has 1 to 15 bytes",
                config.interface
            ));
        }
        Ok(config)
    }

    /// Folder that contains this interface's pinned link and maps.
    pub fn pin_folder(&self) -> PathBuf {
        self.pin_root.join(&self.interface)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
interface = "eth1"
policy = "policy.toml"
[store]
path = "/var/lib/enforcer/state.redb"
[portal]
listen = "127.0.0.1:8443"
"#;

    #[test]
    fn minimal_config_uses_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.xdp_mode, XdpAttachMode::Auto);
        assert_eq!(
            config.pin_folder(),
            PathBuf::from("/sys/fs/bpf/enforcer/eth1")
        );
        assert_eq!(config.admin.socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert!(config.idp.is_empty());
    }

    #[test]
    fn unknown_key_names_its_line() {
        let text = format!("{MINIMAL}\nbogus = 1\n");
        let err = Config::parse(&text).unwrap_err();
        assert!(err.contains("line 9"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn load_resolves_relative_secret_file() {
        let dir = std::env::temp_dir().join(format!("enforcer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("enforcer.toml");
        let text = format!("{MINIMAL}\n[idp]\nclient_secret_file = \"secret\"\n");
        std::fs::write(&path, text).unwrap();

        let config = Config::load(&path).unwrap();
        let secret = config
            .idp
            .get("client_secret_file")
            .and_then(|value| value.as_str());
        assert_eq!(secret, Some(dir.join("secret").to_str().unwrap()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn load_resolves_relative_webhook_secret_file() {
        let dir = std::env::temp_dir().join(format!("enforcer-webhook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("enforcer.toml");
        let text = format!(
            "{MINIMAL}\n[responder.webhook]\nurl = \"http://127.0.0.1:1/\"\nsecret_file = \"hook\"\n"
        );
        std::fs::write(&path, text).unwrap();

        let config = Config::load(&path).unwrap();
        let secret = config
            .responder
            .get("webhook")
            .and_then(|webhook| webhook.get("secret_file"))
            .and_then(|value| value.as_str());
        assert_eq!(secret, Some(dir.join("hook").to_str().unwrap()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn idp_table_is_kept_opaque() {
        let text = format!("{MINIMAL}\n[idp]\nissuer = \"http://127.0.0.1:3000\"\n");
        let config = Config::parse(&text).unwrap();
        assert_eq!(
            config.idp.get("issuer").and_then(|value| value.as_str()),
            Some("http://127.0.0.1:3000")
        );
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../examples/enforcer.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(
            config.admin.group, None,
            "the group stays commented out until created"
        );
        let with_group = text.replace("# group = ", "group = ");
        let config = Config::parse(&with_group).unwrap();
        assert_eq!(config.admin.group.as_deref(), Some("enforcer-admin"));
    }

    #[test]
    fn long_interface_name_is_invalid() {
        let text = MINIMAL.replace("eth1", "an-interface-name-too-long");
        let err = Config::parse(&text).unwrap_err();
        assert!(err.contains("1 to 15 bytes"), "{err}");
    }
}

//! Pinning under bpffs, so enforcement continues while the daemon is stopped or upgraded, and
//! adoption of a pinned program by a restarted daemon.
//!
//! One folder per interface contains a pin per map (named as the map), `program`, and `link`,
//! which is written last. A folder with `link` is therefore complete; one without it is left
//! over from a failed attach and is cleared before a fresh attach.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData},
    programs::{
        XdpMode,
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};

use super::{Dataplane, DataplaneError, MAP_NAMES, xdp_mode::AttachedMode};

/// File name of the pinned XDP link.
pub const LINK_PIN: &str = "link";
/// File name of the pinned program.
pub const PROGRAM_PIN: &str = "program";

/// Attachment of the program to the interface: fresh or adopted, with its ids.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    /// True when a pinned program was reused instead of attaching a new one.
    pub adopted: bool,
    pub program_id: u32,
    pub link_id: u32,
    pub pin_folder: PathBuf,
    /// Mode in effect as the kernel reports it; `None` when the read-back failed.
    pub mode: Option<AttachedMode>,
}

impl Attachment {
    /// Returns the mode in effect (`native`, `generic` or `offload`), or `unknown` when the
    /// kernel could not be asked.
    pub fn mode_name(&self) -> &'static str {
        self.mode.map_or("unknown", AttachedMode::as_str)
    }
}

fn pin_error(path: &Path, source: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Pin {
        path: path.to_path_buf(),
        message: source.to_string(),
    }
}

/// Adopts the program pinned in `folder` when its link exists and runs our entry point
/// `program_name`. Otherwise loads the object, attaches it to `interface` in `mode` and pins
/// maps, program and link in `folder`.
pub fn attach_or_adopt(
    folder: &Path,
    interface: &str,
    mode: XdpMode,
    program_name: &'static str,
    session_capacity: Option<u32>,
) -> Result<(Dataplane, Attachment), DataplaneError> {
    let (dataplane, mut attachment) =
        attach_or_adopt_pins(folder, interface, mode, program_name, session_capacity)?;
    attachment.mode = match super::xdp_mode::attached_mode(interface, attachment.program_id) {
        Ok(mode) => mode,
        Err(err) => {
            tracing::warn!(interface, program_id = attachment.program_id, error = %err, "failed to read the XDP attach mode back from the kernel");
            None
        }
    };
    Ok((dataplane, attachment))
}

fn attach_or_adopt_pins(
    folder: &Path,
    interface: &str,
    mode: XdpMode,
    program_name: &'static str,
    session_capacity: Option<u32>,
) -> Result<(Dataplane, Attachment), DataplaneError> {
    check_bpffs(folder)?;
    if folder.join(LINK_PIN).exists() {
        return adopt(folder, program_name);
    }
    clear(folder)?;
    fs::create_dir_all(folder).map_err(|err| pin_error(folder, err))?;
    match attach_pinned(folder, interface, mode, program_name, session_capacity) {
        Ok(attached) => Ok(attached),
        Err(err) => {
            if let Err(cleanup) = clear(folder) {
                tracing::error!(folder = %folder.display(), error = %cleanup, "failed to remove partial pins");
            }
            Err(err)
        }
    }
}

/// Attaches `program` to `interface` in `mode`. `XdpMode::Default` (the `auto` setting) tries
/// native (driver) mode first and falls back to generic (SKB) mode when the driver rejects it,
/// because the kernel itself would only pick driver mode and fail on such a driver.
fn attach_with_fallback(
    program: &mut aya::programs::Xdp,
    interface: &str,
    mode: XdpMode,
    program_name: &'static str,
) -> Result<aya::programs::xdp::XdpLinkId, DataplaneError> {
    let program_error = |source| DataplaneError::Program {
        name: program_name,
        source,
    };
    if mode != XdpMode::Default {
        return program.attach(interface, mode).map_err(program_error);
    }
    match program.attach(interface, XdpMode::Driver) {
        Ok(link_id) => Ok(link_id),
        Err(err) => {
            tracing::info!(
                interface,
                error = %err,
                "native XDP attach failed, so falling back to generic (SKB) mode"
            );
            program
                .attach(interface, XdpMode::Skb)
                .map_err(program_error)
        }
    }
}

fn attach_pinned(
    folder: &Path,
    interface: &str,
    mode: XdpMode,
    program_name: &'static str,
    session_capacity: Option<u32>,
) -> Result<(Dataplane, Attachment), DataplaneError> {
    let mut dataplane = Dataplane::load_with(program_name, session_capacity)?;
    for (name, map) in &dataplane.maps {
        let path = folder.join(name);
        map.pin(&path).map_err(|err| pin_error(&path, err))?;
    }
    let program_path = folder.join(PROGRAM_PIN);
    let program = dataplane.program()?;
    program
        .pin(&program_path)
        .map_err(|err| pin_error(&program_path, err))?;
    let program_id = program
        .info()
        .map_err(|source| DataplaneError::Program {
            name: program_name,
            source,
        })?
        .id();
    let link_id = attach_with_fallback(program, interface, mode, program_name)?;
    let link = program
        .take_link(link_id)
        .map_err(|source| DataplaneError::Program {
            name: program_name,
            source,
        })?;
    // Netlink attachments cannot be pinned; every kernel since 5.9 gives a bpf_link instead.
    let link: FdLink = link
        .try_into()
        .map_err(|err: aya::programs::links::LinkError| pin_error(&folder.join(LINK_PIN), err))?;
    let link_id = link
        .info()
        .map_err(|err| pin_error(&folder.join(LINK_PIN), err))?
        .id();
    let link_path = folder.join(LINK_PIN);
    let pinned = link
        .pin(&link_path)
        .map_err(|err| pin_error(&link_path, err))?;
    // The pin keeps the program attached; the descriptor is not needed after this.
    drop(pinned);
    Ok((
        dataplane,
        Attachment {
            adopted: false,
            program_id,
            link_id,
            pin_folder: folder.to_path_buf(),
            mode: None,
        },
    ))
}

fn adopt(
    folder: &Path,
    program_name: &'static str,
) -> Result<(Dataplane, Attachment), DataplaneError> {
    let link_path = folder.join(LINK_PIN);
    let link = PinnedLink::from_pin(&link_path).map_err(|err| pin_error(&link_path, err))?;
    let link = FdLink::from(link);
    let info = link.info().map_err(|err| pin_error(&link_path, err))?;
    let program_id = info.program_id();

    let pinned = loaded_programs()
        .filter_map(Result::ok)
        .find(|program| program.id() == program_id);
    let name = pinned
        .as_ref()
        .and_then(|program| program.name_as_str().map(str::to_owned));
    if name.as_deref() != Some(program_name) {
        return Err(DataplaneError::ForeignLink {
            path: link_path,
            program_id,
            program: name.unwrap_or_else(|| "unknown".to_owned()),
        });
    }
    let pinned_tag = pinned.map(|program| program.tag());
    if let Some(upgraded) = upgrade(folder, program_name, pinned_tag, link, info.id())? {
        return Ok(upgraded);
    }

    let mut maps = std::collections::HashMap::new();
    for name in MAP_NAMES {
        let path = folder.join(name);
        if !path.exists() {
            continue;
        }
        let data = MapData::from_pin(&path).map_err(|err| pin_error(&path, err))?;
        let map = Map::from_map_data(data).map_err(|err| pin_error(&path, err))?;
        maps.insert(name, map);
    }
    let dataplane = Dataplane {
        ebpf: None,
        maps,
        program_name,
    };
    Ok((
        dataplane,
        Attachment {
            adopted: true,
            program_id,
            link_id: info.id(),
            pin_folder: folder.to_path_buf(),
            mode: None,
        },
    ))
}

/// Fails unless the nearest existing ancestor of `folder` is on a bpffs mount, because pins
/// cannot be created anywhere else.
fn check_bpffs(folder: &Path) -> Result<(), DataplaneError> {
    // BPF_FS_MAGIC from include/uapi/linux/magic.h.
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Some(existing) = folder.ancestors().find(|ancestor| ancestor.exists()) else {
        return Ok(());
    };
    let stats = nix::sys::statfs::statfs(existing).map_err(|err| pin_error(existing, err))?;
    if stats.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(DataplaneError::NotBpffs {
            path: folder.to_path_buf(),
        });
    }
    Ok(())
}

/// Replaces the pinned program with this binary's when their tags differ, keeping the pinned
/// maps and the link: the new program is loaded against the pinned maps and swapped in with
/// `bpf_link_update`, so no packet goes unenforced. Returns `None` when the programs are the
/// same, or when this binary was built without its XDP object, so the pinned one is adopted.
fn upgrade(
    folder: &Path,
    program_name: &'static str,
    pinned_tag: Option<u64>,
    link: FdLink,
    link_id: u32,
) -> Result<Option<(Dataplane, Attachment)>, DataplaneError> {
    let Ok(object) = super::xdp_object() else {
        return Ok(None);
    };
    check_pinned_layouts(folder, object)?;
    let mut loader = aya::EbpfLoader::new();
    for name in MAP_NAMES {
        let path = folder.join(name);
        if path.exists() {
            loader.map_pin_path(name, path);
        }
    }
    let incompatible = |reason: String| DataplaneError::IncompatiblePins {
        folder: folder.to_path_buf(),
        reason,
    };
    let mut ebpf = loader
        .load(object)
        .map_err(|err| incompatible(err.to_string()))?;
    let program = super::program_mut(&mut ebpf, program_name)?;
    program.load().map_err(|err| {
        // The verifier's full log goes to the debug log, so that the error stays one line.
        tracing::debug!(error = ?err, "loading {program_name} against the pinned maps failed");
        incompatible(first_line(&err.to_string()))
    })?;
    let info = program.info().map_err(|source| DataplaneError::Program {
        name: program_name,
        source,
    })?;
    if Some(info.tag()) == pinned_tag {
        return Ok(None);
    }
    // NOTE: no test swaps in a different program here, because the tests have only one
    // program build. The refusal of pinned maps of another layout, above, is tested.

    let xdp_link = aya::programs::xdp::XdpLink::try_from(link)
        .map_err(|err| pin_error(&folder.join(LINK_PIN), err))?;
    program
        .attach_to_link(xdp_link)
        .map_err(|source| DataplaneError::Program {
            name: program_name,
            source,
        })?;
    let program_path = folder.join(PROGRAM_PIN);
    fs::remove_file(&program_path).map_err(|err| pin_error(&program_path, err))?;
    program
        .pin(&program_path)
        .map_err(|err| pin_error(&program_path, err))?;
    tracing::info!(
        old_tag = ?pinned_tag.map(|tag| format!("{tag:016x}")),
        new_tag = format!("{:016x}", info.tag()),
        program_id = info.id(),
        "replaced the pinned XDP program with this binary's, keeping its maps and link"
    );

    let mut maps = std::collections::HashMap::new();
    for name in MAP_NAMES {
        if let Some(map) = ebpf.take_map(name) {
            maps.insert(name, map);
        }
    }
    let dataplane = Dataplane {
        ebpf: Some(ebpf),
        maps,
        program_name,
    };
    Ok(Some((
        dataplane,
        Attachment {
            adopted: true,
            program_id: info.id(),
            link_id,
            pin_folder: folder.to_path_buf(),
            mode: None,
        },
    )))
}

/// Removes the pins in `folder` and the folder: the link first, which detaches the program,
/// then the maps and the program. Returns false when there was nothing to remove.
pub fn detach(folder: &Path) -> Result<bool, DataplaneError> {
    if !folder.exists() {
        return Ok(false);
    }
    clear(folder)?;
    // The pin root contains one folder per interface, so it is removed with the last one.
    if let Some(root) = folder.parent() {
        let _ = fs::remove_dir(root);
    }
    Ok(true)
}

fn clear(folder: &Path) -> Result<(), DataplaneError> {
    if !folder.exists() {
        return Ok(());
    }
    let link = folder.join(LINK_PIN);
    if link.exists() {
        fs::remove_file(&link).map_err(|err| pin_error(&link, err))?;
    }
    let entries = fs::read_dir(folder).map_err(|err| pin_error(folder, err))?;
    for entry in entries {
        let path = entry.map_err(|err| pin_error(folder, err))?.path();
        fs::remove_file(&path).map_err(|err| pin_error(&path, err))?;
    }
    fs::remove_dir(folder).map_err(|err| pin_error(folder, err))
}

/// Returns the first line of a message, cut to 200 characters.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}

/// Checks that every pinned map has the key and value sizes that this binary's XDP program
/// declares. aya reuses a pinned map without comparing its layout. A larger value then fails
/// in the verifier with an unreadable log, and a larger key loads and looks up wrong bytes.
fn check_pinned_layouts(folder: &Path, object: &[u8]) -> Result<(), DataplaneError> {
    let incompatible = |reason: String| DataplaneError::IncompatiblePins {
        folder: folder.to_path_buf(),
        reason,
    };
    let parsed = aya_obj::Object::parse(object).map_err(|err| incompatible(err.to_string()))?;
    for name in MAP_NAMES {
        let path = folder.join(name);
        let Some(declared) = parsed.maps.get(name) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        let pinned = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .map_err(|err| pin_error(&path, err))?;
        let expected = (declared.key_size(), declared.value_size());
        let found = (pinned.key_size(), pinned.value_size());
        if expected != found {
            return Err(incompatible(format!(
                "map {name} has {}-byte keys and {}-byte values, this program needs {} and {}",
                found.0, found.1, expected.0, expected.1
            )));
        }
    }
    Ok(())
}

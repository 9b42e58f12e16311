//! Builds the XDP object from `enforcer-ebpf` with Debian's rustc (the only toolchain here with a
//! prebuilt `core` for `bpfel-unknown-none`) and bpf-linker, and places it in `OUT_DIR`.
//!
//! When `AYA_BUILD_SKIP=1` is set, or bpf-linker or Debian's rustc is missing, it writes an empty
//! object instead, so `cargo check` and the unit tests work on any machine; loading that object
//! at run time fails with an error that explains how to rebuild.

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

/// Toolchain passed to `rustup run`: Debian's rustc-web and cargo-web under `/usr`.
const EBPF_TOOLCHAIN: &str = "/usr";

/// Objects that user space embeds, one per bin of `enforcer-ebpf`.
const OBJECTS: &[&str] = &["enforcer", "bench-floor", "bench-clock", "bench-parse"];

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    println!("cargo:rerun-if-changed=../common/src");
    println!("cargo:rerun-if-changed=../enforcer-ebpf/src");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    if let Some(reason) = skip_reason() {
        println!("cargo:warning=writing empty XDP objects: {reason}");
        for name in OBJECTS {
            let object = out_dir.join(name);
            fs::write(&object, [])
                .with_context(|| format!("failed to write {}", object.display()))?;
        }
        return Ok(());
    }

    // SAFETY: the build script is single-threaded, so nothing reads the environment while it
    // changes. `aya_ebpf` un-gates only that crate's `asm_experimental_arch` feature on the
    // stable Debian rustc; `1` would make aya-build add `-Z build-std=core`, which conflicts
    // with the prebuilt core.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    let package = aya_build::Package {
        name: "enforcer-ebpf",
        root_dir: "../enforcer-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN)).context(
        "failed to build the XDP program; run scripts/setup.sh to install the eBPF toolchain",
    )
}

fn skip_reason() -> Option<String> {
    if matches!(env::var("AYA_BUILD_SKIP").as_deref(), Ok("1") | Ok("true")) {
        return Some("AYA_BUILD_SKIP is set".to_owned());
    }
    if !PathBuf::from(EBPF_TOOLCHAIN)
        .join("lib/rustlib/bpfel-unknown-none")
        .exists()
    {
        return Some(format!(
            "no core library for bpfel-unknown-none under {EBPF_TOOLCHAIN}/lib/rustlib; run scripts/setup.sh"
        ));
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !linker.is_ok_and(|output| output.status.success()) {
        return Some("bpf-linker is not on PATH; run scripts/setup.sh".to_owned());
    }
    None
}

//! Secret files that users other than the file's owner and group may not access, because a
//! user who reads such a secret can impersonate the gateway.

use std::{io::Read as _, os::unix::fs::PermissionsExt as _, path::Path};

/// The reason a secret file was not used.
#[derive(Debug)]
pub enum SecretFileError {
    /// The file could not be opened or read.
    Read(std::io::Error),
    /// Other users have some permission on the file, whose permission bits are given.
    Mode(u32),
}

/// Reads the secret file at `path`, refusing it when other users may read or write it.
pub fn read(path: &Path) -> Result<String, SecretFileError> {
    let mut file = std::fs::File::open(path).map_err(SecretFileError::Read)?;
    // The mode is checked on the opened file, so a rename in between cannot swap it.
    let mode = file
        .metadata()
        .map_err(SecretFileError::Read)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o007 != 0 {
        return Err(SecretFileError::Mode(mode));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(SecretFileError::Read)?;
    Ok(text)
}

//! Secret files that users other than the file's owner and group may not access, because a
//! user who reads such a secret can impersonate the gateway.

use std::{
    io::Read as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

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
    // O_NONBLOCK keeps the open of a FIFO from waiting for a writer, which would stop the
    // daemon's start; regular files read the same with it.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(SecretFileError::Read)?;
    // The type and mode are checked on the opened file, so a rename in between cannot swap it.
    let metadata = file.metadata().map_err(SecretFileError::Read)?;
    if !metadata.is_file() {
        return Err(SecretFileError::Read(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file; point the setting at a file that contains the secret",
        )));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(SecretFileError::Mode(mode));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(SecretFileError::Read)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_directory_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("secret.fifo");
        let status = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let folder = dir.path().join("secret.d");
        std::fs::create_dir(&folder).unwrap();
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).unwrap();

        for path in [&fifo, &folder] {
            // Without a writer, a blocking open of the FIFO would never return.
            match read(path) {
                Err(SecretFileError::Read(err)) => {
                    assert!(err.to_string().contains("not a regular file"), "{err}")
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
    }

    #[test]
    fn private_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&path).unwrap(), "s3cret\n");
    }
}

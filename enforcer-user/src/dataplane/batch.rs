//! `BPF_MAP_UPDATE_BATCH` for the session map: reconcile writes up to a million entries at
//! start with one syscall per 65536 entries instead of one per entry.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use common::{SessionKey, SessionValue};

/// `BPF_MAP_UPDATE_BATCH` from `enum bpf_cmd` in the kernel's `uapi/linux/bpf.h` (Linux 5.6).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries per `BPF_MAP_UPDATE_BATCH` call; the kernel copies each chunk's keys and values
/// into its own buffers, so a chunk bounds that memory (1 MiB here).
const CHUNK: usize = 65536;

/// The `batch` member of `union bpf_attr` (Linux 5.6).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `entries` into the session map `fd` with batched updates. On failure returns the
/// error and the number of entries the kernel wrote before it; EINVAL means the kernel has
/// no batch operations for this map, so the caller writes the entries one by one.
pub fn update_sessions(
    fd: BorrowedFd<'_>,
    entries: &[(SessionKey, SessionValue)],
) -> Result<(), (std::io::Error, usize)> {
    let mut keys = Vec::with_capacity(entries.len().min(CHUNK));
    let mut values = Vec::with_capacity(entries.len().min(CHUNK));
    let mut written = 0;
    for chunk in entries.chunks(CHUNK) {
        keys.clear();
        values.clear();
        keys.extend(chunk.iter().map(|(key, _)| *key));
        values.extend(chunk.iter().map(|(_, value)| *value));
        update_batch(fd, &keys, &values).map_err(|(err, count)| (err, written + count))?;
        written += chunk.len();
    }
    Ok(())
}

/// Writes `keys[i]` with `values[i]` into the hash map `fd`, whose key and value types are
/// `K` and `V`, with one `BPF_MAP_UPDATE_BATCH` call per 65536 entries. On failure returns
/// the error and the number of entries the kernel wrote before it.
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), (std::io::Error, usize)> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut written = 0;
    for (key_chunk, value_chunk) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: key_chunk.as_ptr() as u64,
            values: value_chunk.as_ptr() as u64,
            count: key_chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `batch` attribute. Its key and value pointers cover
        // `count` elements of `K` and `V`, `Pod` types of the map's key and value sizes, and
        // both slices outlive the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if result < 0 {
            // The kernel sets `count` to the entries it wrote before the failing one.
            return Err((
                std::io::Error::last_os_error(),
                written + attr.count as usize,
            ));
        }
        written += key_chunk.len();
    }
    Ok(())
}

/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd` in the kernel's `uapi/linux/bpf.h` (Linux 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Reads every entry of the hash map `fd` with batched lookups, 65536 entries per call. On
/// failure returns the error; EINVAL means the kernel has no batch operations for this map,
/// so the caller reads the entries one by one.
pub fn lookup_sessions(fd: BorrowedFd<'_>) -> std::io::Result<Vec<(SessionKey, SessionValue)>> {
    let mut entries = Vec::new();
    let mut keys = vec![SessionKey::default(); CHUNK];
    let mut values = vec![SessionValue::default(); CHUNK];
    // The kernel's hash map batch cursor is a u32 bucket index; a u64 leaves room for it.
    let mut cursor: u64 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &cursor as *const u64 as u64
            },
            out_batch: &mut cursor as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `batch` attribute. Its key and value buffers have room for
        // `count` elements of `SessionKey` and `SessionValue`, the `repr(C)` key and value
        // types of the session map, and the cursor and both buffers outlive the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        // ENOENT marks the end of the map; the entries of this last call are still copied.
        let end = result < 0;
        if end {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err);
            }
        }
        let copied = (attr.count as usize).min(CHUNK);
        entries.extend(
            keys[..copied]
                .iter()
                .copied()
                .zip(values[..copied].iter().copied()),
        );
        if end {
            return Ok(entries);
        }
        first = false;
    }
}

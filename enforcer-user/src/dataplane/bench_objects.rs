//! XDP objects that exist only for the benchmarks, embedded like the enforcer's own object.

use super::DataplaneError;

/// Name of the program in the floor object.
pub const FLOOR_PROGRAM: &str = "bench_floor";

/// An XDP program that passes every frame without reading it; empty when the eBPF build was
/// skipped.
static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-floor"));

/// Returns the floor object, or an error when the binary was built without it.
pub fn floor_object() -> Result<&'static [u8], DataplaneError> {
    if FLOOR_OBJECT.is_empty() {
        return Err(DataplaneError::MissingObject);
    }
    Ok(FLOOR_OBJECT)
}

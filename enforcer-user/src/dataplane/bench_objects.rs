//! XDP objects that exist only for the benchmarks, embedded like the enforcer's own object.
//! Each is empty when the eBPF build was skipped.

use super::DataplaneError;

/// Name of the program in the floor object.
pub const FLOOR_PROGRAM: &str = "bench_floor";

/// Name of the program in the clock object.
pub const CLOCK_PROGRAM: &str = "bench_clock";

/// Name of the program in the parse-only object.
pub const PARSE_PROGRAM: &str = "bench_parse";

/// An XDP program that passes every frame without reading it.
static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-floor"));

/// An XDP program that reads the boot clock once and passes the frame.
static CLOCK_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-clock"));

/// The enforcer's parser alone, without any map lookup.
static PARSE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-parse"));

/// Returns the floor object, or an error when the binary was built without it.
pub fn floor_object() -> Result<&'static [u8], DataplaneError> {
    non_empty(FLOOR_OBJECT)
}

/// Returns the clock object, or an error when the binary was built without it.
pub fn clock_object() -> Result<&'static [u8], DataplaneError> {
    non_empty(CLOCK_OBJECT)
}

/// Returns the parse-only object, or an error when the binary was built without it.
pub fn parse_object() -> Result<&'static [u8], DataplaneError> {
    non_empty(PARSE_OBJECT)
}

fn non_empty(object: &'static [u8]) -> Result<&'static [u8], DataplaneError> {
    if object.is_empty() {
        return Err(DataplaneError::MissingObject);
    }
    Ok(object)
}

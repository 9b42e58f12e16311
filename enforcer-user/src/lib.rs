//! enforcer: a gateway that requires periodic re-authentication per (device, resource),
//! enforced per packet by an XDP program.
//!
//! # Layout
//! - `dataplane`: loads, attaches and pins the XDP program and reads and writes its maps.
//!   It is the only module that touches the kernel.
pub mod dataplane;

//! Benchmark probe: an XDP program that reads `bpf_ktime_get_boot_ns()` once and passes the
//! frame. Its cost over the floor is the cost of the clock read the enforcer makes for every
//! packet that has a session.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_boot_ns,
    macros::xdp,
    programs::XdpContext,
};

#[xdp]
pub fn bench_clock(_ctx: XdpContext) -> u32 {
    // SAFETY: the helper takes no arguments and exists since Linux 5.8.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // Using the value keeps the read in the program; the boot clock is never zero.
    if now == 0 { XDP_DROP } else { XDP_PASS }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

//! Benchmark floor: an XDP program that passes every frame without reading it. Its cost under
//! `BPF_PROG_TEST_RUN` is the fixed cost of running any XDP program, which the benchmarks
//! subtract from every other variant.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bench_floor(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

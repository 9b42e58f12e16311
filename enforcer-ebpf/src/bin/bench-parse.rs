//! Benchmark probe: the enforcer's parser alone. It parses L2, the IP header and L4 exactly as
//! the enforcer does, touches no session map, and passes every frame that parses.
#![no_std]
#![no_main]

#[path = "../packet.rs"]
#[allow(dead_code, reason = "the probe uses only the parser's read helpers")]
mod packet;
#[path = "../parse.rs"]
#[allow(
    dead_code,
    reason = "the probe uses only the parser's two entry points"
)]
mod parse;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};

#[xdp]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    let network = match parse::network(&ctx, parse::Link::Ethernet) {
        Ok(Some(network)) => network,
        Ok(None) => return XDP_PASS,
        Err(parse::Malformed) => return XDP_DROP,
    };
    match parse::transport(&ctx, &network) {
        // The condition uses the addresses and the port, so the parser's reads stay in the
        // program; it is false for every frame the benchmarks send.
        Ok(packet) if packet.flow.dst_port == 0 && network.src == network.dst => XDP_DROP,
        Ok(_) => XDP_PASS,
        Err(parse::Malformed) => XDP_DROP,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

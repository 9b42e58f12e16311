//! Bounds-checked access to the packet, the only place that dereferences packet memory.

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};

/// One per-CPU word the parser stores offsets through; see `forget`.
#[map]
static PARSE_SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Largest offset the program reads or writes at. Bounding every variable offset lets the
/// verifier track packet pointers, and no XDP frame without multi-buffer is this long.
pub const MAX_OFFSET: usize = 0x3fff;

/// Returns whether the packet is at least `end` bytes long.
#[inline(always)]
pub fn fits(ctx: &XdpContext, end: usize) -> bool {
    if end > MAX_OFFSET {
        return false;
    }
    ctx.data() + end <= ctx.data_end()
}

/// Returns the packet length in bytes.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    if offset > MAX_OFFSET {
        return None;
    }
    // `black_box` keeps LLVM from dropping this check as implied by an earlier comparison
    // of lengths; the verifier tracks packet bounds only through pointer comparisons.
    let start = core::hint::black_box(ctx.data() + offset);
    if start + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(start as *mut T)
}

/// Reads a `T` at `offset`, or returns `None` when the packet is too short.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the packet contains a `T` at `offset`. The read is unaligned
    // because packet headers carry no alignment guarantee.
    ptr_at::<T>(ctx, offset).map(|ptr| unsafe { ptr.read_unaligned() })
}

/// Writes `value` at `offset`, or returns `None` when the packet is too short.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: as in `read`; the program owns the frame while it runs.
    unsafe { ptr.write_unaligned(value) };
    Some(())
}

/// Returns `offset` unchanged, as a value the verifier can no longer tell apart from any other
/// offset up to `MAX_OFFSET`.
///
/// The verifier keeps each offset's exact range, so every VLAN depth and every IPv6 extension
/// header chain becomes its own state, and the code after the parser is verified once per
/// state. The verifier does not track values in map memory, so a round trip through a per-CPU
/// word merges those states. Returns `None` only when the offset exceeds `MAX_OFFSET`.
#[inline(always)]
pub fn forget(offset: usize) -> Option<usize> {
    let slot = PARSE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the slot is this CPU's own word in a map that nothing else uses; volatile
    // accesses keep the compiler from forwarding the stored value.
    let forgotten = unsafe {
        core::ptr::write_volatile(slot, offset as u64);
        core::ptr::read_volatile(slot) as usize
    };
    if forgotten > MAX_OFFSET {
        return None;
    }
    Some(forgotten)
}

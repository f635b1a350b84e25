//! The decoder never allocates past the frame cap, whatever lengths a hostile peer announces.
//! A counting global allocator records, per thread (tests run in parallel), the peak in use.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ignite_protocol::*;
use proptest::prelude::*;

struct Counting;

thread_local! {
    // `const` initialisers: reading them never allocates, so the allocator may use them.
    static IN_USE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = IN_USE.get() + layout.size();
        IN_USE.set(now);
        PEAK.set(PEAK.get().max(now));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.set(IN_USE.get().saturating_sub(layout.size()));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Decodes `bytes` and returns the peak extra memory in use while doing it.
fn peak_while_decoding(bytes: &[u8]) -> usize {
    let base = IN_USE.get();
    PEAK.set(base);
    let _ = decode(bytes);
    let mut buf = Vec::new();
    let _ = read_frame(&mut &bytes[..], &mut buf);
    drop(buf);
    PEAK.get().saturating_sub(base)
}

/// What the decoder may hold for a frame of `len` bytes: the payload buffer and what is decoded
/// from it (at most a few times the input, since every decoded byte came from it), plus serde's
/// bounded pre-allocation for sequences.
fn budget(len: usize) -> usize {
    4 * len + (1 << 20) + 64 * 1024
}

#[test]
fn a_huge_announced_length_allocates_nothing() {
    let header = [b'I', b'G', 0xff, 0xff, 0xff, 0x7f];
    let peak = peak_while_decoding(&header);
    assert!(
        peak < 64 * 1024,
        "allocated {peak} bytes for a refused header"
    );
}

#[test]
fn huge_announced_field_lengths_do_not_allocate_them() {
    // A valid header around a payload whose varint lengths claim gigabytes.
    let mut payload = vec![1u8]; // Frame::Invoke
    payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // id
    payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // execution_id length: 4 GiB
    payload.extend_from_slice(b"abc");
    let mut bytes = b"IG".to_vec();
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let peak = peak_while_decoding(&bytes);
    assert!(
        peak <= budget(bytes.len()),
        "allocated {peak} bytes for {} input bytes",
        bytes.len()
    );
}

proptest! {
    #[test]
    fn arbitrary_payloads_stay_within_budget(payload in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut bytes = b"IG".to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let peak = peak_while_decoding(&bytes);
        prop_assert!(peak <= budget(bytes.len()), "allocated {} bytes for {} input bytes", peak, bytes.len());
    }
}

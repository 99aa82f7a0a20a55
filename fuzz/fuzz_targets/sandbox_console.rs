//! Fuzzes the host's reading of the L1 sandbox's console, which carries
//! whatever the guests inside print: line assembly with its length bound,
//! control-sequence stripping, the kept-text bounds, and the marker state
//! machine.
//!
//! Input: [cap: u16][console bytes...]; an exit marker line is appended.
//! Checks: no panic; kept texts stay within their cap (plus the one-line
//! note); when the input has no '@' at all (so it cannot hold or build a
//! marker), the appended exit marker is found with its status.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cap = usize::from(u16::from_le_bytes([
        data.first().copied().unwrap_or(0),
        data.get(1).copied().unwrap_or(0),
    ])) + 1;
    let body = data.get(2..).unwrap_or(&[]);
    let mut stream = body.to_vec();
    stream.extend_from_slice(b"\n@@sandbox-f-exit=7@@\n");
    let (status, all, output) = sandbox::fuzzing::console_stream(&stream, "f", cap);
    assert!(all <= cap + 128, "kept {all} bytes for a cap of {cap}");
    assert!(
        output <= cap + 128,
        "kept {output} bytes for a cap of {cap}"
    );
    if !body.contains(&b'@') {
        assert_eq!(status, Some(7));
    }
});

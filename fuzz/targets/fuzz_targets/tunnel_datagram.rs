#![no_main]
//! Arbitrary datagrams (and inner packets a real peer encrypted) into the tunnel core.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kokoa_fuzz::tunnel::Harness::new().run(data);
});

#![no_main]
//! Arbitrary SNI values against the edge's certificate store.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kokoa_fuzz::sni::run(data);
});

#![no_main]
//! Arbitrary Host values against a route table of exact, alias and wildcard routes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kokoa_fuzz::route::run(data);
});

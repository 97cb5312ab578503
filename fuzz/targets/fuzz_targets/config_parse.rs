#![no_main]
//! Arbitrary bytes as edge and origin TOML config: Ok or Err, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kokoa_fuzz::config::run(data);
});

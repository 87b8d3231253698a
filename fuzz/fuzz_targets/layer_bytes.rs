//! Arbitrary bytes as one layer (over a fixed base layer) into apply and
//! convert; see `overlayer_fuzz::targets::layer_bytes` for the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    overlayer_fuzz::jail::run(move |out| overlayer_fuzz::targets::layer_bytes(out, &data));
});

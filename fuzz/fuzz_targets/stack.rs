//! Structured stacks of layers, checked against the model (and apply against
//! convert); see `overlayer_fuzz::targets::stack` for the oracle.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlayer_fuzz::stack::StackInput;
use overlayer_fuzz::targets;

fuzz_target!(|input: StackInput| {
    let layers = input.to_layers();
    if layers.is_empty() {
        return;
    }
    // Probed once, by trial mounts, outside the jail.
    let kernel = targets::kernel_oracle();
    let xwhiteouts = input.xwhiteouts && targets::xwhiteouts_supported();
    overlayer_fuzz::jail::run(move |out| targets::stack(out, &layers, xwhiteouts, kernel));
});

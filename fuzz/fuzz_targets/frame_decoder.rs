//! Fuzz target for the frame decoder: see `check_frame_decoder_input` for
//! the input layout and the properties checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keygate_protocol_fuzz::check_frame_decoder_input(data);
});

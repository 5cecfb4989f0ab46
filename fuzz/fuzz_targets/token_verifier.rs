//! Fuzz target for token verification: see `check_token_input` for the input
//! layout and the properties checked.

#![no_main]

// `seeds()` in that file is used only by the auth crate's replay test.
#[allow(dead_code)]
#[path = "../src/token_checks.rs"]
mod token_checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    token_checks::check_token_input(data);
});

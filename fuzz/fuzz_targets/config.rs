//! The config loader on arbitrary text: it must report, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spark::fuzzing::config(data));

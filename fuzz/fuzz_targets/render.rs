//! A template rendered with hostile values (huge numbers for indent, slice,
//! batch, repetition; deep or long text) in every flavor: it returns within
//! its fuel, never aborts, hangs or makes gigabytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spark::fuzzing::render(data));

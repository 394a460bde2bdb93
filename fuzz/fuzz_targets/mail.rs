//! Record -> event -> template -> mail message on arbitrary input: failures
//! are failed deliveries, never panics; header lines stay within RFC 5322.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spark::fuzzing::mail(data));

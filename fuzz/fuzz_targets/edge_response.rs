#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| colo_fuzzcheck::edge_response(data));

//! The .npy reader on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hrnet::npy::tensor_from_bytes(data, std::path::Path::new("fuzz.npy"));
});

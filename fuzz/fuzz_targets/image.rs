//! The image decoders (JPEG through libjpeg-turbo; PNG, BMP, WebP and PNM through `image`)
//! on arbitrary bytes: no panic, and no allocation beyond what the bytes can hold (the size
//! checks run on the header, before decoding).
#![no_main]

mod limit;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hrnet::pose::io::decode_image(data, std::path::Path::new("fuzz.img"));
});

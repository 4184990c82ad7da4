//! The checkpoint loader on arbitrary bytes: parse, derive a configuration, check and fold.
#![no_main]

mod limit;

use hrnet::{Checkpoint, Model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ck) = Checkpoint::from_bytes(data)
        && let Ok(config) = ck.infer_config(None)
    {
        let _ = Model::from_checkpoint(&ck, &config);
    }
});

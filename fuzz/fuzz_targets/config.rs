//! Config parsing, validation and resolution on arbitrary text: every input
//! is a config or one error, never a panic. Read as if it were
//! config/lookout.toml, so the seeds' relative paths reach the bundled
//! model and the resolution code runs too.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use lookout::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/lookout.toml");
    match Config::parse(text, &path) {
        Ok(cfg) => {
            let _ = cfg.to_toml();
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "a config error is one line: {e}"),
    }
});

//! The payloads lookout reads back: results stored in the outbox are
//! re-parsed and marked `replayed` before they are sent again. Whatever is
//! stored, the marked payload is the same JSON object plus the flag, or
//! the payload unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::publish::mark_replayed;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let marked = mark_replayed(data);
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(mut original)) => {
            let Ok(Value::Object(got)) = serde_json::from_slice::<Value>(&marked) else {
                panic!("marked payload is not an object");
            };
            original.insert("replayed".into(), Value::Bool(true));
            assert_eq!(got, original);
        }
        _ => assert_eq!(marked, data),
    }
});

//! MQTT command payloads: every input is a checked request or one error
//! line, never a panic; a request that parses keeps its fields in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::command::{Action, Request, INTERVAL_RANGE};

fuzz_target!(|data: &[u8]| {
    match Request::parse(data) {
        Ok(req) => {
            if let Action::Set { interval, threshold, teach_class } = req.action {
                assert!(interval.is_some() || threshold.is_some() || teach_class.is_some());
                assert!(teach_class.is_none_or(|c| lookout::custom::check_class_name(&c).is_ok()));
                assert!(interval.is_none_or(|i| (INTERVAL_RANGE.0..=INTERVAL_RANGE.1).contains(&i)));
                assert!(threshold.is_none_or(|t| (0.0..=1.0).contains(&t)));
            }
            assert!(req.view.is_none_or(|v| lookout::command::valid_name(&v)));
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "a command error is one line: {e}"),
    }
});

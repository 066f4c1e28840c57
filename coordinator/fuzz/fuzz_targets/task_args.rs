//! Any JSON (or not) as the arguments of any documented task, checked as the coordinator checks
//! them before routing: never a panic, and what passes is an object a provider can decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tasks: Vec<_> = cerana_protocol::tasks::catalog().collect();
    let Some((&pick, rest)) = data.split_first() else { return };
    let info = tasks[pick as usize % tasks.len()];
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if (info.check_args)(text).is_ok() {
        // Accepted arguments are JSON a second check accepts too (what the SDK does again).
        let value: serde_json::Value = serde_json::from_str(text).expect("accepted arguments are JSON");
        assert!((info.check_args)(&value.to_string()).is_ok(), "{}: {text}", info.name);
    }
});

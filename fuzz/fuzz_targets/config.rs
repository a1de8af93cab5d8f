//! The config loader on arbitrary text: an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = observers_core::config::load_str("fuzz.toml", &text, &|var| {
        (var.len() % 2 == 0).then(|| var.to_owned())
    });
});

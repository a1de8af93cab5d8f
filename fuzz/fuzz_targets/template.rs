//! Templates: `source NUL row-json`; compile, then render against an event with that row.
#![no_main]
use libfuzzer_sys::fuzz_target;
use observers_core::template::{Template, TemplateContext};
use observers_core::{EntityEvent, EventKind};

fuzz_target!(|data: &[u8]| {
    let (source, row) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let source = String::from_utf8_lossy(source);
    let Ok(template) = Template::compile(&source) else {
        return;
    };
    let row = serde_json::from_slice::<serde_json::Value>(row).ok();
    let event = EntityEvent::new(
        7,
        "order".to_owned(),
        "42".to_owned(),
        EventKind::Insert,
        None,
        row,
    );
    let _ = template.render(&TemplateContext::new(&event, "fuzz"));
});

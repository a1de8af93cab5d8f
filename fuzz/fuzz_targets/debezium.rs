//! Debezium ingest bodies: parsed or refused with an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use observers_core::debezium::{DebeziumMapping, parse};

fuzz_target!(|data: &[u8]| {
    let mut mapping = DebeziumMapping::default();
    mapping.tenant_column = Some("tenant".into());
    mapping
        .id_columns
        .insert("orders".into(), "order_id".into());
    let _ = parse(data, &mapping);
});

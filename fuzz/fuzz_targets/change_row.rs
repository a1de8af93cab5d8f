//! Change-log row decoding from text columns: 16 bytes of id/txid, then NUL-separated
//! columns (operation, entity_type, entity_id, tenant_id, user_id, before, after); an empty
//! column is NULL. Always an event or a poison item, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use observers_postgres::change_row::{TextColumns, decode_text};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let id = i64::from_le_bytes(data[..8].try_into().unwrap_or_default());
    let txid = i64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
    let mut parts = data[16..]
        .split(|&b| b == 0)
        .map(|p| (!p.is_empty()).then(|| String::from_utf8_lossy(p).into_owned()));
    let mut next = || parts.next().flatten();
    let columns = TextColumns {
        operation: next(),
        entity_type: next(),
        entity_id: next(),
        tenant_id: next(),
        user_id: next(),
        before: next(),
        after: next(),
        created_at: None,
    };
    let _ = decode_text(id, txid, columns, Vec::new());
});

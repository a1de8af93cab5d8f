//! The WAL source's `pgoutput` decoder on arbitrary bytes (what a replication connection could
//! deliver): a message or an error that says where, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use observers_postgres::wal::pgoutput::decode;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
});

//! Integration tests of the ops server against a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod console;
mod server;

//! A decoder of the row messages of PostgreSQL's built-in `pgoutput` plugin, protocol version 1
//! (the documented "Logical Replication Message Formats"): `Relation`, `Insert`, `Update`,
//! `Delete` and `Truncate`. `Begin`, `Commit` and logical messages are framed by the replication
//! client; `Type` and `Origin` carry nothing a change needs and decode to [`Message::Other`].
//!
//! Values arrive in PostgreSQL's text output format (the stream is started without `binary`),
//! which the relay turns into the same JSON as the trigger's `to_jsonb` (see `render`, and the
//! server's conversion for the other types).

use std::fmt;

/// What went wrong, with where: a malformed message is a protocol error, never a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pgoutput: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the key).
    pub key: bool,
}

/// The shape of a table as the stream describes it, sent before its first change and after
/// each change of its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the update did not change: not sent (the old tuple has it under
    /// `REPLICA IDENTITY FULL`).
    Unchanged,
    Text(String),
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    Update {
        relation: u32,
        /// The old row: whole under `REPLICA IDENTITY FULL`, its key columns when the key changed.
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Vec<Value>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// `Begin`, `Commit`, `Type`, `Origin`, logical messages: not row changes.
    Other(u8),
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn error(&self, message: impl fmt::Display) -> DecodeError {
        DecodeError(format!("{} message: {message}", self.what))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(self.error(format_args!(
                "truncated (wanted {n} more bytes, {} left)",
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error("a string has no terminating NUL"))?;
        let s = std::str::from_utf8(&self.bytes[..end])
            .map_err(|e| self.error(format_args!("a name is not UTF-8: {e}")))?
            .to_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.u16()?;
        let mut values = Vec::with_capacity(usize::from(n));
        for i in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()?;
                    let len = usize::try_from(len).map_err(|_| self.error("length overflow"))?;
                    let bytes = self.take(len)?;
                    // The server encodes to the database's encoding; the replication connection
                    // asks for UTF-8 (client_encoding), so anything else is a protocol error.
                    Value::Text(
                        String::from_utf8(bytes.to_vec()).map_err(|e| {
                            self.error(format_args!("column {i} is not UTF-8: {e}"))
                        })?,
                    )
                }
                b'b' => {
                    return Err(self.error(format_args!(
                        "column {i} is in binary format (the stream must be started without \
                         `binary`)"
                    )));
                }
                other => {
                    return Err(self.error(format_args!(
                        "column {i} has an unknown kind {:?}",
                        char::from(other)
                    )));
                }
            });
        }
        Ok(values)
    }

    fn done(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.error(format_args!("{} trailing bytes", self.bytes.len())))
        }
    }
}

/// Decodes one `XLogData` payload.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let Some((&tag, rest)) = bytes.split_first() else {
        return Err(DecodeError("empty message".to_owned()));
    };
    let what = match tag {
        b'R' => "Relation",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        other => return Ok(Message::Other(other)),
    };
    let mut r = Reader { bytes: rest, what };
    let message = match tag {
        b'R' => {
            let id = r.u32()?;
            let schema = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.string()?;
                let type_oid = r.u32()?;
                let _typmod = r.u32()?;
                columns.push(Column {
                    name,
                    type_oid,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation {
                id,
                // An empty namespace means pg_catalog (the documented convention).
                schema: if schema.is_empty() {
                    "pg_catalog".to_owned()
                } else {
                    schema
                },
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => {}
                other => return Err(r.error(format_args!("expected 'N', got {other:#04x}"))),
            }
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut marker = r.u8()?;
            if marker == b'K' || marker == b'O' {
                old = Some(r.tuple()?);
                marker = r.u8()?;
            }
            if marker != b'N' {
                return Err(r.error(format_args!("expected 'N', got {marker:#04x}")));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => {}
                other => {
                    return Err(r.error(format_args!("expected 'K' or 'O', got {other:#04x}")));
                }
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        _ => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let mut relations = Vec::new();
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { relations }
        }
    };
    r.done()?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, values: &[Option<&str>]) {
        out.extend_from_slice(&u16::try_from(values.len()).unwrap().to_be_bytes());
        for v in values {
            match v {
                None => out.push(b'n'),
                Some("\u{0}unchanged") => out.push(b'u'),
                Some(text) => {
                    out.push(b't');
                    out.extend_from_slice(&u32::try_from(text.len()).unwrap().to_be_bytes());
                    out.extend_from_slice(text.as_bytes());
                }
            }
        }
    }

    #[test]
    fn relation_message() {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16_385u32.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, "orders");
        m.push(b'f');
        m.extend_from_slice(&2u16.to_be_bytes());
        m.push(1);
        cstr(&mut m, "id");
        m.extend_from_slice(&20u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m.push(0);
        cstr(&mut m, "total");
        m.extend_from_slice(&1700u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation(rel) = decode(&m).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(rel.id, 16_385);
        assert_eq!(
            (rel.schema.as_str(), rel.name.as_str()),
            ("public", "orders")
        );
        assert_eq!(rel.replica_identity, b'f');
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[1].type_oid, 1700);
    }

    #[test]
    fn update_with_old_row_null_and_unchanged_values() {
        let mut m = vec![b'U'];
        m.extend_from_slice(&7u32.to_be_bytes());
        m.push(b'O');
        tuple(&mut m, &[Some("1"), Some("big"), None]);
        m.push(b'N');
        tuple(
            &mut m,
            &[Some("1"), Some("\u{0}unchanged"), Some("x\u{1F600}")],
        );
        assert_eq!(
            decode(&m).unwrap(),
            Message::Update {
                relation: 7,
                old: Some(vec![
                    Value::Text("1".into()),
                    Value::Text("big".into()),
                    Value::Null
                ]),
                new: vec![
                    Value::Text("1".into()),
                    Value::Unchanged,
                    Value::Text("x\u{1F600}".into())
                ],
            }
        );
    }

    #[test]
    fn insert_delete_and_truncate() {
        let mut m = vec![b'I'];
        m.extend_from_slice(&9u32.to_be_bytes());
        m.push(b'N');
        tuple(&mut m, &[Some("")]);
        assert_eq!(
            decode(&m).unwrap(),
            Message::Insert {
                relation: 9,
                new: vec![Value::Text(String::new())]
            }
        );
        let mut m = vec![b'D'];
        m.extend_from_slice(&9u32.to_be_bytes());
        m.push(b'K');
        tuple(&mut m, &[Some("3")]);
        assert!(matches!(
            decode(&m).unwrap(),
            Message::Delete { relation: 9, .. }
        ));
        let mut m = vec![b'T'];
        m.extend_from_slice(&2u32.to_be_bytes());
        m.push(0);
        m.extend_from_slice(&9u32.to_be_bytes());
        m.extend_from_slice(&10u32.to_be_bytes());
        assert_eq!(
            decode(&m).unwrap(),
            Message::Truncate {
                relations: vec![9, 10]
            }
        );
        assert_eq!(decode(b"Yxx").unwrap(), Message::Other(b'Y'));
    }

    #[test]
    fn malformed_messages_are_errors_that_say_where() {
        let mut m = vec![b'I'];
        m.extend_from_slice(&9u32.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&1u16.to_be_bytes());
        m.push(b't');
        m.extend_from_slice(&100u32.to_be_bytes());
        m.extend_from_slice(b"short");
        let e = decode(&m).unwrap_err().to_string();
        assert!(
            e.contains("Insert message") && e.contains("truncated"),
            "{e}"
        );
        let e = decode(&[b'R', 0, 0]).unwrap_err().to_string();
        assert!(e.contains("Relation message"), "{e}");
        assert!(decode(&[]).is_err());
        let mut m = vec![b'D'];
        m.extend_from_slice(&9u32.to_be_bytes());
        m.push(b'N');
        assert!(
            decode(&m)
                .unwrap_err()
                .to_string()
                .contains("expected 'K' or 'O'")
        );
        // Every prefix of a valid message is an error, never a panic.
        let mut full = vec![b'U'];
        full.extend_from_slice(&7u32.to_be_bytes());
        full.push(b'O');
        tuple(&mut full, &[Some("1"), None]);
        full.push(b'N');
        tuple(&mut full, &[Some("1"), Some("\u{0}unchanged")]);
        for end in 1..full.len() {
            assert!(decode(&full[..end]).is_err(), "prefix of {end} bytes");
        }
        assert!(decode(&full).is_ok());
    }
}

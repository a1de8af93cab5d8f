//! Turning byte offsets in a TOML document into line, column and a readable key path.

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The dotted key at an offset: the enclosing `[table]` header plus the key assigned on that
/// line, e.g. `observers.actions.type`.
pub fn key_at(source: &str, offset: usize) -> Option<String> {
    let offset = offset.min(source.len());
    let before = source.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[line_start..]
        .find('\n')
        .map_or(source.len(), |i| line_start + i);
    let line = source[line_start..line_end].trim();
    if let Some(header) = header_name(line) {
        return Some(header.to_owned());
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.contains(' '));
    let table = source[..line_start]
        .lines()
        .rev()
        .find_map(|l| header_name(l.trim()));
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t.to_owned()),
        (None, None) => None,
    }
}

fn header_name(line: &str) -> Option<&str> {
    let inner = line
        .strip_prefix("[[")
        .and_then(|l| l.split_once("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.split_once(']')))?
        .0
        .trim();
    (!inner.is_empty()).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 11), (2, 6));
        assert_eq!(line_col(src, 999), (3, 1));
    }

    #[test]
    fn keys_include_their_table() {
        let src = "[source]\nbatch_size = 'x'\n\n[[observers]]\nname = \"a\"\n  [[observers.actions]]\n  type = \"nope\"\n";
        assert_eq!(
            key_at(src, src.find("'x'").unwrap()).as_deref(),
            Some("source.batch_size")
        );
        assert_eq!(
            key_at(src, src.find("\"nope\"").unwrap()).as_deref(),
            Some("observers.actions.type")
        );
        assert_eq!(
            key_at(src, src.find("[[observers]]").unwrap()).as_deref(),
            Some("observers")
        );
        assert_eq!(key_at("x = 1", 4).as_deref(), Some("x"));
    }
}

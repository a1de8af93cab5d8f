//! `${VAR}` and `${VAR:-default}` expansion of config text before TOML parsing.
//!
//! Values are escaped for TOML basic (double-quoted) strings, so a secret with a quote or a
//! backslash cannot break the document. `$${` gives a literal `${`. Full-line comments are
//! left alone, so a commented-out line never demands a variable.

/// The expanded text.
#[derive(Debug)]
pub struct Expanded {
    pub text: String,
}

/// A `${VAR}` with no value and no default.
#[derive(Debug, PartialEq, Eq)]
pub struct UnsetVariable {
    pub var: String,
    /// Byte offset of the `$` in the original text.
    pub offset: usize,
}

pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, UnsetVariable> {
    let mut out = String::with_capacity(text.len());
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') || !line.contains('$') {
            out.push_str(line);
        } else {
            expand_line(line, line_start, env, &mut out)?;
        }
        line_start += line.len();
    }
    Ok(Expanded { text: out })
}

fn expand_line(
    line: &str,
    line_start: usize,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), UnsetVariable> {
    let mut rest = line;
    let mut pos = line_start;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            pos += i + 3;
            continue;
        }
        if let Some(body) = after.strip_prefix("${")
            && let Some(end) = body.find('}')
        {
            let inner = &body[..end];
            let (var, default) = match inner.split_once(":-") {
                Some((v, d)) => (v.trim(), Some(d)),
                None => (inner.trim(), None),
            };
            let value = env(var)
                .filter(|v| !(default.is_some() && v.is_empty()))
                .or_else(|| default.map(str::to_owned))
                .ok_or_else(|| UnsetVariable {
                    var: var.to_owned(),
                    offset: pos + i,
                })?;
            escape_into(&value, out);
            rest = &body[end + 1..];
            pos += i + 2 + end + 1;
            continue;
        }
        out.push('$');
        rest = &after[1..];
        pos += i + 1;
    }
    out.push_str(rest);
    Ok(())
}

fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(var: &str) -> Option<String> {
        match var {
            "KEY" => Some("s3cr3t".into()),
            "QUOTED" => Some("a\"b\\c".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn check(input: &str, expected: Result<&str, (&str, usize)>) {
        let got = interpolate(input, &env)
            .map(|e| e.text)
            .map_err(|e| (e.var, e.offset));
        match expected {
            Ok(text) => assert_eq!(got, Ok(text.to_owned()), "input: {input}"),
            Err((var, offset)) => assert_eq!(got, Err((var.to_owned(), offset)), "input: {input}"),
        }
    }

    #[test]
    fn table() {
        check("a = \"${KEY}\"", Ok("a = \"s3cr3t\""));
        check("a = \"x${KEY}y${KEY}\"", Ok("a = \"xs3cr3tys3cr3t\""));
        check("a = \"${QUOTED}\"", Ok("a = \"a\\\"b\\\\c\""));
        check("a = \"${MISSING:-dflt}\"", Ok("a = \"dflt\""));
        check("a = \"${EMPTY:-dflt}\"", Ok("a = \"dflt\""));
        check("a = \"${EMPTY}\"", Ok("a = \"\""));
        check("a = \"$${KEY}\"", Ok("a = \"${KEY}\""));
        check("a = \"cost $5\"", Ok("a = \"cost $5\""));
        check(
            "# a = \"${MISSING}\"\nb = 1",
            Ok("# a = \"${MISSING}\"\nb = 1"),
        );
        check("x = 1\na = \"${MISSING}\"", Err(("MISSING", 11)));
        check("a = \"${ KEY }\"", Ok("a = \"s3cr3t\""));
    }
}

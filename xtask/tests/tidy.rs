//! Tidy: the workspace's structural rules, enforced under `cargo test` (layering, lints,
//! module docs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.push(root().join("xtask"));
    dirs.push(root().join("benches"));
    dirs.sort();
    dirs
}

/// Crates observers-core must never depend on, directly or transitively.
const FORBIDDEN_IN_CORE: [&str; 6] = [
    "sqlx",
    "redis",
    "elasticsearch",
    "deadpool",
    "deadpool-redis",
    "prometheus-client",
];

fn core_dependency_names() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "observers-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn core_depends_on_no_backend() {
    let deps = core_dependency_names();
    assert!(
        deps.iter().any(|d| d == "serde"),
        "cargo tree output looks wrong: {deps:?}"
    );
    for forbidden in FORBIDDEN_IN_CORE {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "observers-core must not depend on `{forbidden}` (docs/ARCHITECTURE.md); move the backend piece into its own crate"
        );
    }
    let manifest =
        std::fs::read_to_string(root().join("crates/observers-core/Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap_or("");
    assert!(
        !deps
            .lines()
            .any(|l| l.trim_start().starts_with("observers-")),
        "observers-core depends on no other observers crate"
    );
}

#[test]
fn every_crate_inherits_workspace_lints() {
    for dir in crates() {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{} must say `[lints] workspace = true`",
            dir.display()
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in crates() {
        for sub in ["src", "tests", "benches"] {
            if dir.join(sub).exists() {
                rust_files(&dir.join(sub), &mut files);
            }
        }
    }
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` line: {missing:?}"
    );
}

#[test]
fn library_crates_forbid_unsafe() {
    for dir in crates() {
        let lib = dir.join("src/lib.rs");
        if lib.exists() && dir.starts_with(root().join("crates")) {
            let text = std::fs::read_to_string(&lib).unwrap();
            let has_code = text
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"));
            assert!(
                !has_code || text.contains("#![forbid(unsafe_code)]"),
                "{} must say #![forbid(unsafe_code)]",
                lib.display()
            );
        }
    }
}

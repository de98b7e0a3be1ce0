//! The code's layers (README "Code layout"), checked: a module refers only to modules
//! of the layers below its own, so no two modules import each other. Read from the
//! source: every `crate::NAME` path is checked against this order (`super::` paths
//! stay inside their module).

use std::path::Path;

/// Lowest first. A module uses only modules of rows below its own: those of one row are
/// independent of each other.
const LAYERS: &[&[&str]] = &[
    &["config", "metrics", "otel", "telemetry", "trace"],
    &["upstream"],
    &["balance", "health"],
    &["proxy"],
    &["discovery"],
    &["state"],
    &["admin"],
    &["app"],
    &["cli", "demo", "fuzzing", "handover", "notify"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

/// The top-level module a file belongs to: `src/proxy/h1/mod.rs` → `proxy`.
fn module_of(path: &Path, src: &Path) -> Option<String> {
    let rel = path.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    for path in &all {
        let Some(module) = module_of(path, &src) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for part in code.split("crate::").skip(1) {
                let used: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used == module {
                    continue;
                }
                if let Some(theirs) = layer_of(&used)
                    && theirs >= own
                {
                    wrong.push(format!(
                        "{}:{}: {module} uses {used}, not a layer below it",
                        path.strip_prefix(&src).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

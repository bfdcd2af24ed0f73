//! The docs a user's clone has must not point outside it: every relative link
//! in README.md, docs/ and the chart's README resolves to a file of this
//! repository, and no doc refers to a path above the repository root.

use std::path::{Path, PathBuf};

fn docs(root: &Path) -> Vec<PathBuf> {
    let mut v = vec![
        root.join("README.md"),
        root.join("charts/cri-imaged/README.md"),
        root.join("BENCHMARKS.md"),
    ];
    if let Ok(rd) = std::fs::read_dir(root.join("docs")) {
        v.extend(
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "md")),
        );
    }
    v
}

/// `](target)` link targets of a markdown text.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(j) = rest.find(')') {
            out.push(rest[..j].trim().to_string());
        }
    }
    out
}

#[test]
fn doc_links_stay_inside_the_repository() {
    let root = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap();
    let mut bad = Vec::new();
    let mut checked = 0;
    for doc in docs(&root) {
        let text =
            std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
        for (n, line) in text.lines().enumerate() {
            if line.contains("../shared") || line.contains("CONTRACT.md") {
                bad.push(format!(
                    "{}:{}: refers outside the repository: {line}",
                    doc.display(),
                    n + 1
                ));
            }
        }
        for l in links(&text) {
            if l.starts_with("http://")
                || l.starts_with("https://")
                || l.starts_with('#')
                || l.starts_with("mailto:")
            {
                continue;
            }
            let path = l.split('#').next().unwrap_or("");
            let target = doc.parent().unwrap().join(path);
            checked += 1;
            match std::fs::canonicalize(&target) {
                Ok(t) if t.starts_with(&root) => {}
                Ok(t) => bad.push(format!(
                    "{}: link {l} leaves the repository ({})",
                    doc.display(),
                    t.display()
                )),
                Err(_) => bad.push(format!("{}: link {l} points at nothing", doc.display())),
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(
        checked > 0,
        "no relative links found: the scanner is broken"
    );
}

#[test]
fn the_scanner_sees_links() {
    assert_eq!(
        links("see [a](docs/x.md) and [b](../y.md#z)."),
        ["docs/x.md", "../y.md#z"]
    );
}

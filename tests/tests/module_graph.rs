//! The module graph of every crate has no circle: no module reaches itself
//! through the paths it uses (`use` items and paths in code, `crate::`,
//! `super::`, `self::` and a child module's name; test modules included).
//! A module is a file; an inline module (`mod tests { ... }`) counts as
//! part of its file. Read from the sources, no tool needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["overlay", "dataplane"]`, `[]` for the crate root) of
/// every file of one crate, and each file's text.
struct Crate {
    files: BTreeMap<Vec<String>, String>,
}

impl Crate {
    /// The crate rooted at `root` (`src/lib.rs` or `src/main.rs`): the
    /// files reached through `mod name;` declarations.
    fn load(root: &Path) -> Crate {
        let mut files = BTreeMap::new();
        let mut todo = vec![(Vec::<String>::new(), root.to_path_buf())];
        while let Some((path, file)) = todo.pop() {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let code = strip(&text);
            let dir = if path.is_empty() || file.file_name().is_some_and(|n| n == "mod.rs") {
                file.parent().unwrap().to_path_buf()
            } else {
                file.with_extension("")
            };
            for child in declared_files(&code) {
                let candidates = [
                    dir.join(format!("{child}.rs")),
                    dir.join(&child).join("mod.rs"),
                ];
                if let Some(found) = candidates.iter().find(|p| p.is_file()) {
                    let mut child_path = path.clone();
                    child_path.push(child);
                    todo.push((child_path, found.clone()));
                }
            }
            files.insert(path, code);
        }
        Crate { files }
    }

    /// The file module a path names from `at` (a file module plus the
    /// inline modules around the path), if it names one of this crate.
    fn resolve(&self, at: &[String], segments: &[String]) -> Option<Vec<String>> {
        let mut base: Vec<String>;
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base = Vec::new();
                rest = &rest[1..];
            }
            Some("self") => {
                base = at.to_vec();
                rest = &rest[1..];
            }
            Some("super") => {
                base = at.to_vec();
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            Some(first) => {
                // A child module of `at`, named without a prefix.
                let mut child = at.to_vec();
                child.push(first.to_string());
                if !self.is_module(&child) {
                    return None;
                }
                base = at.to_vec();
            }
            None => return None,
        }
        for segment in rest {
            let mut deeper = base.clone();
            deeper.push(segment.clone());
            if self.is_module(&deeper) {
                base = deeper;
            } else {
                break;
            }
        }
        Some(base)
    }

    /// A file module, or an inline module (which belongs to its file).
    fn is_module(&self, path: &[String]) -> bool {
        self.files.contains_key(path)
    }

    /// Every edge `file -> file` (self edges left out).
    fn edges(&self) -> BTreeSet<(Vec<String>, Vec<String>)> {
        let mut edges = BTreeSet::new();
        for (module, code) in &self.files {
            for (inline, segments) in paths(code) {
                let mut at = module.clone();
                at.extend(inline);
                let Some(mut target) = self.resolve(&at, &segments) else {
                    continue;
                };
                // A path into an inline module of a file lands on that file.
                while !self.files.contains_key(&target) {
                    target.pop();
                }
                if &target != module {
                    edges.insert((module.clone(), target));
                }
            }
        }
        edges
    }

    /// The circles: strongly connected sets of more than one module.
    fn circles(&self) -> Vec<Vec<String>> {
        let edges = self.edges();
        let nodes: Vec<&Vec<String>> = self.files.keys().collect();
        let index = |m: &Vec<String>| nodes.iter().position(|n| *n == m).unwrap();
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (a, b) in &edges {
            next[index(a)].push(index(b));
        }
        let reach = |from: usize| {
            let mut seen = BTreeSet::from([from]);
            let mut todo = vec![from];
            while let Some(n) = todo.pop() {
                for &m in &next[n] {
                    if seen.insert(m) {
                        todo.push(m);
                    }
                }
            }
            seen
        };
        let reachable: Vec<BTreeSet<usize>> = (0..nodes.len()).map(reach).collect();
        let mut circles: BTreeSet<Vec<String>> = BTreeSet::new();
        for a in 0..nodes.len() {
            let scc: Vec<String> = (0..nodes.len())
                .filter(|&b| reachable[a].contains(&b) && reachable[b].contains(&a))
                .map(|b| name(nodes[b]))
                .collect();
            if scc.len() > 1 {
                circles.insert(scc);
            }
        }
        circles.into_iter().collect()
    }
}

fn name(path: &[String]) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        path.join("::")
    }
}

/// The code without comments, string and character literals (so that
/// braces and paths inside them do not count).
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('{', '\n', '\''), not a lifetime.
            let close = if next == Some('\\') {
                (i + 3..(i + 12).min(chars.len())).find(|&j| chars[j] == '\'')
            } else {
                (chars.get(i + 2) == Some(&'\'')).then_some(i + 2)
            };
            match close {
                Some(j) => {
                    out.push_str("' '");
                    i = j + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// The files a module declares: `mod name;` (not inline `mod name {`).
fn declared_files(code: &str) -> Vec<String> {
    let words = tokens(code);
    let mut out = Vec::new();
    for w in words.windows(3) {
        if w[0] == "mod" && w[2] == ";" && is_ident(&w[1]) {
            out.push(w[1].clone());
        }
    }
    out
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::` and single punctuation, in order.
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else if !c.is_whitespace() {
            out.push(c.to_string());
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// Every path of the code with the inline modules it stands in: the
/// leaves of `use` trees, and paths in code that start with `crate`,
/// `super`, `self` or any identifier followed by `::`.
fn paths(code: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let t = tokens(code);
    let mut out = Vec::new();
    // The inline modules open at each point, and the brace depth each
    // one closes at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        let here: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
        match t[i].as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if t.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push((t[i + 1].clone(), depth));
                depth += 1;
                i += 3;
                continue;
            }
            "use" => {
                let end = (i..t.len()).find(|&j| t[j] == ";").unwrap_or(t.len());
                let mut leaves = Vec::new();
                use_tree(&t[i + 1..end], Vec::new(), &mut leaves);
                out.extend(leaves.into_iter().map(|p| (here.clone(), p)));
                i = end + 1;
                continue;
            }
            word if is_ident(word) && t.get(i + 1).map(String::as_str) == Some("::") => {
                let preceded_by_path = i > 0 && t[i - 1] == "::";
                if !preceded_by_path {
                    let mut path = vec![word.to_string()];
                    let mut j = i + 1;
                    while t.get(j).map(String::as_str) == Some("::")
                        && t.get(j + 1).is_some_and(|s| is_ident(s))
                    {
                        path.push(t[j + 1].clone());
                        j += 2;
                    }
                    out.push((here, path));
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The leaf paths of a `use` tree (`a::{b, c::{d, e}}`).
fn use_tree(t: &[String], prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut i = 0;
    while i < t.len() {
        match t[i].as_str() {
            "::" => i += 1,
            "{" => {
                // Split the group at top-level commas.
                let mut depth = 0;
                let mut start = i + 1;
                for j in i..t.len() {
                    match t[j].as_str() {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                use_tree(&t[start..j], path.clone(), out);
                                return;
                            }
                        }
                        "," if depth == 1 => {
                            use_tree(&t[start..j], path.clone(), out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            "as" | "*" => break,
            word if is_ident(word) => {
                path.push(word.to_string());
                i += 1;
            }
            _ => i += 1,
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_module_graph_of_every_crate_has_no_circle() {
    let root = workspace();
    let mut checked = 0;
    let mut found = Vec::new();
    for krate in [
        "common/src/lib.rs",
        "kernel/src/lib.rs",
        "cni-plugin/src/main.rs",
        "ipam/src/lib.rs",
        "node-agent/src/lib.rs",
        "ctl/src/main.rs",
        "tests/src/lib.rs",
    ] {
        let c = Crate::load(&root.join(krate));
        assert!(c.files.len() > 3, "{krate}: only {:?}", c.files.keys());
        checked += c.files.len();
        for circle in c.circles() {
            found.push(format!("{krate}: {}", circle.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module circles:\n{}", found.join("\n"));
    assert!(checked > 60, "only {checked} modules read");
}

#[test]
fn the_check_finds_circles_through_parents_children_and_use_groups() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "src/lib.rs",
        "mod a;\nmod b;\nmod store;\nmod clean;\n// crate::clean::x in a comment\n",
    );
    // a -> b through a use group, b -> a through a path in code.
    write("src/a.rs", "use crate::{b::{One, Two}, store::etcd};\n");
    write(
        "src/b.rs",
        "fn f() { let s = \"crate::clean\"; crate::a::g(); }\n",
    );
    // A parent using its child, the child using its parent.
    write(
        "src/store/mod.rs",
        "pub mod etcd;\npub use etcd::Store;\n#[cfg(test)]\nmod tests { use super::*; }\n",
    );
    write("src/store/etcd.rs", "use super::Trait;\n");
    // A test module's `super` is its own file: no circle.
    write(
        "src/clean.rs",
        "pub fn x() {}\n#[cfg(test)]\nmod tests { use super::x; }\n",
    );
    let c = Crate::load(&dir.path().join("src/lib.rs"));
    assert_eq!(c.files.len(), 6, "{:?}", c.files.keys());
    assert_eq!(
        c.circles(),
        vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["store".to_string(), "store::etcd".to_string()]
        ]
    );
}

//! Builds the table of Kubernetes protobuf messages — each message's fields with their numbers,
//! wire types and nested message names — by reading the prost-generated sources of the `k8s-pb`
//! crate (a dependency, so cargo has unpacked it). Nothing derived from it is committed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where cargo unpacked k8s-pb: `$CARGO_HOME/registry/src/*/k8s-pb-<version>`, or a vendor
/// directory named by STRAKE_K8S_PB_SRC.
fn k8s_pb_src() -> PathBuf {
    if let Some(p) = std::env::var_os("STRAKE_K8S_PB_SRC") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let h = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            h.join(".cargo")
        });
    let registry = home.join("registry/src");
    let mut found = Vec::new();
    if let Ok(indexes) = std::fs::read_dir(&registry) {
        for index in indexes.flatten() {
            let candidate = index.path().join("k8s-pb-0.9.0/src");
            if candidate.is_dir() {
                found.push(candidate);
            }
        }
    }
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "the sources of k8s-pb 0.9.0 are not under {}: fetch the crate (cargo fetch) or set STRAKE_K8S_PB_SRC to its src directory",
            registry.display()
        )
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read k8s-pb sources")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The schema name of a message: `io.k8s.` + its module path, with `_` written `-`.
fn schema_name(module: &[String], message: &str) -> String {
    let path: Vec<String> = module.iter().map(|m| m.replace('_', "-")).collect();
    format!("io.k8s.{}.{message}", path.join("."))
}

/// Resolves a Rust type path (`super::super::x::Y`, `Y`) against the file's module.
fn resolve(module: &[String], path: &str) -> String {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    let mut base: Vec<String> = module.to_vec();
    let mut rest = Vec::new();
    for p in &parts {
        if *p == "super" {
            base.pop();
        } else {
            rest.push(p.to_string());
        }
    }
    let name = rest.pop().unwrap_or_default();
    base.extend(rest);
    schema_name(&base, &name)
}

/// The innermost type of `Option<..>`, `Vec<..>`, `Box<..>`, or a map's value.
fn inner_type(ty: &str) -> String {
    let mut t = ty.replace(char::is_whitespace, "");
    loop {
        let stripped = [
            "::core::option::Option<",
            "::prost::alloc::vec::Vec<",
            "::prost::alloc::boxed::Box<",
            "Option<",
            "Vec<",
            "Box<",
        ]
        .iter()
        .find_map(|p| {
            t.strip_prefix(p)
                .and_then(|r| r.strip_suffix('>'))
                .map(str::to_string)
        });
        match stripped {
            Some(s) => t = s,
            None => break,
        }
    }
    if let Some(m) = t
        .strip_prefix("::prost::alloc::collections::BTreeMap<")
        .and_then(|r| r.strip_suffix('>'))
    {
        // BTreeMap<String, V>: the value type follows the first top-level comma.
        let mut depth = 0;
        for (i, ch) in m.char_indices() {
            match ch {
                '<' => depth += 1,
                '>' => depth -= 1,
                ',' if depth == 0 => return m[i + 1..].trim_end_matches(',').to_string(),
                _ => {}
            }
        }
    }
    t
}

fn main() {
    let src = k8s_pb_src();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=STRAKE_K8S_PB_SRC");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out = String::from(
        "/// Every message: its schema name and fields (number, Rust name, type, repeated).\npub static MESSAGES: &[(&str, &[FieldEntry])] = &[\n",
    );
    let mut count = 0;
    for file in files {
        let rel = file.strip_prefix(&src).expect("file under src");
        let mut module: Vec<String> = rel
            .parent()
            .map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if rel.file_stem().is_some_and(|s| s != "mod" && s != "lib") {
            module.push(
                rel.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        let text = std::fs::read_to_string(&file).expect("read k8s-pb source");
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        let mut current: Option<(String, Vec<String>)> = None;
        while i < lines.len() {
            let line = lines[i].trim();
            if let Some(rest) = line.strip_prefix("pub struct ") {
                let name = rest.trim_end_matches('{').trim().to_string();
                current = Some((schema_name(&module, &name), Vec::new()));
            } else if line == "}" {
                if let Some((name, fields)) = current.take() {
                    let _ = writeln!(out, "    ({name:?}, &[{}]),", fields.join(", "));
                    count += 1;
                }
            } else if let (Some(attr), Some((_, fields))) = (
                line.strip_prefix("#[prost(")
                    .and_then(|a| a.strip_suffix(")]")),
                current.as_mut(),
            ) {
                // The field: `pub name: Type,` possibly over several lines.
                let mut decl = String::new();
                let mut j = i + 1;
                while j < lines.len() {
                    let l = lines[j].trim();
                    if !l.starts_with("///") && !l.starts_with("#[") {
                        decl.push_str(l);
                        let open = decl.matches('<').count();
                        let close = decl.matches('>').count();
                        if decl.ends_with(',') && open == close {
                            break;
                        }
                    }
                    j += 1;
                }
                i = j;
                let decl = decl.trim_end_matches(',');
                let Some((fname, ty)) = decl.strip_prefix("pub ").and_then(|d| d.split_once(':'))
                else {
                    continue;
                };
                let fname = fname.trim().trim_start_matches("r#");
                let tag: u32 = attr
                    .split("tag = \"")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                    .and_then(|t| t.parse().ok())
                    .expect("prost tag");
                let repeated = attr.contains("repeated");
                let kind = attr.split(',').next().unwrap_or("").trim();
                let ft = if let Some(map) = attr
                    .strip_prefix("btree_map = \"")
                    .or_else(|| attr.strip_prefix("map = \""))
                {
                    let value = map
                        .split('"')
                        .next()
                        .unwrap_or("")
                        .split(", ")
                        .nth(1)
                        .unwrap_or("string");
                    match value {
                        "string" => "FieldType::MapString".to_string(),
                        "bytes" => "FieldType::MapBytes".to_string(),
                        _ => format!(
                            "FieldType::MapMessage({:?})",
                            resolve(&module, &inner_type(ty))
                        ),
                    }
                } else {
                    match kind {
                        "string" => "FieldType::String".into(),
                        "bool" => "FieldType::Bool".into(),
                        "int32" => "FieldType::Int32".into(),
                        "int64" => "FieldType::Int64".into(),
                        "double" => "FieldType::Double".into(),
                        k if k.starts_with("bytes") => "FieldType::Bytes".into(),
                        "message" => format!(
                            "FieldType::Message({:?})",
                            resolve(&module, &inner_type(ty))
                        ),
                        other => panic!(
                            "k8s-pb field {fname} has a type this table does not know: {other}"
                        ),
                    }
                };
                fields.push(format!("({tag}, {fname:?}, {ft}, {repeated})"));
            }
            i += 1;
        }
    }
    out.push_str("];\n");
    assert!(
        count > 500,
        "only {count} messages found in {}",
        src.display()
    );
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("messages.rs");
    std::fs::write(dest, out).expect("write the message table");
}

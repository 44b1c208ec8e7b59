//! Text output for people.

use rayfine::protocol::MethodInfo;

use super::records::Record;

/// One line per method: signature, then the first line of its doc.
pub fn methods(methods: &[MethodInfo]) {
    let width = methods.iter().map(|m| m.name.len() + m.signature.len()).max().unwrap_or(0);
    for m in methods {
        let head = format!("{}{}", m.name, m.signature);
        let flavour = if m.is_async { "async " } else { "" };
        let doc = m.doc.lines().next().unwrap_or_default();
        println!("  {flavour:6}{head:width$}  {doc}");
    }
}

/// The kept environments.
pub fn ps(records: &[Record], json: bool) {
    if json {
        let rows: Vec<_> = records
            .iter()
            .map(|r| serde_json::json!({"id": r.id, "name": r.name, "url": r.url, "pid": r.pid, "source": r.source}))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    if records.is_empty() {
        eprintln!("no kept environments are running");
        return;
    }
    println!("{:<28} {:<16} {:<8} {:<24} SOURCE", "ID", "NAME", "PID", "URL");
    for r in records {
        println!("{:<28} {:<16} {:<8} {:<24} {}", r.id, r.name, r.pid, r.url, r.source);
    }
}

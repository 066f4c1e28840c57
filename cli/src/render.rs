//! Printing results for people (`-o table`) or programs (`-o json`).

use serde_json::Value;
use std::fmt::Write;

/// Renders any JSON value as text a person can scan: objects as `key  value` lines with dotted
/// keys, and arrays of objects (also the one array inside a wrapper like `{"entries": [...]}`)
/// as a table.
pub fn table(value: &Value) -> String {
    if let Some(rows) = as_rows(value) {
        return rows_table(rows);
    }
    let mut lines = Vec::new();
    flatten("", value, &mut lines);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in lines {
        let _ = writeln!(out, "{key:width$}  {value}");
    }
    out
}

fn as_rows(value: &Value) -> Option<&Vec<Value>> {
    match value {
        Value::Array(items) if items.iter().all(Value::is_object) => Some(items),
        Value::Object(map) if map.len() == 1 => as_rows(map.values().next()?),
        _ => None,
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            items.iter().map(scalar).collect::<Vec<_>>().join(",")
        }
        Value::Object(map) if map.contains_key("code") && map.contains_key("message") => {
            format!("{}: {}", scalar(&map["code"]), scalar(&map["message"]))
        }
        other => other.to_string(),
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&key, inner, out);
            }
        }
        other => out.push((if prefix.is_empty() { "value".to_owned() } else { prefix.to_owned() }, scalar(other))),
    }
}

fn rows_table(rows: &[Value]) -> String {
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        if let Value::Object(map) = row {
            for key in map.keys() {
                if !columns.contains(key) {
                    columns.push(key.clone());
                }
            }
        }
    }
    if columns.is_empty() {
        return "(none)\n".to_owned();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| row.get(c).map_or_else(|| "-".to_owned(), scalar)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.len()]).max().unwrap_or(0).min(60))
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, values: Vec<&str>| {
        let parts: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| {
                let v: String = v.chars().take(*w).collect();
                format!("{v:w$}")
            })
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut out, columns.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>().iter().map(String::as_str).collect());
    for row in &cells {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_print_as_dotted_key_values() {
        let text = table(&json!({"hostname": "n1", "cpu": {"count": 2, "model": "X"}, "tags": ["a", "b"]}));
        assert!(text.contains("hostname   n1"), "{text}");
        assert!(text.contains("cpu.count  2"), "{text}");
        assert!(text.contains("tags       a,b"), "{text}");
    }

    #[test]
    fn wrapped_arrays_print_as_tables() {
        let text = table(&json!({"entries": [
            {"id": "1", "task": "node-info", "state": "done"},
            {"id": "2", "task": "zfs-get", "state": "failed", "error": {"code": "not_found", "message": "gone"}}
        ]}));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["ID", "TASK", "STATE", "ERROR"]);
        assert!(lines[2].contains("not_found: gone"), "{text}");
        assert!(lines[1].ends_with("done    -"), "a missing cell is shown as -: {text}");
        assert_eq!(table(&json!({"providers": []})), "(none)\n");
    }
}

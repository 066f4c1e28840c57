//! Printing results for people (`-o table`) or programs (`-o json`).
//!
//! Results carry strings from anywhere (a peer's hostname, a file name, an error message), so
//! nothing reaches the terminal raw: [`escape`] is applied to every key, cell and message.

use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write;

/// Characters a terminal acts on or that reorder what is shown: C0 and C1 controls, DEL, and
/// the bidirectional formatting marks.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every terminal control character written as an escape (`\n`, `\x1b`, `\u{9b}`).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Pretty JSON with the controls JSON itself leaves raw (C1, bidirectional marks) as `\uXXXX`.
pub fn json(value: &Value) -> String {
    escape_json(serde_json::to_string_pretty(value).unwrap_or_default())
}

/// One-line JSON, escaped as [`json`] is.
pub fn json_line(value: &Value) -> String {
    escape_json(value.to_string())
}

fn escape_json(text: String) -> String {
    if !text.chars().any(is_unsafe_in_json) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe_in_json(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// serde_json escapes C0 controls in strings; the newlines between lines are its own.
fn is_unsafe_in_json(c: char) -> bool {
    is_unsafe(c) && (c as u32) >= 0x7f
}

/// Renders any JSON value as text a person can scan: objects as `key  value` lines with dotted
/// keys, and arrays of objects (also the one array inside a wrapper like `{"entries": [...]}`)
/// as a table.
pub fn table(value: &Value) -> String {
    if let Some(rows) = as_rows(value) {
        return rows_table(rows);
    }
    let mut lines = Vec::new();
    let mut blocks = Vec::new();
    flatten("", value, &mut lines, &mut blocks);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in lines {
        let _ = writeln!(out, "{key:width$}  {value}");
    }
    // Lists of lines (logs) and of records, under their key, after the single values.
    for (key, block) in blocks {
        let _ = writeln!(out, "{key}:");
        for line in block.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// A list too long or too wordy for one cell, as its own block: one line per entry, or a table
/// of records; None: it fits a cell.
fn as_block(value: &Value) -> Option<String> {
    let Value::Array(items) = value else { return None };
    if !items.is_empty() && items.iter().all(Value::is_object) {
        return Some(rows_table(items));
    }
    let texts: Vec<&str> = items.iter().map(Value::as_str).collect::<Option<_>>()?;
    let wordy =
        texts.iter().any(|t| t.contains(char::is_whitespace)) || texts.iter().map(|t| t.len() + 1).sum::<usize>() > 60;
    (wordy && !texts.is_empty()).then(|| texts.iter().map(|t| format!("{}\n", escape(t))).collect())
}

fn as_rows(value: &Value) -> Option<&Vec<Value>> {
    match value {
        Value::Array(items) if items.iter().all(Value::is_object) => Some(items),
        Value::Object(map) if map.len() == 1 => as_rows(map.values().next()?),
        _ => None,
    }
}

/// A value as one line of text, escaped.
fn scalar(value: &Value) -> String {
    escape(&unescaped_scalar(value)).into_owned()
}

fn unescaped_scalar(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            items.iter().map(unescaped_scalar).collect::<Vec<_>>().join(",")
        }
        Value::Object(map) if map.contains_key("code") && map.contains_key("message") => {
            format!("{}: {}", unescaped_scalar(&map["code"]), unescaped_scalar(&map["message"]))
        }
        other => other.to_string(),
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>, blocks: &mut Vec<(String, String)>) {
    let key = if prefix.is_empty() { "value".to_owned() } else { prefix.to_owned() };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let key = escape(key);
                let key = if prefix.is_empty() { key.into_owned() } else { format!("{prefix}.{key}") };
                flatten(&key, inner, out, blocks);
            }
        }
        other => match as_block(other) {
            Some(block) => blocks.push((key, block)),
            None => out.push((key, scalar(other))),
        },
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
    let headers: Vec<String> = columns.iter().map(|c| escape(&c.to_uppercase()).into_owned()).collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| cells.iter().map(|r| r[i].chars().count()).chain([h.chars().count()]).max().unwrap_or(0).min(60))
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
    line(&mut out, headers.iter().map(String::as_str).collect());
    for row in &cells {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

/// `cerana get bundles`: each bundle's running against desired replicas, where, and why any
/// are missing (from `ticks-plan`); `wide` adds its subnet and each replica's addresses.
pub fn bundle_rows(plan: &Value, wide: bool) -> Vec<Value> {
    let bundles = plan["bundles"].as_array().map(Vec::as_slice).unwrap_or_default();
    bundles
        .iter()
        .map(|b| {
            let on = b["running_on"].as_object();
            let running = on.map_or(0, |m| m.len());
            let nodes: Vec<String> = on
                .into_iter()
                .flatten()
                .map(|(node, healthy)| if healthy == true { node.clone() } else { format!("{node}(unhealthy)") })
                .collect();
            let mut row = serde_json::json!({
                "bundle": b["id"],
                "replicas": format!("{running}/{}", b["redundancy"]),
                "nodes": nodes.join(","),
                "unplaced": b.get("unplaced").cloned().unwrap_or(Value::Null),
            });
            if wide {
                let replicas = b["addresses"].as_object().into_iter().flatten().map(|(node, services)| {
                    let each = services.as_object().into_iter().flatten();
                    let each: Vec<String> = each.map(|(s, ip)| format!("{s}={}", ip.as_str().unwrap_or("?"))).collect();
                    format!("{node}: {}", each.join(" "))
                });
                row["subnet"] = b.get("subnet").cloned().unwrap_or(Value::Null);
                row["addresses"] = Value::from(replicas.collect::<Vec<_>>().join("; "));
            }
            row
        })
        .collect()
}

/// `cerana describe bundle`: its network — subnet, each replica's addresses, its firewall (each
/// port: who may connect, published where) and its peers (the bundles it may connect to, the
/// bundles that may connect to it) — from the bundle, its placement and every declared bundle.
pub fn bundle_network(bundle: &Value, placement: &Value, all: &[Value]) -> Value {
    let id = bundle["id"].as_str().unwrap_or_default();
    let ports = bundle["ports"].as_object().into_iter().flatten();
    let firewall: Vec<Value> = ports
        .map(|(port, spec)| {
            let public = spec["public"] == true;
            serde_json::json!({
                "port": port,
                "from": spec["connected_bundles"].clone(),
                "public": public,
                "published_as": if public { spec.get("external_port").cloned().unwrap_or_else(|| Value::from(port.clone())) } else { Value::Null },
            })
        })
        .collect();
    let names = |b: &Value| -> Vec<String> {
        let ports = b["ports"].as_object().into_iter().flatten();
        ports
            .flat_map(|(_, p)| p["connected_bundles"].as_array().cloned().unwrap_or_default())
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let mut reaches: Vec<String> = all
        .iter()
        .filter(|b| names(b).iter().any(|n| n == id))
        .filter_map(|b| b["id"].as_str().map(String::from))
        .collect();
    reaches.sort();
    reaches.dedup();
    let mut reached_by = names(bundle);
    reached_by.sort();
    reached_by.dedup();
    serde_json::json!({
        "subnet": placement.get("subnet").cloned().unwrap_or(Value::Null),
        "addresses": placement.get("addresses").cloned().unwrap_or(Value::Null),
        "firewall": firewall,
        "reaches": reaches,
        "reached_by": reached_by,
    })
}

/// `cerana get nodes`: each node's heartbeat age, load and free memory and disk.
pub fn node_rows(nodes: &Value, now_ms: u64) -> Vec<Value> {
    let gib = |bytes: &Value| bytes.as_u64().map(|b| format!("{:.1}", b as f64 / (1u64 << 30) as f64));
    nodes["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let age = n["heartbeat_ms"].as_u64().map(|at| format!("{:.1}", now_ms.saturating_sub(at) as f64 / 1000.0));
            serde_json::json!({
                "node": n["id"],
                "heartbeat_age_s": age,
                "load": n["cpu_load"],
                "cpus": n["cpu_cores"],
                "memory_free_gib": gib(&n["memory_free"]),
                "disk_free_gib": gib(&n["disk_free"]),
                "api_url": n["api_url"],
            })
        })
        .collect()
}

/// `cerana node history`: a row per entry, each node's newest first.
pub fn history_rows(history: &Value, now_ms: u64) -> Vec<Value> {
    let Some(nodes) = history["nodes"].as_object() else { return Vec::new() };
    nodes
        .values()
        .flat_map(|entries| entries.as_array().map(Vec::as_slice).unwrap_or_default())
        .flat_map(|n| node_rows(&serde_json::json!({ "nodes": [n] }), now_ms))
        .map(|mut row| {
            if let Some(fields) = row.as_object_mut() {
                fields.remove("api_url");
                let age = fields.remove("heartbeat_age_s").unwrap_or_default();
                fields.insert("age_s".into(), age);
            }
            row
        })
        .collect()
}

/// `cerana plan`: one line per action, then what cannot be placed and why.
pub fn plan(plan: &Value) -> String {
    let mut out = String::new();
    let actions = plan["actions"].as_array().map(Vec::as_slice).unwrap_or_default();
    if actions.is_empty() {
        out.push_str("nothing to do\n");
    }
    for action in actions {
        let _ = writeln!(out, "{}", escape(action["text"].as_str().unwrap_or("?")));
    }
    for bundle in plan["bundles"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if let Some(why) = bundle["unplaced"].as_str() {
            let _ = writeln!(out, "! {}", escape(why));
        }
    }
    for problem in plan["problems"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let _ = writeln!(out, "! {}", escape(problem.as_str().unwrap_or("?")));
    }
    match plan["leader"].as_str() {
        Some(leader) => {
            let _ = writeln!(out, "(planned at revision {}; the ticks run on {})", plan["revision"], escape(leader));
        }
        None => {
            let _ = writeln!(out, "(planned at revision {}; no node runs the ticks yet)", plan["revision"]);
        }
    }
    out
}

/// Which run of a service `cerana logs` shows: the newest, or the one before it (`previous`);
/// None: no line to choose from.
pub fn log_runs(lines: &[Value], previous: bool) -> Option<u64> {
    let newest = lines.iter().filter_map(|l| l["run"].as_u64()).max()?;
    Some(if previous { newest.saturating_sub(1) } else { newest })
}

/// Log lines as `[node/service] line`, escaped (a service's output is not trusted).
pub fn log_lines(lines: &[Value]) -> String {
    let mut out = String::new();
    for l in lines {
        let _ = writeln!(
            out,
            "[{}/{}] {}",
            escape(l["node"].as_str().unwrap_or("?")),
            escape(l["service"].as_str().unwrap_or("?")),
            escape(l["line"].as_str().unwrap_or(""))
        );
    }
    out
}

/// `cerana history`: a row per task, newest first.
pub fn history_entry_rows(history: &Value) -> Vec<Value> {
    history["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let at = e["accepted_at_ms"].as_u64().unwrap_or(0);
            serde_json::json!({
                "at": format!("{}.{:03}", at / 1000, at % 1000),
                "node": e["node"],
                "task": e["task"],
                "state": e["state"],
                "caller": e["caller"],
                "ms": e["duration_us"].as_u64().map(|us| us / 1000),
                "error": e["error"],
            })
        })
        .collect()
}

/// `cerana inventory`: a row per node.
pub fn inventory_rows(inventory: &Value) -> Vec<Value> {
    let gib = |b: &Value| b.as_u64().map_or("-".to_string(), |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64));
    inventory["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let f = &n["facts"];
            let disks: Vec<String> = f["disks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| format!("{} {} {}", str_of(&d["name"]), gib(&d["size_bytes"]), str_of(&d["serial"])))
                .collect();
            let nics: Vec<String> = f["nics"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| format!("{} {}", str_of(&i["name"]), str_of(&i["mac"])))
                .collect();
            serde_json::json!({
                "node": n["node"],
                "cpu": if f.is_null() { Value::Null } else { format!("{} × {}", f["cpu"]["count"], str_of(&f["cpu"]["model"])).into() },
                "memory": gib(&f["memory"]["total_bytes"]),
                "disks": disks.join("; "),
                "nics": nics.join("; "),
                "firmware": f["firmware"]["kind"],
                "image": f["os"]["initrd_hash"].as_str().map_or_else(|| str_of(&f["os"]["version"]), |h| h.chars().take(19).collect()),
                "kernel": f["kernel_release"],
                "providers": n["providers"].as_object().map_or(0, |p| p.len()),
                "error": n["error"],
            })
        })
        .collect()
}

fn str_of(value: &Value) -> String {
    value.as_str().unwrap_or("-").to_string()
}

/// `cerana ticks history`: a line per run.
pub fn run_rows(history: &Value) -> Vec<Value> {
    history["runs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let actions = r["actions"].as_array().map(Vec::as_slice).unwrap_or_default();
            let failed = actions.iter().filter(|a| a["outcome"] != "ok").count();
            serde_json::json!({
                "started_ms": r["started_ms"],
                "leader": r["leader"],
                "term": r["term"],
                "revision": r["revision"],
                "ms": r["duration_ms"],
                "actions": actions.len(),
                "failed": failed,
                "first": actions.first().map(|a| format!("{} [{}]", a["action"].as_str().unwrap_or("?"), a["outcome"].as_str().unwrap_or("?"))),
            })
        })
        .collect()
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
    fn log_lines_and_nested_records_print_as_blocks_under_their_key() {
        let text = table(&json!({
            "service": "web", "dropped_lines": 0,
            "lines": ["2026-12-06 started", "2026-12-06 listening on :80"],
            "members": [{"name": "a", "voter": true}, {"name": "b", "voter": false}],
        }));
        assert_eq!(
            text,
            "service        web\ndropped_lines  0\nlines:\n  2026-12-06 started\n  2026-12-06 listening on :80\n\
             members:\n  NAME  VOTER\n  a     true\n  b     false\n"
        );
    }

    #[test]
    fn logs_show_the_newest_run_or_the_one_before_with_node_and_service() {
        let lines = [json!({"run": 0, "line": "a"}), json!({"run": 2, "line": "b"}), json!({"run": 1, "line": "c"})];
        assert_eq!(log_runs(&lines, false), Some(2));
        assert_eq!(log_runs(&lines, true), Some(1));
        assert_eq!(log_runs(&[], true), None);
        let shown = log_lines(&[json!({"node": "n1", "service": "web", "line": "up\u{1b}[2J"})]);
        assert_eq!(shown, "[n1/web] up\\x1b[2J\n");
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

    #[test]
    fn control_characters_are_escaped_everywhere() {
        let hostile = "a\u{1b}]0;t\u{7}\u{1b}[2J\u{9b}1m\u{202e}b\nc";
        let shown = r"a\x1b]0;t\x07\x1b[2J\u{9b}1m\u{202e}b\nc";
        assert_eq!(escape(hostile), shown);
        assert!(matches!(escape("plain ünïcode"), Cow::Borrowed(_)));
        for text in [
            table(&json!({ "hostname": hostile, hostile: 1, "list": [hostile] })),
            table(&json!({ "machines": [{ "hostname": hostile, hostile: hostile }] })),
            table(&json!({ "error": { "code": "failed", "message": hostile } })),
        ] {
            assert!(!text.chars().any(|c| is_unsafe(c) && c != '\n'), "{text:?}");
            assert!(text.contains(shown), "{text:?}");
        }
        let text = json(&json!({ "hostname": hostile }));
        assert!(!text.chars().any(|c| is_unsafe(c) && c != '\n'), "{text:?}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["hostname"], hostile);
    }

    #[test]
    fn ticks_views() {
        let plan_json = json!({
            "revision": 42, "leader": "node-1",
            "actions": [{"sign": "+", "text": "+ web on node-2"}],
            "bundles": [
                {"id": "web", "redundancy": 2, "running_on": {"node-1": true, "node-3": false}, "subnet": "10.224.0.0/24",
                 "addresses": {"node-1": {"a": "10.224.0.2", "b": "10.224.0.3"}, "node-3": {"a": "10.224.0.4"}}},
                {"id": "big", "redundancy": 3, "running_on": {}, "unplaced": "big: 3 of 3 replicas unplaced (memory short: 3 of 3 nodes)"}
            ],
            "problems": []
        });
        let rows = bundle_rows(&plan_json, false);
        assert_eq!(rows[0]["replicas"], "2/2");
        assert!(rows[0].get("subnet").is_none());
        assert_eq!(rows[0]["nodes"], "node-1,node-3(unhealthy)");
        assert_eq!(rows[1]["replicas"], "0/3");
        let wide = bundle_rows(&plan_json, true);
        assert_eq!(wide[0]["subnet"], "10.224.0.0/24");
        assert_eq!(wide[0]["addresses"], "node-1: a=10.224.0.2 b=10.224.0.3; node-3: a=10.224.0.4");
        assert_eq!((wide[1]["subnet"].is_null(), wide[1]["addresses"].as_str()), (true, Some("")));
        let text = plan(&plan_json);
        assert!(text.starts_with("+ web on node-2\n! big: 3 of 3"), "{text}");
        assert!(text.contains("revision 42; the ticks run on node-1"), "{text}");
        let idle = plan(&json!({"revision": 1, "actions": [], "bundles": []}));
        assert!(idle.starts_with("nothing to do\n") && idle.contains("no node runs the ticks"), "{idle}");

        let web = json!({"id": "web", "ports": {"80": {"public": true, "external_port": 18080, "connected_bundles": ["client"]},
                                                "9000": {"connected_bundles": ["ops", "client"]}}});
        let client = json!({"id": "client", "ports": {"5432": {"connected_bundles": ["web"]}}});
        let network = bundle_network(&web, &plan_json["bundles"][0], &[web.clone(), client]);
        assert_eq!(network["subnet"], "10.224.0.0/24");
        assert_eq!(network["addresses"]["node-3"]["a"], "10.224.0.4");
        assert_eq!(network["reaches"], json!(["client"]));
        assert_eq!(network["reached_by"], json!(["client", "ops"]));
        assert_eq!(
            network["firewall"][0],
            json!({"port": "80", "from": ["client"], "public": true, "published_as": 18080})
        );
        assert_eq!(network["firewall"][1]["published_as"], Value::Null);

        let nodes = node_rows(
            &json!({"nodes": [{"id": "n1", "heartbeat_ms": 1000, "cpu_load": 0.5, "cpu_cores": 2,
            "memory_free": 1u64 << 30, "disk_free": 3u64 << 30, "api_url": "https://n1:8080"}]}),
            3500,
        );
        assert_eq!(nodes[0]["heartbeat_age_s"], "2.5");
        assert_eq!(nodes[0]["memory_free_gib"], "1.0");

        let runs = run_rows(
            &json!({"runs": [{"started_ms": 5, "leader": "n1", "term": 9, "revision": 40, "duration_ms": 12,
            "actions": [{"action": "+ web on n2", "outcome": "ok"}, {"action": "- old on n3", "outcome": "unavailable"}]}]}),
        );
        assert_eq!((runs[0]["actions"].as_u64(), runs[0]["failed"].as_u64()), (Some(2), Some(1)));
        assert_eq!(runs[0]["first"], "+ web on n2 [ok]");

        let history = history_rows(
            &json!({"nodes": {"n1": [{"id": "n1", "heartbeat_ms": 60_000, "cpu_load": 0.5},
            {"id": "n1", "heartbeat_ms": 0, "cpu_load": 0.25}], "n2": []}}),
            90_000,
        );
        assert_eq!(history.len(), 2);
        assert_eq!((history[0]["node"].as_str(), history[0]["age_s"].as_str()), (Some("n1"), Some("30.0")));
        assert_eq!(history[1]["load"], 0.25);
        assert!(history[0].get("api_url").is_none());
    }
}

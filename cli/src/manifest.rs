//! `cerana plan|apply|delete -f FILE|DIR`: the cluster's declared objects read from files,
//! compared field by field with what the cluster declares now, and written in the order their
//! references need (datasets, services, bundles; deleted the other way round).
//!
//! A file (TOML or JSON) holds `[[dataset]]`, `[[service]]` and `[[bundle]]` tables and at most
//! one `[defaults]`, each object as `cerana set` takes it; a directory is every `*.toml` and
//! `*.json` in it, by name. Every field must be one this version knows, and every object checks
//! itself before anything is asked of the cluster.

use cerana_protocol::tasks::clusterconf::{Bundle, ClusterDefaults, Dataset, Service, Strict};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The files of a directory read at most (a typo'd path to `/` should not read a disk).
const MAX_FILES: usize = 1000;
/// The largest file read.
const MAX_FILE_BYTES: u64 = 4 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(default)]
    dataset: Vec<Strict<Dataset>>,
    #[serde(default)]
    service: Vec<Strict<Service>>,
    #[serde(default)]
    bundle: Vec<Strict<Bundle>>,
    #[serde(default)]
    defaults: Option<Strict<ClusterDefaults>>,
}

/// What kind of object, in the order creation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Defaults,
    Dataset,
    Service,
    Bundle,
}

impl ObjectKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Defaults => "defaults",
            ObjectKind::Dataset => "dataset",
            ObjectKind::Service => "service",
            ObjectKind::Bundle => "bundle",
        }
    }

    /// The task reading one object (with `{"id": …}`, except the defaults).
    pub fn get_task(self) -> &'static str {
        match self {
            ObjectKind::Defaults => "get-default-options",
            ObjectKind::Dataset => "get-dataset",
            ObjectKind::Service => "get-service",
            ObjectKind::Bundle => "get-bundle",
        }
    }

    pub fn update_task(self) -> &'static str {
        match self {
            ObjectKind::Defaults => "set-default-options",
            ObjectKind::Dataset => "update-dataset",
            ObjectKind::Service => "update-service",
            ObjectKind::Bundle => "update-bundle",
        }
    }

    /// None: the defaults are set, never deleted.
    pub fn delete_task(self) -> Option<&'static str> {
        match self {
            ObjectKind::Defaults => None,
            ObjectKind::Dataset => Some("delete-dataset"),
            ObjectKind::Service => Some("delete-service"),
            ObjectKind::Bundle => Some("delete-bundle"),
        }
    }
}

/// One object a file declares: its fields as the protocol reads them (defaults filled in),
/// without `mod_index`.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub kind: ObjectKind,
    pub id: String,
    pub fields: Value,
    /// Where it was read, for messages.
    pub source: String,
}

/// Reads `path`: one file, or every `*.toml` and `*.json` of a directory. An object declared
/// twice, a field this version does not know, or an object that fails its own checks is an
/// error naming the file.
pub fn load(path: &Path) -> Result<Vec<Declared>, String> {
    let files = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("toml" | "json")))
            .take(MAX_FILES + 1)
            .collect();
        if files.len() > MAX_FILES {
            return Err(format!("{}: more than {MAX_FILES} files", path.display()));
        }
        if files.is_empty() {
            return Err(format!("{}: no *.toml or *.json file", path.display()));
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut all: Vec<Declared> = Vec::new();
    for file in files {
        let source = file.display().to_string();
        let size = std::fs::metadata(&file).map_err(|e| format!("{source}: {e}"))?.len();
        if size > MAX_FILE_BYTES {
            return Err(format!("{source}: larger than {MAX_FILE_BYTES} bytes"));
        }
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{source}: {e}"))?;
        for object in parse(&text, &source)? {
            if let Some(first) = all.iter().find(|d| d.kind == object.kind && d.id == object.id) {
                return Err(format!(
                    "{} {} is declared twice: in {} and in {}",
                    object.kind.name(),
                    object.id,
                    first.source,
                    object.source
                ));
            }
            all.push(object);
        }
    }
    all.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    Ok(all)
}

/// The objects of one file's text (JSON if it is a JSON object, TOML otherwise).
pub fn parse(text: &str, source: &str) -> Result<Vec<Declared>, String> {
    let file: ManifestFile = match serde_json::from_str::<Value>(text) {
        Ok(value) if value.is_object() => serde_json::from_value(value).map_err(|e| format!("{source}: {e}"))?,
        _ => toml::from_str(text).map_err(|e| format!("{source}: {}", e.message().trim()))?,
    };
    let mut out = Vec::new();
    let mut add = |kind: ObjectKind, id: String, value: Result<Value, serde_json::Error>| {
        let mut fields = value.map_err(|e| format!("{source}: {e}"))?;
        if let Some(map) = fields.as_object_mut() {
            map.remove("mod_index");
        }
        out.push(Declared { kind, id, fields, source: source.to_string() });
        Ok::<(), String>(())
    };
    let invalid =
        |kind: ObjectKind, id: &str, e: &dyn std::fmt::Display| format!("{source}: {} {id}: {e}", kind.name());
    for Strict(d) in file.dataset {
        d.validate().map_err(|e| invalid(ObjectKind::Dataset, d.id.as_ref(), &e))?;
        add(ObjectKind::Dataset, d.id.to_string(), serde_json::to_value(&d))?;
    }
    for Strict(s) in file.service {
        s.validate().map_err(|e| invalid(ObjectKind::Service, s.id.as_ref(), &e))?;
        add(ObjectKind::Service, s.id.to_string(), serde_json::to_value(&s))?;
    }
    for Strict(b) in file.bundle {
        b.validate().map_err(|e| invalid(ObjectKind::Bundle, b.id.as_ref(), &e))?;
        add(ObjectKind::Bundle, b.id.to_string(), serde_json::to_value(&b))?;
    }
    if let Some(Strict(defaults)) = file.defaults {
        defaults.validate().map_err(|e| invalid(ObjectKind::Defaults, "", &e))?;
        add(ObjectKind::Defaults, String::new(), serde_json::to_value(&defaults))?;
    }
    Ok(out)
}

/// What the cluster declares now for an object of `kind`, as the protocol reads it (tolerating
/// fields a newer node added, which then show as changes), without `mod_index`; and that index.
pub fn current(kind: ObjectKind, answer: &Value) -> Result<(Value, u64), String> {
    // get-bundle answers a view: {bundle, services?}.
    let object = if kind == ObjectKind::Bundle { &answer["bundle"] } else { answer };
    let fields = match kind {
        ObjectKind::Defaults => as_read::<ClusterDefaults>(object),
        ObjectKind::Dataset => as_read::<Dataset>(object),
        ObjectKind::Service => as_read::<Service>(object),
        ObjectKind::Bundle => as_read::<Bundle>(object),
    };
    let mut fields = fields.map_err(|e| format!("{} as the cluster has it: {e}", kind.name()))?;
    let index = fields.get("mod_index").and_then(Value::as_u64).unwrap_or(0);
    if let Some(map) = fields.as_object_mut() {
        map.remove("mod_index");
    }
    Ok((fields, index))
}

/// `ticks-plan`'s arguments for the ticks' dry run of `declared` (the defaults are not planned).
pub fn tick_args(declared: &[Declared]) -> Value {
    let of = |kind: ObjectKind| -> Vec<Value> {
        declared.iter().filter(|d| d.kind == kind).map(|d| d.fields.clone()).collect()
    };
    serde_json::json!({
        "datasets": of(ObjectKind::Dataset),
        "services": of(ObjectKind::Service),
        "bundles": of(ObjectKind::Bundle),
    })
}

/// `value` as the protocol's `T` reads it and writes it back: defaults filled in, unknown
/// fields dropped.
fn as_read<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> Result<Value, serde_json::Error> {
    serde_json::to_value(serde_json::from_value::<T>(value.clone())?)
}

/// One field that differs: its dotted path, what it is now and what it would be (None: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// The fields that differ between `old` and `new`, by dotted path: objects are compared key by
/// key, anything else (lists included) whole.
pub fn field_changes(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    diff_into(old, new, "", &mut out);
    out
}

fn diff_into(old: &Value, new: &Value, path: &str, out: &mut Vec<FieldChange>) {
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_into(x, y, &join(key), out),
                    (x, y) => out.push(FieldChange { path: join(key), old: x.cloned(), new: y.cloned() }),
                }
            }
        }
        (a, b) if a != b => {
            out.push(FieldChange { path: path.to_string(), old: Some(a.clone()), new: Some(b.clone()) })
        }
        _ => {}
    }
}

/// What applying a file does to one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Create,
    Update(Vec<FieldChange>),
    Unchanged,
}

impl Op {
    pub fn sign(&self) -> &'static str {
        match self {
            Op::Create => "+",
            Op::Update(_) => "~",
            Op::Unchanged => "=",
        }
    }
}

/// One object's line of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: ObjectKind,
    pub id: String,
    pub op: Op,
    /// The index the cluster's copy had when read (0: none): the write's compare-and-swap.
    pub mod_index: u64,
    pub fields: Value,
}

impl Step {
    pub fn name(&self) -> String {
        if self.kind == ObjectKind::Defaults {
            "defaults".into()
        } else {
            format!("{}/{}", self.kind.name(), self.id)
        }
    }
}

/// The plan's lines as an operator reads them: `+ bundle/web`, `~ service/api` with its fields.
pub fn render(steps: &[Step]) -> String {
    let show = |v: &Option<Value>| v.as_ref().map_or("(none)".to_string(), Value::to_string);
    let mut out = String::new();
    for step in steps.iter().filter(|s| s.op != Op::Unchanged) {
        out.push_str(&format!("{} {}\n", step.op.sign(), step.name()));
        if let Op::Update(fields) = &step.op {
            for f in fields {
                out.push_str(&format!("    {}: {} → {}\n", f.path, show(&f.old), show(&f.new)));
            }
        }
    }
    let count = |sign: &str| steps.iter().filter(|s| s.op.sign() == sign).count();
    out.push_str(&format!("{} to create, {} to change, {} unchanged\n", count("+"), count("~"), count("=")));
    out
}

/// The plan as JSON (`-o json`).
pub fn to_json(steps: &[Step], revision: u64) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            let fields: Vec<Value> = match &s.op {
                Op::Update(fields) => fields
                    .iter()
                    .map(|f| serde_json::json!({ "path": f.path, "old": f.old, "new": f.new }))
                    .collect(),
                _ => Vec::new(),
            };
            serde_json::json!({ "op": s.op.sign(), "kind": s.kind.name(), "id": s.id, "mod_index": s.mod_index, "fields": fields })
        })
        .collect();
    serde_json::json!({ "revision": revision, "steps": steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
[[dataset]]
id = "site"
redundancy = 2

[[service]]
id = "httpd"
dataset = "site"
cmd = ["/bin/httpd", "-f"]

[[bundle]]
id = "web"
redundancy = 2
[bundle.services.httpd]
id = "httpd"
[bundle.ports.80]
public = true
external_port = 18080
"#;

    #[test]
    fn a_file_reads_as_typed_objects_in_creation_order_with_defaults_filled_in() {
        let objects = parse(WEB, "web.toml").unwrap();
        let names: Vec<(ObjectKind, &str)> = objects.iter().map(|o| (o.kind, o.id.as_str())).collect();
        assert_eq!(names, [(ObjectKind::Dataset, "site"), (ObjectKind::Service, "httpd"), (ObjectKind::Bundle, "web")]);
        assert_eq!(objects[0].fields["read_only"], false, "{}", objects[0].fields);
        assert!(objects[0].fields.get("mod_index").is_none());
        let json = serde_json::json!({ "dataset": [{ "id": "site", "redundancy": 2 }] }).to_string();
        assert_eq!(parse(&json, "site.json").unwrap()[0].fields, objects[0].fields);
    }

    #[test]
    fn unknown_fields_bad_objects_and_duplicates_are_refused_with_the_file_named() {
        let err = parse("[[dataset]]\nid = \"a\"\nredundancy = 2\nsize = 3\n", "a.toml").unwrap_err();
        assert!(err.starts_with("a.toml:") && err.contains("size"), "{err}");
        let err = parse("[[datasets]]\nid = \"a\"\n", "a.toml").unwrap_err();
        assert!(err.contains("datasets"), "{err}");
        let err = parse("[[dataset]]\nid = \"a\"\nredundancy = 0\n", "a.toml").unwrap_err();
        assert!(err.contains("dataset a") && err.contains("redundancy"), "{err}");
        let err = parse("[[service]]\nid = \"s\"\ndataset = \"a\"\ncmd = []\n", "s.toml").unwrap_err();
        assert!(err.contains("service s") && err.contains("cmd"), "{err}");
        assert!(parse("not = [toml", "x.toml").unwrap_err().starts_with("x.toml:"));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "[[dataset]]\nid = \"site\"\n").unwrap();
        std::fs::write(dir.path().join("b.json"), r#"{"dataset": [{"id": "site"}]}"#).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.contains("declared twice") && err.contains("a.toml") && err.contains("b.json"), "{err}");
        std::fs::remove_file(dir.path().join("b.json")).unwrap();
        assert_eq!(load(dir.path()).unwrap().len(), 1);
        let empty = tempfile::tempdir().unwrap();
        assert!(load(empty.path()).unwrap_err().contains("no *.toml"));
    }

    #[test]
    fn changes_are_listed_field_by_field() {
        let old =
            serde_json::json!({ "id": "web", "redundancy": 1, "ports": { "80": { "public": false } }, "x": [1, 2] });
        let new = serde_json::json!({ "id": "web", "redundancy": 2, "ports": { "80": { "public": true }, "443": {} }, "x": [1, 2] });
        let changes = field_changes(&old, &new);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["ports.443", "ports.80.public", "redundancy"]);
        assert_eq!(changes[0].old, None);
        assert_eq!(changes[2].new, Some(serde_json::json!(2)));
        assert!(field_changes(&old, &old).is_empty());

        let steps = vec![
            Step { kind: ObjectKind::Dataset, id: "site".into(), op: Op::Create, mod_index: 0, fields: Value::Null },
            Step {
                kind: ObjectKind::Bundle,
                id: "web".into(),
                op: Op::Update(changes),
                mod_index: 7,
                fields: Value::Null,
            },
            Step {
                kind: ObjectKind::Service,
                id: "httpd".into(),
                op: Op::Unchanged,
                mod_index: 5,
                fields: Value::Null,
            },
        ];
        let text = render(&steps);
        assert!(text.starts_with("+ dataset/site\n~ bundle/web\n    ports.443: (none) → {}\n"), "{text}");
        assert!(text.ends_with("1 to create, 1 to change, 1 unchanged\n"), "{text}");
        assert_eq!(to_json(&steps, 9)["steps"][1]["fields"][1]["path"], "ports.80.public");
    }

    #[test]
    fn what_the_cluster_answers_is_read_tolerantly_and_its_index_kept_apart() {
        let answer = serde_json::json!({ "bundle": { "id": "web", "services": { "httpd": { "id": "httpd" } }, "mod_index": 12, "added_later": 1 } });
        let (fields, index) = current(ObjectKind::Bundle, &answer).unwrap();
        assert_eq!(index, 12);
        assert!(fields.get("mod_index").is_none() && fields.get("added_later").is_none(), "{fields}");
        assert_eq!(fields["redundancy"], 1);
    }
}

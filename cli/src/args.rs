//! Turning `key=value` words and `--json` documents into a task's arguments.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgsError {
    #[error("argument {0:?} is not of the form key=value")]
    NotKeyValue(String),
    #[error("argument {0:?} has an empty key")]
    EmptyKey(String),
    #[error("argument {word:?}: {key:?} is given both as a value and as an object")]
    Conflict { word: String, key: String },
    #[error("--json must hold a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("--json is not valid JSON: {0}")]
    BadJson(String),
    #[error("argument {word:?} starts with '{{' but is not a JSON object: {error}")]
    BadJsonWord { word: String, error: String },
}

/// A value as typed: JSON when it parses as JSON (numbers, booleans, null, arrays, objects,
/// quoted strings), otherwise the literal string.
fn typed(value: &str) -> Value {
    serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Builds the arguments object: the `--json` document (if any), then each word in order: a
/// `key=value`, where dotted keys (`a.b=1`) build nested objects, or a whole JSON object
/// (`'{"name":"data/x"}'`) whose keys are set as they are.
pub fn build(json: Option<&str>, words: &[String]) -> Result<Value, ArgsError> {
    let mut args = match json {
        Some(text) => match serde_json::from_str::<Value>(text).map_err(|e| ArgsError::BadJson(e.to_string()))? {
            Value::Object(map) => map,
            other => return Err(ArgsError::NotAnObject(kind(&other))),
        },
        None => Map::new(),
    };
    for word in words {
        if word.trim_start().starts_with('{') {
            let bad = |error: String| ArgsError::BadJsonWord { word: word.clone(), error };
            match serde_json::from_str::<Value>(word).map_err(|e| bad(e.to_string()))? {
                Value::Object(map) => args.extend(map),
                other => return Err(bad(format!("got {}", kind(&other)))),
            }
            continue;
        }
        let (key, value) = word.split_once('=').ok_or_else(|| ArgsError::NotKeyValue(word.clone()))?;
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ArgsError::EmptyKey(word.clone()));
        }
        let mut target = &mut args;
        for part in &path[..path.len() - 1] {
            let slot = target.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
            target = match slot {
                Value::Object(map) => map,
                _ => return Err(ArgsError::Conflict { word: word.clone(), key: part.to_string() }),
            };
        }
        target.insert(path[path.len() - 1].to_owned(), typed(value));
    }
    Ok(Value::Object(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_values_are_typed_and_nested() {
        let args =
            build(None, &words(&["name=data/x", "size=10", "ro=true", "props.compression=lz4", r#"s="10""#])).unwrap();
        assert_eq!(args, json!({"name": "data/x", "size": 10, "ro": true, "props": {"compression": "lz4"}, "s": "10"}));
    }

    #[test]
    fn json_documents_merge_under_key_values() {
        let args = build(Some(r#"{"a": 1, "b": {"c": 2}}"#), &words(&["b.d=3", "a=4"])).unwrap();
        assert_eq!(args, json!({"a": 4, "b": {"c": 2, "d": 3}}));
    }

    #[test]
    fn a_word_may_be_a_whole_json_object() {
        let args =
            build(None, &words(&[r#"{"id": "web", "cmd": ["/bin/sh", "-c", "a=b"]}"#, "limits.memory=8"])).unwrap();
        assert_eq!(args, json!({"id": "web", "cmd": ["/bin/sh", "-c", "a=b"], "limits": {"memory": 8}}));
        assert!(matches!(build(None, &words(&["{oops"])), Err(ArgsError::BadJsonWord { .. })));
    }

    #[test]
    fn malformed_words_are_refused() {
        assert_eq!(build(None, &words(&["oops"])), Err(ArgsError::NotKeyValue("oops".into())));
        assert_eq!(build(None, &words(&["=1"])), Err(ArgsError::EmptyKey("=1".into())));
        assert!(matches!(build(None, &words(&["a=1", "a.b=2"])), Err(ArgsError::Conflict { .. })));
        assert_eq!(build(Some("[1]"), &[]), Err(ArgsError::NotAnObject("an array")));
        assert!(matches!(build(Some("{"), &[]), Err(ArgsError::BadJson(_))));
    }
}

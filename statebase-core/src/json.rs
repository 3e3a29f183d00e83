//! JSON helpers: merge patches, diffs by path, metadata containment.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A JSON object: what a session's state and metadata always are.
pub type Object = Map<String, Value>;

/// Applies an RFC 7386 JSON merge patch to `target`: keys in the patch replace, `null`
/// removes, nested objects merge.
pub fn merge_patch(target: &mut Object, patch: &Object) {
    let mut doc = Value::Object(std::mem::take(target));
    json_patch::merge(&mut doc, &Value::Object(patch.clone()));
    if let Value::Object(merged) = doc {
        *target = merged;
    }
}

/// True when every key of `filter` is in `doc` with an equal value.
pub fn contains(doc: &Object, filter: &Object) -> bool {
    filter.iter().all(|(k, v)| doc.get(k) == Some(v))
}

/// What changed from one document to another, keyed by JSON Pointer (RFC 6901) paths such
/// as `/user/name`.
///
/// Objects are compared key by key, recursively; arrays and scalars are compared as whole
/// values, so a changed array shows as one `modified` entry at its path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// Paths present only in the newer document, with their values.
    pub added: BTreeMap<String, Value>,
    /// Paths present only in the older document, with their old values.
    pub removed: BTreeMap<String, Value>,
    /// Paths whose value changed.
    pub modified: BTreeMap<String, Change>,
}

/// One modified value in a [`Diff`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The value in the older document.
    pub from: Value,
    /// The value in the newer document.
    pub to: Value,
}

impl Diff {
    /// The difference from `old` to `new`.
    pub fn between(old: &Object, new: &Object) -> Self {
        let mut diff = Diff::default();
        diff.objects("", old, new);
        diff
    }

    /// True when the documents were equal.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }

    fn objects(&mut self, prefix: &str, old: &Object, new: &Object) {
        for (key, old_value) in old {
            let path = format!("{prefix}/{}", escape(key));
            match new.get(key) {
                None => {
                    self.removed.insert(path, old_value.clone());
                }
                Some(new_value) => self.values(path, old_value, new_value),
            }
        }
        for (key, new_value) in new {
            if !old.contains_key(key) {
                self.added
                    .insert(format!("{prefix}/{}", escape(key)), new_value.clone());
            }
        }
    }

    fn values(&mut self, path: String, old: &Value, new: &Value) {
        match (old, new) {
            (Value::Object(o), Value::Object(n)) => self.objects(&path, o, n),
            _ if old == new => {}
            _ => {
                self.modified.insert(
                    path,
                    Change {
                        from: old.clone(),
                        to: new.clone(),
                    },
                );
            }
        }
    }
}

/// RFC 6901 escaping of one path segment.
fn escape(key: &str) -> std::borrow::Cow<'_, str> {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1").into()
    } else {
        key.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = obj(json!({"a": "b", "c": {"d": "e", "f": "g"}}));
        merge_patch(&mut doc, &obj(json!({"a": "z", "c": {"f": null}})));
        assert_eq!(Value::Object(doc), json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn diff_reports_paths() {
        let old = obj(json!({"a": 1, "b": {"c": 2, "d": 3}, "gone": true, "x/y": [1]}));
        let new = obj(json!({"a": 1, "b": {"c": 5, "e": 4}, "x/y": [1, 2]}));
        let d = Diff::between(&old, &new);
        assert_eq!(d.added, BTreeMap::from([("/b/e".into(), json!(4))]));
        assert_eq!(
            d.removed,
            BTreeMap::from([("/b/d".into(), json!(3)), ("/gone".into(), json!(true))])
        );
        assert_eq!(d.modified.len(), 2);
        assert_eq!(d.modified["/b/c"].to, json!(5));
        assert_eq!(d.modified["/x~1y"].from, json!([1]));
        assert!(Diff::between(&old, &old).is_empty());
    }

    #[test]
    fn containment_is_top_level_equality() {
        let doc = obj(json!({"env": "prod", "n": 1}));
        assert!(contains(&doc, &obj(json!({"env": "prod"}))));
        assert!(!contains(&doc, &obj(json!({"env": "dev"}))));
        assert!(contains(&doc, &Object::new()));
    }
}

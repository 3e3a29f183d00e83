//! How a state version is encoded into the bytes a backend stores.
//!
//! The first byte names the format. A version is either a snapshot (the whole state) or a
//! delta (a JSON Patch from the state of the version before). Every version whose number
//! is a multiple of [`SNAPSHOT_EVERY`] is a snapshot, so any version decodes from at most
//! that many consecutive records, starting at [`chain_start`]. Old records (all snapshots)
//! still decode, and backends never look inside.

use crate::error::{Error, Result};
use crate::json::Object;
use crate::model::VersionChange;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Format 1: the whole state and the version's annotations, as JSON.
const SNAPSHOT_JSON: u8 = 1;
/// Format 2: a JSON Patch (RFC 6902) from the previous version's state, and the
/// annotations, as JSON.
const DELTA_JSON: u8 = 2;

/// Every version whose number is a multiple of this is a snapshot.
pub(crate) const SNAPSHOT_EVERY: u64 = 16;

/// Snapshots smaller than this are kept as they are: a patch would save little and cost a
/// diff on every write.
const SMALL_SNAPSHOT: usize = 512;

/// Everything a version holds besides its number and timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VersionBody {
    pub state: Object,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    pub actor: String,
    pub change: VersionChange,
}

impl VersionBody {
    /// The version of `session_id` that `record` (whose body this is) stores.
    pub(crate) fn into_version(
        self,
        session_id: &str,
        record: &crate::store::VersionRecord,
    ) -> crate::model::StateVersion {
        crate::model::StateVersion {
            session_id: session_id.to_owned(),
            version: record.version,
            state: self.state,
            created_at: record.created_at,
            reasoning: self.reasoning,
            updated_by: self.actor,
            change: self.change,
        }
    }
}

/// A delta record: [`VersionBody`] with a patch in place of the state.
#[derive(Serialize, Deserialize)]
struct DeltaBody {
    patch: json_patch::Patch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning: Option<String>,
    actor: String,
    change: VersionChange,
}

/// The first version of the records that decode `version`: the snapshot at or before it.
pub(crate) fn chain_start(version: u64) -> u64 {
    version - version % SNAPSHOT_EVERY
}

/// `body` as version `version`, whose previous version had the state `previous`: a delta
/// when there is a previous state, the version is not due for a snapshot, the snapshot is
/// not small, and the delta is the smaller.
pub(crate) fn encode(
    version: u64,
    previous: Option<&Object>,
    body: &VersionBody,
) -> Result<Vec<u8>> {
    let mut snapshot = vec![SNAPSHOT_JSON];
    serde_json::to_writer(&mut snapshot, body).map_err(Error::backend)?;
    let previous = match previous {
        Some(p) if version % SNAPSHOT_EVERY != 0 && snapshot.len() >= SMALL_SNAPSHOT => p,
        _ => return Ok(snapshot),
    };
    let delta = DeltaBody {
        patch: json_patch::diff(
            &Value::Object(previous.clone()),
            &Value::Object(body.state.clone()),
        ),
        reasoning: body.reasoning.clone(),
        actor: body.actor.clone(),
        change: body.change.clone(),
    };
    let mut out = vec![DELTA_JSON];
    serde_json::to_writer(&mut out, &delta).map_err(Error::backend)?;
    Ok(if out.len() < snapshot.len() {
        out
    } else {
        snapshot
    })
}

/// Decodes `records[wanted..]`, consecutive versions whose first is a snapshot (as the one
/// at [`chain_start`] is): each delta applies to the state decoded before it. Decoding
/// starts at the last snapshot at or before `wanted`.
pub(crate) fn decode_run(records: &[&[u8]], wanted: usize) -> Result<Vec<VersionBody>> {
    if wanted >= records.len() {
        return Ok(Vec::new());
    }
    let start = (0..=wanted)
        .rev()
        .find(|&i| records[i].first() == Some(&SNAPSHOT_JSON))
        .unwrap_or(0);
    let mut out: Vec<VersionBody> = Vec::new();
    for bytes in &records[start..] {
        let body = match bytes.split_first() {
            Some((&SNAPSHOT_JSON, json)) => serde_json::from_slice(json).map_err(Error::backend)?,
            Some((&DELTA_JSON, json)) => {
                let delta: DeltaBody = serde_json::from_slice(json).map_err(Error::backend)?;
                let previous = out
                    .last()
                    .ok_or_else(|| Error::backend("a state delta without the version before it"))?;
                let mut state = Value::Object(previous.state.clone());
                json_patch::patch(&mut state, &delta.patch).map_err(Error::backend)?;
                let Value::Object(state) = state else {
                    return Err(Error::backend("a state delta made the state a non-object"));
                };
                VersionBody {
                    state,
                    reasoning: delta.reasoning,
                    actor: delta.actor,
                    change: delta.change,
                }
            }
            Some((format, _)) => {
                return Err(Error::backend(format!(
                    "state version in unknown format {format}: written by a newer statebase?"
                )))
            }
            None => return Err(Error::backend("empty state version record")),
        };
        out.push(body);
    }
    Ok(out.split_off(wanted - start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(state: Value) -> VersionBody {
        VersionBody {
            state: state.as_object().cloned().unwrap(),
            reasoning: Some("why".into()),
            actor: "system".into(),
            change: VersionChange::RolledBack {
                restored_from_version: 3,
            },
        }
    }

    #[test]
    fn snapshots_round_trip_and_unknown_formats_are_refused() {
        let b = body(json!({"a": [1, {"b": null}]}));
        let bytes = encode(0, None, &b).unwrap();
        assert_eq!(bytes[0], SNAPSHOT_JSON);
        assert_eq!(decode_run(&[&bytes[..]], 0).unwrap(), vec![b]);
        let mut future = bytes;
        future[0] = 9;
        assert_eq!(
            decode_run(&[&future[..]], 0).unwrap_err().code(),
            "internal_error"
        );
        assert!(decode_run(&[&[][..]], 0).is_err());
    }

    #[test]
    fn a_small_edit_of_a_big_state_is_a_small_delta_that_decodes_back() {
        let big: Object = (0..100)
            .map(|i| (format!("key_{i}"), json!("x".repeat(90))))
            .collect();
        let mut edited = big.clone();
        edited.insert("key_7".into(), json!(null));
        // Keys that JSON Pointer escapes.
        edited.insert("a/b~c".into(), json!({"~1": [1, {"/": 2}]}));
        edited.remove("key_8");
        edited.insert("new".into(), json!({"nested": [1, 2, 3]}));
        let mut again = edited.clone();
        again["a/b~c"]["~1"][1]["/"] = json!(3);
        let first = body(Value::Object(big.clone()));
        let second = body(Value::Object(edited.clone()));
        let third = body(Value::Object(again));
        let v0 = encode(0, None, &first).unwrap();
        let v1 = encode(1, Some(&big), &second).unwrap();
        let v2 = encode(2, Some(&edited), &third).unwrap();
        assert_eq!((v1[0], v2[0]), (DELTA_JSON, DELTA_JSON));
        assert!(v1.len() * 20 < v0.len(), "{} vs {}", v1.len(), v0.len());
        assert_eq!(
            decode_run(&[&v0[..], &v1[..], &v2[..]], 0).unwrap(),
            vec![first.clone(), second.clone(), third]
        );
        // Without the version before it, a delta does not decode.
        assert!(decode_run(&[&v1[..]], 0).is_err());
        // Wanting only the delta still decodes from the snapshot before it; a wanted
        // snapshot needs nothing before it (here a record that would not decode).
        assert_eq!(decode_run(&[&v0[..], &v1[..]], 1).unwrap(), vec![second]);
        assert_eq!(decode_run(&[&[9][..], &v0[..]], 1).unwrap(), vec![first]);
        assert!(decode_run(&[&v0[..]], 1).unwrap().is_empty());
    }

    #[test]
    fn versions_due_for_a_snapshot_small_states_and_rewrites_are_snapshots() {
        let text = "x".repeat(600);
        let old = json!({"a": 1, "text": text}).as_object().cloned().unwrap();
        let b = body(json!({"a": 2, "text": text}));
        let at = |version| encode(version, Some(&old), &b).unwrap()[0];
        assert_eq!(at(SNAPSHOT_EVERY), SNAPSHOT_JSON);
        assert_eq!(at(SNAPSHOT_EVERY + 1), DELTA_JSON);
        // A small state is written whole.
        let small = json!({"a": 1}).as_object().cloned().unwrap();
        let b = body(json!({"a": 2}));
        assert_eq!(encode(5, Some(&small), &b).unwrap()[0], SNAPSHOT_JSON);
        // So is a rewrite whose patch would be bigger than the state it makes.
        let many: Object = (0..40)
            .map(|i| (format!("key_{i}"), json!("y".repeat(20))))
            .collect();
        let replaced = body(json!({ "z": text }));
        assert_eq!(encode(5, Some(&many), &replaced).unwrap()[0], SNAPSHOT_JSON);
        assert_eq!(
            (
                chain_start(0),
                chain_start(15),
                chain_start(16),
                chain_start(33)
            ),
            (0, 0, 16, 32)
        );
    }
}

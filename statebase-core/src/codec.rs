//! How a state version is encoded into the bytes a backend stores.
//!
//! The first byte names the format, so a later format (deltas against a snapshot) can be
//! added without touching any backend and old records still decode.

use crate::error::{Error, Result};
use crate::json::Object;
use crate::model::VersionChange;
use serde::{Deserialize, Serialize};

/// Format 1: the whole state and the version's annotations, as JSON.
const SNAPSHOT_JSON: u8 = 1;

/// Everything a version holds besides its number and timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VersionBody {
    pub state: Object,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    pub actor: String,
    pub change: VersionChange,
}

pub(crate) fn encode(body: &VersionBody) -> Result<Vec<u8>> {
    let mut out = vec![SNAPSHOT_JSON];
    serde_json::to_writer(&mut out, body).map_err(Error::backend)?;
    Ok(out)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<VersionBody> {
    match bytes.split_first() {
        Some((&SNAPSHOT_JSON, json)) => serde_json::from_slice(json).map_err(Error::backend),
        Some((format, _)) => Err(Error::backend(format!(
            "state version in unknown format {format}: written by a newer statebase?"
        ))),
        None => Err(Error::backend("empty state version record")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_rejects_unknown_formats() {
        let body = VersionBody {
            state: json!({"a": [1, {"b": null}]}).as_object().cloned().unwrap(),
            reasoning: Some("why".into()),
            actor: "system".into(),
            change: VersionChange::RolledBack {
                restored_from_version: 3,
            },
        };
        let bytes = encode(&body).unwrap();
        assert_eq!(decode(&bytes).unwrap(), body);
        let mut future = bytes;
        future[0] = 9;
        assert_eq!(decode(&future).unwrap_err().code(), "internal_error");
        assert!(decode(&[]).is_err());
    }
}

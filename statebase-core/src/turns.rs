//! Conversation turns: logged in order, optionally moving the state in the same step.

use crate::action;
use crate::codec::VersionBody;
use crate::error::{Error, ResourceKind, Result};
use crate::json::Object;
use crate::model::{AddTurn, ListTurns, Order, Page, Turn, VersionChange};
use crate::statebase::{page, page_limit, StateBase};
use crate::store::{AppendTurn, Store, TurnQuery};
use serde_json::{json, Value};

impl<S: Store> StateBase<S> {
    /// Logs the session's next turn (numbers run 1, 2, 3… without gaps, also under
    /// concurrent appends). When `state_after` differs from the current state, the turn and
    /// a new state version are written in one atomic step.
    pub async fn add_turn(&self, session_id: &str, req: AddTurn) -> Result<Turn> {
        let input = turn_io("input", req.input)?;
        let output = turn_io("output", req.output)?;
        self.check_size("input", &input)?;
        self.check_size("output", &output)?;
        let reasoning = self.reasoning("reasoning", req.reasoning)?;
        let metadata = self.document("metadata", req.metadata)?;
        let state_before = self.optional_document("state_before", req.state_before)?;
        let state_after = self.optional_document("state_after", req.state_after)?;
        let id = self.new_id("turn_");
        loop {
            let session = self.live_session(session_id).await?.session;
            let now = self.now();
            let turn_number = session.turn_count + 1;
            let state = match &state_after {
                Some(after) if *after != session.state => {
                    let details = json!({
                        "reasoning": reasoning,
                        "version": session.version + 1,
                        "mode": "turn",
                        "turn_id": id,
                        "state_diff": crate::json::Diff::between(&session.state, after),
                    });
                    let trace = self.resource_trace(
                        Some(session_id),
                        ("session", session_id),
                        action::STATE_UPDATED,
                        details,
                        now,
                    );
                    let body = VersionBody {
                        state: after.clone(),
                        reasoning: reasoning.clone(),
                        actor: self.actor.to_string(),
                        change: VersionChange::Turn {
                            turn_id: id.clone(),
                            turn_number,
                        },
                    };
                    Some(self.next_version(&session, body, now, trace)?)
                }
                _ => None,
            };
            let turn = Turn {
                id: id.clone(),
                session_id: session_id.to_owned(),
                turn_number,
                input: input.clone(),
                output: output.clone(),
                reasoning: reasoning.clone(),
                metadata: metadata.clone(),
                state_before: state_before.clone(),
                state_after: state_after.clone(),
                state_version: state.as_ref().map(|s| s.version.version),
                created_at: now,
            };
            let details = json!({
                "turn_number": turn_number,
                "input_type": turn.input.get("type"),
                "output_type": turn.output.get("type"),
                "reasoning": reasoning,
                "state_version": turn.state_version,
            });
            let trace = self.resource_trace(
                Some(session_id),
                ("turn", &id),
                action::TURN_ADDED,
                details,
                now,
            );
            let append = AppendTurn {
                turn: turn.clone(),
                state,
                updated_at: now,
                trace,
            };
            match self.store().append_turn(&self.tenant, append).await {
                // Another turn or state write got in first: number and diff again.
                Err(Error::Conflict { .. }) => continue,
                other => return other.map(|_| turn),
            }
        }
    }

    /// One turn of the session.
    pub async fn get_turn(&self, session_id: &str, turn_id: &str) -> Result<Turn> {
        self.live_session(session_id).await?;
        match self.store().turn(&self.tenant, turn_id).await? {
            Some(t) if t.session_id == session_id => Ok(t),
            _ => Err(Error::not_found(ResourceKind::Turn, turn_id)),
        }
    }

    /// The session's turns, newest first by default, one page at a time.
    pub async fn list_turns(&self, session_id: &str, req: ListTurns) -> Result<Page<Turn>> {
        let limit = page_limit(req.limit, 20, 100)?;
        self.live_session(session_id).await?;
        let after_turn_number = match &req.starting_after {
            None => None,
            Some(id) => match self.store().turn(&self.tenant, id).await? {
                Some(t) if t.session_id == session_id => Some(t.turn_number),
                _ => return Err(Error::not_found(ResourceKind::Turn, id)),
            },
        };
        let query = TurnQuery {
            limit: limit + 1,
            descending: req.order == Order::Desc,
            after_turn_number,
        };
        let turns = self
            .store()
            .list_turns(&self.tenant, session_id, &query)
            .await?;
        Ok(page(turns, limit, |t| &t.id))
    }

    /// An optional JSON object: `None` and `null` are `None`.
    fn optional_document(
        &self,
        param: &'static str,
        value: Option<Value>,
    ) -> Result<Option<Object>> {
        match value {
            None | Some(Value::Null) => Ok(None),
            given => self.document(param, given).map(Some),
        }
    }
}

/// A turn's input or output: an object with a string `type` (default `text`), or a plain
/// string taken as `{"type": "text", "content": …}`.
fn turn_io(param: &'static str, value: Value) -> Result<Object> {
    let mut object = match value {
        Value::String(content) => {
            let mut o = Object::new();
            o.insert("content".into(), Value::String(content));
            o
        }
        Value::Object(o) => o,
        _ => {
            return Err(Error::invalid(
                param,
                "must be a string or an object with `type` and `content`",
            ))
        }
    };
    match object.get("type") {
        None | Some(Value::Null) => {
            object.insert("type".into(), json!("text"));
        }
        Some(Value::String(t)) if !t.is_empty() => {}
        Some(_) => return Err(Error::invalid(param, "`type` must be a non-empty string")),
    }
    if !object.contains_key("content") {
        return Err(Error::invalid(param, "`content` is required"));
    }
    Ok(object)
}

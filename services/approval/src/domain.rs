//! Approval's rules without I/O: states and the instant a request expires, the state filter of
//! the list methods, resource names and the limits on what users type.

use chrono::{DateTime, Utc};
use portal_platform::ApiError;
use portal_proto::approval::v1::approval_request::State as ProtoState;
use uuid::Uuid;

/// Who the suite itself acts as (expiry, withdrawal after a deletion).
pub const SUITE_ACTOR: &str = "services/approval";
pub const REASON_EXPIRED: &str = "expired";
pub const REASON_REQUESTER_DELETED: &str = "requester deleted (Art. 5.3)";

/// Longest message or reason, in Unicode characters.
const MAX_TEXT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Accepted,
    Rejected,
    Withdrawn,
    Expired,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Pending,
        State::Accepted,
        State::Rejected,
        State::Withdrawn,
        State::Expired,
    ];

    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Accepted => "ACCEPTED",
            Self::Rejected => "REJECTED",
            Self::Withdrawn => "WITHDRAWN",
            Self::Expired => "EXPIRED",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == stored)
    }

    pub fn to_proto(self) -> ProtoState {
        match self {
            Self::Pending => ProtoState::Pending,
            Self::Accepted => ProtoState::Accepted,
            Self::Rejected => ProtoState::Rejected,
            Self::Withdrawn => ProtoState::Withdrawn,
            Self::Expired => ProtoState::Expired,
        }
    }
}

/// The state a request is in at `now`: a PENDING request past its expiry is EXPIRED from that
/// instant, whether or not the sweeper has recorded it.
pub fn effective_state(stored: State, expire_time: DateTime<Utc>, now: DateTime<Utc>) -> State {
    if stored == State::Pending && expire_time <= now {
        State::Expired
    } else {
        stored
    }
}

/// The states a list filter selects (AIP-160 subset: `state = X` joined by `OR`); empty
/// selects every state.
pub fn filter(text: &str) -> Result<Vec<State>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(State::ALL.to_vec());
    }
    let invalid = || {
        ApiError::invalid_argument(
            "INVALID_FILTER",
            "the filter must be `state = <STATE>` terms joined by OR, e.g. `state = PENDING`",
        )
        .violation("filter", "must be `state = <STATE>` terms joined by OR")
    };
    let mut states = Vec::new();
    for term in text.split(" OR ") {
        let (field, value) = term.split_once('=').ok_or_else(invalid)?;
        if field.trim() != "state" {
            return Err(invalid());
        }
        let value = value.trim();
        let value = value.strip_prefix("STATE_").unwrap_or(value);
        let state = State::parse(value).ok_or_else(invalid)?;
        if !states.contains(&state) {
            states.push(state);
        }
    }
    Ok(states)
}

/// `approvalRequests/{id}`.
pub fn request_id(name: &str, field: &str) -> Result<Uuid, ApiError> {
    id_in(name, "approvalRequests/", field)
}

/// `tenantConnections/{id}`.
pub fn connection_id(name: &str, field: &str) -> Result<Uuid, ApiError> {
    id_in(name, "tenantConnections/", field)
}

fn id_in(name: &str, collection: &str, field: &str) -> Result<Uuid, ApiError> {
    name.strip_prefix(collection)
        .and_then(|id| {
            Uuid::parse_str(id)
                .ok()
                .filter(|u| u.hyphenated().to_string() == id)
        })
        .ok_or_else(|| invalid(field, &format!("must be {collection}{{id}}")))
}

pub fn request_name(id: Uuid) -> String {
    format!("approvalRequests/{id}")
}

pub fn connection_name(id: Uuid) -> String {
    format!("tenantConnections/{id}")
}

pub fn invalid(field: &str, problem: &str) -> ApiError {
    ApiError::invalid_argument("INVALID_REQUEST", "the request is not valid")
        .violation(field, problem)
}

/// A message: at most 1000 characters, no control characters but newline.
pub fn check_message(text: &str, field: &str) -> Result<(), ApiError> {
    let ok = text.chars().count() <= MAX_TEXT && text.chars().all(|c| c == '\n' || !c.is_control());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            "at most 1000 characters, no control characters but newline",
        ))
    }
}

/// AIP-154 etag of a version of a request as the caller sees it: an unswept expiry is a
/// different version from the PENDING one.
pub fn etag(revision: i64, effective: State, stored: State) -> String {
    if effective == stored {
        format!("\"{revision}\"")
    } else {
        format!("\"{revision}-expired\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_states_by_name_with_or_without_prefix() {
        assert_eq!(filter("").unwrap().len(), 5);
        assert_eq!(filter("state = PENDING").unwrap(), [State::Pending]);
        assert_eq!(
            filter("state=STATE_ACCEPTED OR state = REJECTED").unwrap(),
            [State::Accepted, State::Rejected]
        );
        for bad in [
            "state = pending",
            "state = PENDING or state = EXPIRED",
            "kind = TENANT_CONNECTION",
            "state PENDING",
            "state = PENDING OR",
        ] {
            let error = filter(bad).unwrap_err();
            assert_eq!(error.reason(), "INVALID_FILTER", "{bad}");
        }
    }

    #[test]
    fn a_pending_request_expires_at_the_instant_its_time_passes() {
        let now = Utc::now();
        let at = |secs| now + chrono::Duration::seconds(secs);
        assert_eq!(effective_state(State::Pending, at(1), now), State::Pending);
        assert_eq!(effective_state(State::Pending, at(0), now), State::Expired);
        assert_eq!(
            effective_state(State::Accepted, at(-9), now),
            State::Accepted
        );
    }

    #[test]
    fn messages_are_bounded_and_printable() {
        assert!(check_message("Hello,\nplease connect.", "m").is_ok());
        assert!(check_message(&"x".repeat(1000), "m").is_ok());
        assert!(check_message(&"x".repeat(1001), "m").is_err());
        assert!(check_message("bell\u{7}", "m").is_err());
    }
}

//! How approval's rows look to callers and to the event feed: the effective state (a passed
//! expiry counts at once), the two tenant profiles, and one event per change.

use chrono::{DateTime, Utc};
use portal_platform::events::{self, NewEvent};
use portal_platform::names::{tenant_name, user_name};
use portal_platform::time::to_timestamp;
use portal_proto::approval::v1::approval_request::{Kind, State as ProtoState};
use portal_proto::approval::v1::approval_request_event::Type as EventType;
use portal_proto::approval::v1::tenant_connection::State as ConnectionState;
use portal_proto::approval::v1::{
    ApprovalRequest, ApprovalRequestEvent, ApprovalRequestTransition, TenantConnection,
    TenantProfile,
};
use sqlx::PgConnection;

use crate::SERVICE;
use crate::domain::{self, State, connection_name, effective_state, request_name};
use crate::store::{ConnectionRow, RequestRow, TransitionRow};

/// `event_type` of approval's events; the suffix is the `ApprovalRequestEvent.Type` name.
pub const EVENT_TYPE_PREFIX: &str = "portal.approval.v1.ApprovalRequestEvent.";

/// `event_type` of the feed's marker that a user was deleted (subject: the user). Never sent
/// to watchers: it ends the deleted user's own open streams at that point of the feed.
pub const USER_DELETED_MARKER: &str = "portal.approval.internal.UserDeleted";

/// Marks `user`'s deletion in the feed, after the withdrawals it caused.
pub async fn emit_user_deleted(conn: &mut PgConnection, user: &str) -> Result<(), sqlx::Error> {
    let marker = NewEvent {
        event_type: USER_DELETED_MARKER,
        subject: user,
        payload: &[],
    };
    events::append(conn, SERVICE.schema.name, marker).await?;
    Ok(())
}

/// The request as it stands at `now`.
pub fn request(row: &RequestRow, now: DateTime<Utc>) -> ApprovalRequest {
    let stored = row.stored_state();
    let state = effective_state(stored, row.expire_time, now);
    // An expiry the sweeper has not recorded yet reads as it will once recorded (only the
    // etag differs: recording it is a new version).
    let (decide_time, decided_by, decision_reason) = if state != stored {
        (
            Some(row.expire_time),
            domain::SUITE_ACTOR.to_owned(),
            domain::REASON_EXPIRED.to_owned(),
        )
    } else {
        (
            row.decide_time,
            row.decided_by.clone(),
            row.decision_reason.clone(),
        )
    };
    ApprovalRequest {
        name: request_name(row.id),
        kind: Kind::TenantConnection.into(),
        requester_tenant: tenant_name(row.requester_tenant),
        requester_user: user_name(row.requester_tenant, row.requester_user),
        target_tenant: tenant_name(row.target_tenant),
        message: row.message.clone(),
        state: state.to_proto().into(),
        create_time: Some(to_timestamp(row.create_time)),
        update_time: Some(to_timestamp(decide_time.unwrap_or(row.update_time))),
        expire_time: Some(to_timestamp(row.expire_time)),
        decide_time: decide_time.map(to_timestamp),
        decided_by,
        decision_reason,
        etag: domain::etag(row.revision, state, stored),
        tenant_connection: row
            .tenant_connection
            .map(connection_name)
            .unwrap_or_default(),
        requester_tenant_profile: Some(TenantProfile {
            tenant: tenant_name(row.requester_tenant),
            display_name: row.requester_display_name.clone(),
            contract_reference: row.requester_contract_reference.clone(),
        }),
        target_tenant_profile: Some(TenantProfile {
            tenant: tenant_name(row.target_tenant),
            display_name: row.target_display_name.clone(),
            contract_reference: row.target_contract_reference.clone(),
        }),
    }
}

pub fn connection(row: &ConnectionRow) -> TenantConnection {
    let state = if row.state == "ACTIVE" {
        ConnectionState::Active
    } else {
        ConnectionState::Deleted
    };
    TenantConnection {
        name: connection_name(row.id),
        tenants: vec![tenant_name(row.tenant_a), tenant_name(row.tenant_b)],
        approval_request: request_name(row.approval_request),
        create_time: Some(to_timestamp(row.create_time)),
        state: state.into(),
        delete_time: row.delete_time.map(to_timestamp),
        deleted_by: row.deleted_by.clone(),
        etag: format!("\"{}\"", row.revision),
    }
}

/// The history as stored, plus an expiry that has passed but is not recorded yet.
pub fn history(
    row: &RequestRow,
    stored: &[TransitionRow],
    now: DateTime<Utc>,
) -> Vec<ApprovalRequestTransition> {
    let proto_state = |s: Option<&str>| {
        s.and_then(State::parse)
            .map_or(ProtoState::Unspecified, State::to_proto)
    };
    let mut transitions: Vec<_> = stored
        .iter()
        .map(|t| ApprovalRequestTransition {
            from_state: proto_state(t.from_state.as_deref()).into(),
            to_state: proto_state(Some(&t.to_state)).into(),
            actor: t.actor.clone(),
            time: Some(to_timestamp(t.time)),
            reason: t.reason.clone(),
        })
        .collect();
    let unrecorded_expiry = effective_state(row.stored_state(), row.expire_time, now)
        != row.stored_state()
        && !stored.iter().any(|t| t.position == 1);
    if unrecorded_expiry {
        transitions.push(ApprovalRequestTransition {
            from_state: ProtoState::Pending.into(),
            to_state: ProtoState::Expired.into(),
            actor: domain::SUITE_ACTOR.to_owned(),
            time: Some(to_timestamp(row.expire_time)),
            reason: domain::REASON_EXPIRED.to_owned(),
        });
    }
    transitions
}

/// Records a change of `row` in approval's outbox, inside the transaction that made it.
pub async fn emit(
    conn: &mut PgConnection,
    kind: EventType,
    row: &RequestRow,
    connection: Option<uuid::Uuid>,
) -> Result<(), sqlx::Error> {
    let payload = ApprovalRequestEvent {
        r#type: kind.into(),
        approval_request: Some(request(row, row.update_time)),
        tenant_connection: connection.map(connection_name).unwrap_or_default(),
        ..ApprovalRequestEvent::default()
    };
    let event_type = format!("{EVENT_TYPE_PREFIX}{}", kind.as_str_name());
    events::append(
        conn,
        SERVICE.schema.name,
        NewEvent {
            event_type: &event_type,
            subject: &request_name(row.id),
            payload: &events::encode(&payload),
        },
    )
    .await?;
    Ok(())
}

/// The event type that records a request reaching `state`.
pub fn event_for(state: State) -> EventType {
    match state {
        State::Pending => EventType::Created,
        State::Accepted => EventType::Accepted,
        State::Rejected => EventType::Rejected,
        State::Withdrawn => EventType::Withdrawn,
        State::Expired => EventType::Expired,
    }
}

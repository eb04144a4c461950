//! Queue message bodies of the money path.

use serde::{Deserialize, Serialize};

use super::UsageEvent;

/// A `usage` queue message: one accepted `POST /usage` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBatchMessage {
    /// The tenant the events belong to (from the verified token, never from the body).
    pub tenant_id: String,
    /// The validated events.
    pub events: Vec<UsageEvent>,
    /// Receipt time, epoch milliseconds (default `occurred_at`).
    pub received_at_ms: i64,
}

/// Why a ledger entry exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettlementKind {
    /// A charge for a usage event.
    Usage,
    /// An admin adjustment.
    Adjustment,
    /// The starting grant of a new tenant.
    Grant,
}

impl SettlementKind {
    /// The wire name, also stored in the ledger.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::Adjustment => "adjustment",
            Self::Grant => "grant",
        }
    }
}

/// A `settlement` queue message: one ledger entry to append, exactly once (by `id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementMessage {
    /// Unique settlement id: `usage-{seq}`, `adjust-{adjustment id}`, `grant-{tenant}`.
    pub id: String,
    /// Whose balance changes.
    pub tenant_id: String,
    /// Signed credits (a charge is negative).
    pub delta: i64,
    /// Why.
    pub kind: SettlementKind,
    /// What it refers to (usage key, adjustment id).
    pub reference: Option<String>,
}

impl SettlementMessage {
    /// A new tenant's starting grant: one per tenant (`grant-{tenant}`), settled in the
    /// transaction that creates the tenant.
    #[must_use]
    pub fn grant(tenant_id: &str, credits: i64) -> Self {
        Self {
            id: format!("grant-{tenant_id}"),
            tenant_id: tenant_id.to_owned(),
            delta: credits,
            kind: SettlementKind::Grant,
            reference: None,
        }
    }
}

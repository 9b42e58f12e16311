//! The session engine: the only writer of the kernel maps. It derives the device, prefix and
//! session maps from the store and the policy, and applies sign-ins, grants, revocations and
//! policy reloads to both.
//!
//! Order of writes: a change is written to the kernel map first and committed to the store
//! after. If the kernel write fails, the store transaction is aborted and the kernel entries
//! written so far are restored, so the store never records a grant the kernel did not
//! receive. If the daemon dies between the two steps, the kernel contains an entry the store
//! does not. `reconcile` at the next start removes it, so no uncommitted grant survives a
//! restart and every committed one is written again. Until that restart the uncommitted entry
//! lets its pair pass, for at most the session it was granted.

mod enroll;
mod grants;
mod ops;
mod reconcile;

use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicU64},
};

use crate::{
    clock::Clock,
    config::LinkKind,
    dataplane::{DataplaneError, maps::KernelMaps},
    policy::{Policy, PolicyError, Resource},
    store::{Store, StoreError},
};

pub use enroll::EnrollReport;
pub use grants::{BatchGranted, GrantTarget, MAX_GRANT_BATCH};
pub use ops::{
    GrantedSession, ReloadReport, RevokeReport, RevokeSelector, SignInReport, SkippedResource,
};
pub use reconcile::ReconcileReport;

/// Counters of engine events, exported as metrics.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub sign_ins: AtomicU64,
    /// Devices enrolled by their first sign-in.
    pub enrollments: AtomicU64,
    /// Sessions written by sign-ins and grants.
    pub grants: AtomicU64,
    /// Sessions removed by revocations.
    pub revocations: AtomicU64,
    pub reloads: AtomicU64,
    /// Kernel writes that failed because `SESSIONS` was full.
    pub map_full: AtomicU64,
}

/// Sessions that expired more than this long ago are removed from the kernel and the store.
pub const EXPIRED_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Errors from the session engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("invalid policy ({} error(s)):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<PolicyError>),
    #[error("{what} not found{hint}")]
    NotFound { what: String, hint: String },
    #[error("{0}")]
    Denied(String),
    #[error("the grant batch is empty; name at least one device and resource")]
    EmptyBatch,
    #[error(
        "the grant batch has {count} pairs, more than the limit of {max}; split it into batches of at most {max} pairs"
    )]
    BatchTooLarge { count: usize, max: usize },
    #[error(
        "the grant batch names device {device_id} with resource {resource:?} twice; list each pair once"
    )]
    DuplicatePair { device_id: u32, resource: String },
}

/// The engine with its state. Callers serialize access (the daemon keeps it behind a mutex).
pub struct Engine<M: KernelMaps> {
    store: Arc<Store>,
    maps: M,
    clock: Arc<dyn Clock>,
    policy: Arc<Policy>,
    policy_file: String,
    link_kind: LinkKind,
    /// Resource name to id, for the resources of `policy`.
    resource_ids: HashMap<String, u32>,
    metrics: Arc<EngineMetrics>,
}

impl<M: KernelMaps> Engine<M> {
    /// Creates the engine for `policy` and assigns resource ids for its resources. Call
    /// `reconcile` next to bring the kernel maps in line.
    pub fn new(
        store: Arc<Store>,
        maps: M,
        clock: Arc<dyn Clock>,
        policy: Policy,
        policy_file: &str,
        link_kind: LinkKind,
    ) -> Result<Self, EngineError> {
        let resource_ids = assign_resource_ids(&store, &policy)?;
        Ok(Self {
            store,
            maps,
            clock,
            policy: Arc::new(policy),
            policy_file: policy_file.to_owned(),
            link_kind,
            resource_ids,
            metrics: Arc::default(),
        })
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Resource name to id, for the current policy.
    pub fn resource_ids(&self) -> &HashMap<String, u32> {
        &self.resource_ids
    }

    /// Returns the resource with id `id` in the current policy.
    pub fn resource_by_id(&self, id: u32) -> Option<&Resource> {
        let name = self
            .resource_ids
            .iter()
            .find_map(|(name, resource_id)| (*resource_id == id).then_some(name))?;
        self.policy.resource(name)
    }
}

/// Assigns (or looks up) the id of every resource of `policy` in one transaction.
fn assign_resource_ids(store: &Store, policy: &Policy) -> Result<HashMap<String, u32>, StoreError> {
    let mut txn = store.begin_write()?;
    let mut ids = HashMap::new();
    for resource in &policy.resources {
        ids.insert(resource.name.clone(), txn.resource_id(&resource.name)?);
    }
    txn.commit()?;
    Ok(ids)
}

#[cfg(test)]
mod tests;

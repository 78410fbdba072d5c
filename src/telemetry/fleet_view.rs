//! What telemetry reads of the routing state it reports on: the pools with
//! their nodes, the queue in front of each, the routes that route on the
//! engines' KV caches, the tenants' budgets and the energy figures. The
//! proxy, which owns the route table, hands this over
//! (`RouteTable::fleet_view`), so telemetry needs none of its types and
//! stays below it.

use std::sync::Arc;

use crate::energy::EnergyHandle;
use crate::fleet::{Node, Pool};
use crate::kvindex::Precise;
use crate::tenant::BudgetView;

/// The running routing state, borrowed for one tick or one `/metrics`.
pub struct FleetView<'a> {
    /// Pools in config order.
    pub pools: Vec<PoolState<'a>>,
    /// Routes with the `precise_prefix` policy.
    pub precise: Vec<PreciseRoute<'a>>,
    /// Tenant budgets of the routes that have them.
    pub budgets: Vec<BudgetView>,
    /// Energy tasks of pools with `[pools.energy]`.
    pub energy: &'a [EnergyHandle],
}

/// One pool and the admission queue in front of it.
pub struct PoolState<'a> {
    /// The pool (nodes, their load and health).
    pub pool: &'a Pool,
    /// Requests waiting for one of its nodes (the first route sending to
    /// it; `None` when no route does).
    pub queue_depth: Option<u64>,
}

/// A route routing on the engines' KV caches.
pub struct PreciseRoute<'a> {
    /// Route name.
    pub route: &'a str,
    /// Its index of the blocks each engine holds.
    pub precise: &'a Precise,
    /// The nodes of its pool, by the index's node numbers.
    pub nodes: &'a [Arc<Node>],
}

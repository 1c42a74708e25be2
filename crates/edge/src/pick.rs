//! Choosing the machine for one request: `colo_policy::pick` over the app's route-table entries,
//! and, while no machine has room, the hold queue: the request waits (its place known to the
//! app's scaler, which wakes machines for it) until a machine has room or the policy's
//! deadline passes.

use crate::edge::{lock, Edge};
use crate::headers::{COLO_FORCE_REGION, COLO_PREFER_REGION};
use crate::routes::{AppRoutes, Endpoint, RouteTable};
use crate::EdgeError;
use colo_policy::{pick, AppView, Attempts, Decision, PickRequest, PrefixKey, RegionId, RejectReason, Steer};
use http::{HeaderMap, HeaderName};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often a held request looks again when nothing else wakes it: engine reports age out
/// without any event.
const RECHECK: Duration = Duration::from_millis(200);

// === impl Edge ===

impl Edge {
    /// Picks the machine for a request to `app`, holding the request while no machine has room
    /// (none started yet, or all at their hard limit) until one does or the hold's deadline
    /// passes. `attempts` says which machines the request must avoid and whether it may wait.
    /// Before the request is held (and may wake a machine), `check` is given the app's routes
    /// and may refuse it: a bad request must cost no cold start. `table` is the route table to
    /// look at first when the caller has just read it.
    pub(crate) async fn pick(
        &self,
        app: &str,
        headers: &HeaderMap,
        attempts: &Attempts,
        prefix: &[PrefixKey],
        check: &(dyn Fn(&AppRoutes) -> Result<(), EdgeError> + Sync),
        mut table: Option<Arc<RouteTable>>,
    ) -> Result<Arc<Endpoint>, EdgeError> {
        // The route table's updates are watched only once the request must wait for one. A
        // receiver made then may report a change that the first look already saw: one look
        // more, never a change missed.
        let mut routes = None;
        let mut held = None;
        let mut served: Vec<(u64, u32)> = Vec::new();
        let mut matches: Vec<(usize, u32)> = Vec::new();
        loop {
            // Registered before looking, so a release between the look and the wait is not lost.
            let released = self.released.notified();
            let table = match table.take() {
                Some(table) => table,
                None => routes.get_or_insert_with(|| self.routes.clone()).borrow_and_update().clone(),
            };
            let Some(app_routes) = table.apps.get(app) else {
                return Err(EdgeError::UnknownApp {
                    app: app.to_string(),
                    apps: table.app_names().iter().map(|s| s.to_string()).collect(),
                });
            };
            let mut steer = steer(headers, &table)?;
            if let Some(code) = attempts.region() {
                steer.force = Some(region_id(&table, code)?);
            }
            // A machine no longer routable matches nothing.
            let only = attempts.only().map(|id| app_routes.index_of(id).unwrap_or(usize::MAX));
            let avoid: Vec<usize> = attempts.avoid().iter().filter_map(|id| app_routes.index_of(id)).collect();
            let rtt_ms = self.rtt_row(&table);
            let now_ms = self.now_ms();
            // The machines that served prompts starting like this one, if they are still here.
            if !prefix.is_empty() {
                lock(&self.prefixes).matches(prefix, now_ms, &mut served);
                matches.clear();
                matches.extend(
                    served
                        .iter()
                        .filter_map(|&(key, blocks)| Some((*app_routes.by_key.get(&key)? as usize, blocks))),
                );
            }
            let request = PickRequest {
                now_ms,
                rtt_ms: &rtt_ms,
                steer,
                prefix: &matches,
                prefix_blocks: prefix.len() as u32,
                seed: self.picks.fetch_add(1, Ordering::Relaxed),
                avoid: &avoid,
                only,
            };
            let view = AppView {
                started: &app_routes.machines,
                spans: &app_routes.spans,
                dormant: &app_routes.dormant,
            };
            match pick(&view, &request, &self.route_params(app_routes)) {
                Decision::Pick(idx) => return Ok(app_routes.machines[idx].clone()),
                Decision::Reject(RejectReason::NoMachineInRegion { region }) => {
                    return Err(EdgeError::NoRegion {
                        region: table.regions.get(usize::from(region.0)).cloned().unwrap_or_default(),
                        regions: table.regions.clone(),
                    })
                }
                // Every machine cordoned: nothing will come back by itself.
                Decision::Reject(RejectReason::NoMachines) if app_routes.fleet.is_empty() && app_routes.cordoned > 0 => {
                    return Err(EdgeError::Cordoned {
                        app: app.to_string(),
                        machines: app_routes.cordoned,
                    })
                }
                // An app with no machines at all may get some (a deploy under way): wait.
                Decision::Reject(RejectReason::NoMachines) | Decision::Hold => {}
            }
            if !attempts.may_hold() {
                return Err(self.no_machine(app));
            }
            if held.is_none() {
                check(app_routes)?;
                let bound = steer.force.and_then(|r| table.regions.get(usize::from(r.0)).cloned());
                held = Some(self.hold(app, bound, &table)?);
            }
            let Some(waiting) = &held else { continue };
            if let Some(stuck) = self.stuck(app, app_routes) {
                return Err(stuck);
            }
            tokio::select! {
                changed = routes.get_or_insert_with(|| self.routes.clone()).changed() => if changed.is_err() { return Err(self.no_machine(app)) },
                _ = released => {}
                _ = tokio::time::sleep(RECHECK) => {}
                _ = tokio::time::sleep_until(waiting.deadline) => self.still_held(app, waiting)?,
            }
        }
    }
}

/// The steering headers: `colo-force-region` (only that region) and `colo-prefer-region` (that
/// region first). A forced region the table does not know is an error; a preferred one is
/// ignored.
fn steer(headers: &HeaderMap, table: &RouteTable) -> Result<Steer, EdgeError> {
    let code = |name: &HeaderName| {
        headers
            .get(name)
            .map(|value| value.to_str().unwrap_or_default().trim().to_ascii_lowercase())
    };
    let force = match code(&COLO_FORCE_REGION) {
        Some(code) => Some(region_id(table, &code)?),
        None => None,
    };
    let prefer = code(&COLO_PREFER_REGION).and_then(|code| table.region_id(&code));
    Ok(Steer { prefer, force })
}

fn region_id(table: &RouteTable, code: &str) -> Result<RegionId, EdgeError> {
    table.region_id(code).ok_or_else(|| EdgeError::NoRegion {
        region: code.to_string(),
        regions: table.regions.clone(),
    })
}

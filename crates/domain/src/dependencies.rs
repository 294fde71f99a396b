//! Stack dependencies: a directed acyclic graph of "downstream depends on upstream".
//! Adding an edge that would close a cycle is refused with the cycle named; the
//! scheduler asks which upstream stacks a stack waits for.

use std::collections::{BTreeMap, BTreeSet};

use crate::StackId;

/// The dependency graph of all stacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependencyGraph {
    /// downstream → its direct upstream stacks.
    upstream: BTreeMap<StackId, BTreeSet<StackId>>,
}

impl DependencyGraph {
    /// The graph of these edges, `(downstream, upstream)`.
    pub fn new(edges: impl IntoIterator<Item = (StackId, StackId)>) -> Self {
        let mut upstream: BTreeMap<StackId, BTreeSet<StackId>> = BTreeMap::new();
        for (downstream, up) in edges {
            upstream.entry(downstream).or_default().insert(up);
        }
        Self { upstream }
    }

    /// The stacks `stack` depends on, directly.
    pub fn direct_upstream(&self, stack: StackId) -> impl Iterator<Item = StackId> + '_ {
        self.upstream.get(&stack).into_iter().flatten().copied()
    }

    /// Every stack `stack` depends on, directly or through others.
    pub fn all_upstream(&self, stack: StackId) -> BTreeSet<StackId> {
        let mut seen = BTreeSet::new();
        let mut pending: Vec<StackId> = self.direct_upstream(stack).collect();
        while let Some(next) = pending.pop() {
            if seen.insert(next) {
                pending.extend(self.direct_upstream(next));
            }
        }
        seen
    }

    /// The stacks that depend on `stack`, directly.
    pub fn direct_downstream(&self, stack: StackId) -> impl Iterator<Item = StackId> + '_ {
        self.upstream.iter().filter(move |(_, ups)| ups.contains(&stack)).map(|(down, _)| *down)
    }

    /// The cycle adding `downstream → upstream` would close, as the path of stacks from
    /// `downstream` back to itself; `None` when the edge is safe.
    pub fn cycle_if_added(&self, downstream: StackId, upstream: StackId) -> Option<Vec<StackId>> {
        if downstream == upstream {
            return Some(vec![downstream, downstream]);
        }
        // A cycle exists if `downstream` is already upstream of `upstream`: find that path.
        let mut path = vec![upstream];
        let mut visited = BTreeSet::new();
        if self.path_to(upstream, downstream, &mut path, &mut visited) {
            let mut cycle = vec![downstream];
            cycle.extend(path);
            return Some(cycle);
        }
        None
    }

    fn path_to(
        &self,
        from: StackId,
        target: StackId,
        path: &mut Vec<StackId>,
        visited: &mut BTreeSet<StackId>,
    ) -> bool {
        if !visited.insert(from) {
            return false;
        }
        for next in self.direct_upstream(from) {
            path.push(next);
            if next == target || self.path_to(next, target, path, visited) {
                return true;
            }
            path.pop();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> StackId {
        StackId::from_u128(n)
    }

    #[test]
    fn upstream_closure_follows_every_path() {
        // 1 → 2 → 3, 1 → 4 → 3
        let graph =
            DependencyGraph::new([(id(1), id(2)), (id(2), id(3)), (id(1), id(4)), (id(4), id(3))]);
        assert_eq!(graph.all_upstream(id(1)), BTreeSet::from([id(2), id(3), id(4)]));
        assert_eq!(graph.all_upstream(id(3)), BTreeSet::new());
        assert_eq!(graph.direct_downstream(id(3)).collect::<Vec<_>>(), vec![id(2), id(4)]);
    }

    #[test]
    fn cycles_are_found_and_named_in_order() {
        let graph = DependencyGraph::new([(id(1), id(2)), (id(2), id(3))]);
        assert_eq!(graph.cycle_if_added(id(3), id(1)), Some(vec![id(3), id(1), id(2), id(3)]));
        assert_eq!(graph.cycle_if_added(id(2), id(2)), Some(vec![id(2), id(2)]));
        assert_eq!(graph.cycle_if_added(id(1), id(3)), None, "a shortcut is not a cycle");
        assert_eq!(graph.cycle_if_added(id(4), id(1)), None);
    }
}

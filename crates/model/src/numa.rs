//! NUMA memory policy of guest_memfd files (Linux 7.3, `CONFIG_NUMA`), as
//! far as userspace observes it on a single-node machine.
//!
//! 7.3's guest_memfd inode carries a shared policy (`struct shared_policy`,
//! `mpol_set_shared_policy` from the mapping's `set_policy`) keyed by file
//! page offset: `mbind` on a mapping sets it for the file pages under the
//! range, `get_mempolicy(MPOL_F_ADDR)` reads it back through any mapping,
//! and it outlives munmap and PUNCH_HOLE (it lives with the inode). Every
//! allocation follows it; with one node (node 0) where a page lands is
//! never in question, so the model keeps only the policy.
//!
//! Validation follows `mm/mempolicy.c` in order: `sanitize_mpol_flags`
//! (mode ≥ `MPOL_MAX`, both STATIC and RELATIVE, NUMA_BALANCING outside
//! BIND/PREFERRED_MANY: EINVAL), `do_mbind` (flags outside `MPOL_MF_VALID`,
//! an unaligned start, a wrapping end: EINVAL; an empty range: 0),
//! `mpol_new` (DEFAULT with nodes, LOCAL with nodes or node flags, other
//! modes without nodes: EINVAL; PREFERRED without nodes becomes LOCAL),
//! `mpol_set_nodemask` (nodes outside the online ones leave an empty mask:
//! EINVAL). (A hole in the range would be EFAULT; both backends refuse a
//! range past the mapping before the kernel sees it.)

use std::collections::BTreeMap;

use privmem_core::memops::{
    MemPolicy, MPOL_BIND, MPOL_DEFAULT, MPOL_F_NUMA_BALANCING, MPOL_F_RELATIVE_NODES,
    MPOL_F_STATIC_NODES, MPOL_LOCAL, MPOL_MAX, MPOL_MF_VALID, MPOL_MODE_FLAGS, MPOL_PREFERRED,
    MPOL_PREFERRED_MANY,
};
use privmem_core::Errno;

/// The model machine's memory nodes: node 0 only.
pub(crate) const ONLINE_NODES: u64 = 1;

/// A validated `mbind` request, in file pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mbind {
    /// First file page.
    pub(crate) first: u64,
    /// One past the last file page.
    pub(crate) end: u64,
    /// The policy to store; `None` removes it (`MPOL_DEFAULT`).
    pub(crate) policy: Option<MemPolicy>,
}

/// Validates `mbind(map + offset, len, policy, flags)` on a mapping that
/// starts at file offset 0 and covers the range.
pub(crate) fn mbind_request(
    offset: u64,
    len: u64,
    policy: MemPolicy,
    flags: u32,
) -> Result<Option<Mbind>, Errno> {
    let (mode, mode_flags) = sanitize(policy.mode)?;
    // do_mbind
    if flags & !MPOL_MF_VALID != 0 {
        return Err(Errno::EINVAL);
    }
    if !offset.is_multiple_of(PAGE) {
        return Err(Errno::EINVAL);
    }
    // MPOL_MF_STRICT/MOVE would check or move pages already placed; with
    // one node every page is where any valid policy wants it.
    let len = len.checked_add(PAGE - 1).ok_or(Errno::EINVAL)? & !(PAGE - 1);
    let end = offset.checked_add(len).ok_or(Errno::EINVAL)?;
    if len == 0 {
        return Ok(None);
    }
    let new = mpol_new(mode, mode_flags, policy.nodes)?;
    let new = match new {
        Some(p) => Some(set_nodemask(p, mode_flags)?),
        None => None,
    };
    Ok(Some(Mbind {
        first: offset / PAGE,
        end: end / PAGE,
        policy: new,
    }))
}

const PAGE: u64 = privmem_core::PAGE_SIZE;

/// `sanitize_mpol_flags`: `(mode, mode flags)`.
fn sanitize(raw: u32) -> Result<(u32, u32), Errno> {
    let flags = raw & MPOL_MODE_FLAGS;
    let mode = raw & !MPOL_MODE_FLAGS;
    if mode >= MPOL_MAX {
        return Err(Errno::EINVAL);
    }
    if flags & MPOL_F_STATIC_NODES != 0 && flags & MPOL_F_RELATIVE_NODES != 0 {
        return Err(Errno::EINVAL);
    }
    if flags & MPOL_F_NUMA_BALANCING != 0 && mode != MPOL_BIND && mode != MPOL_PREFERRED_MANY {
        return Err(Errno::EINVAL);
    }
    Ok((mode, flags))
}

/// `mpol_new`: `None` for `MPOL_DEFAULT`.
fn mpol_new(mode: u32, flags: u32, nodes: u64) -> Result<Option<MemPolicy>, Errno> {
    let node_flags = flags & (MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES) != 0;
    match mode {
        MPOL_DEFAULT if nodes != 0 => Err(Errno::EINVAL),
        MPOL_DEFAULT => Ok(None),
        MPOL_PREFERRED if nodes == 0 && node_flags => Err(Errno::EINVAL),
        MPOL_PREFERRED if nodes == 0 => Ok(Some(MemPolicy::new(MPOL_LOCAL | flags, 0))),
        MPOL_LOCAL if nodes != 0 || node_flags => Err(Errno::EINVAL),
        MPOL_LOCAL => Ok(Some(MemPolicy::new(MPOL_LOCAL | flags, 0))),
        _ if nodes == 0 => Err(Errno::EINVAL),
        _ => Ok(Some(MemPolicy::new(mode | flags, nodes))),
    }
}

/// `mpol_set_nodemask` + the mode's `create`: the nodes the policy keeps,
/// as `get_mempolicy` reports them (the user's mask for STATIC/RELATIVE
/// policies, `mpol_store_user_nodemask`).
fn set_nodemask(p: MemPolicy, flags: u32) -> Result<MemPolicy, Errno> {
    let mode = p.mode & !MPOL_MODE_FLAGS;
    if mode == MPOL_LOCAL {
        return Ok(p);
    }
    let effective = if flags & MPOL_F_RELATIVE_NODES != 0 {
        // mpol_relative_nodemask folds the user's nodes onto the online
        // ones: any node maps onto node 0 here.
        ONLINE_NODES
    } else {
        p.nodes & ONLINE_NODES
    };
    if effective == 0 {
        return Err(Errno::EINVAL);
    }
    let kept = if mode == MPOL_PREFERRED {
        effective & effective.wrapping_neg()
    } else {
        effective
    };
    let user = flags & (MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES) != 0;
    Ok(MemPolicy::new(p.mode, if user { p.nodes } else { kept }))
}

/// A file's shared policy: file page ranges → policy (`shared_policy`'s
/// rb-tree of `sp_node`s). Ranges never overlap.
#[derive(Debug, Default)]
pub(crate) struct PolicyTree {
    /// start page → (end page, policy).
    ranges: BTreeMap<u64, (u64, MemPolicy)>,
}

impl PolicyTree {
    /// `shared_policy_replace`: `[first, end)` gets `policy` (`None`
    /// removes it), splitting ranges that straddle the edges.
    pub(crate) fn set(&mut self, first: u64, end: u64, policy: Option<MemPolicy>) {
        let hit: Vec<u64> = self
            .ranges
            .range(..end)
            .filter(|(_, (e, _))| *e > first)
            .map(|(s, _)| *s)
            .collect();
        for s in hit {
            let (e, p) = self.ranges.remove(&s).expect("listed above");
            if s < first {
                self.ranges.insert(s, (first, p));
            }
            if e > end {
                self.ranges.insert(end, (e, p));
            }
        }
        if let Some(p) = policy {
            self.ranges.insert(first, (end, p));
        }
    }

    /// `mpol_shared_policy_lookup`: the policy of file page `pgoff`.
    pub(crate) fn get(&self, pgoff: u64) -> Option<MemPolicy> {
        let (_, (end, p)) = self.ranges.range(..=pgoff).next_back()?;
        (pgoff < *end).then_some(*p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privmem_core::memops::{MPOL_INTERLEAVE, MPOL_MF_MOVE};

    const PG: u64 = PAGE;

    #[test]
    fn policy_999_is_einval() {
        let r = mbind_request(0, PG, MemPolicy::new(999, 1), 0);
        assert_eq!(r, Err(Errno::EINVAL));
    }

    #[test]
    fn interleave_on_node_0_is_kept_as_given() {
        let r = mbind_request(0, 2 * PG, MemPolicy::new(MPOL_INTERLEAVE, 1), 0);
        let m = r.unwrap().unwrap();
        assert_eq!((m.first, m.end), (0, 2));
        assert_eq!(m.policy, Some(MemPolicy::new(MPOL_INTERLEAVE, 1)));
    }

    #[test]
    fn bind_to_an_absent_node_is_einval() {
        let r = mbind_request(0, PG, MemPolicy::new(MPOL_BIND, 0b10), 0);
        assert_eq!(r, Err(Errno::EINVAL));
    }

    #[test]
    fn default_with_nodes_is_einval_and_without_removes() {
        let bad = mbind_request(0, PG, MemPolicy::new(MPOL_DEFAULT, 1), 0);
        assert_eq!(bad, Err(Errno::EINVAL));
        let ok = mbind_request(0, PG, MemPolicy::DEFAULT, 0).unwrap();
        assert_eq!(ok.unwrap().policy, None);
    }

    #[test]
    fn preferred_without_nodes_becomes_local() {
        let m = mbind_request(0, PG, MemPolicy::new(MPOL_PREFERRED, 0), 0);
        assert_eq!(
            m.unwrap().unwrap().policy,
            Some(MemPolicy::new(MPOL_LOCAL, 0))
        );
    }

    #[test]
    fn unaligned_start_and_bad_flags_fail_in_order() {
        let p = MemPolicy::new(MPOL_BIND, 1);
        assert_eq!(mbind_request(1, PG, p, 0), Err(Errno::EINVAL));
        assert_eq!(mbind_request(0, PG, p, 1 << 3), Err(Errno::EINVAL));
        let moved = mbind_request(0, PG, p, MPOL_MF_MOVE).unwrap().unwrap();
        assert_eq!((moved.first, moved.end, moved.policy), (0, 1, Some(p)));
        // A length rounds up to whole pages.
        assert_eq!(mbind_request(0, PG + 1, p, 0).unwrap().unwrap().end, 2);
        assert_eq!(mbind_request(0, 0, p, 0), Ok(None));
    }

    #[test]
    fn tree_set_splits_and_removes() {
        let mut t = PolicyTree::default();
        let a = MemPolicy::new(MPOL_BIND, 1);
        let b = MemPolicy::new(MPOL_INTERLEAVE, 1);
        t.set(0, 8, Some(a));
        t.set(2, 4, Some(b));
        assert_eq!(t.get(1), Some(a));
        assert_eq!(t.get(2), Some(b));
        assert_eq!(t.get(4), Some(a));
        t.set(0, 3, None);
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(3), Some(b));
        assert_eq!(t.get(8), None);
    }
}

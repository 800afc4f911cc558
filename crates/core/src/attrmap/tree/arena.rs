//! Chunked node arenas addressed by `u32`.

/// "No node" (and the padding of unused child slots).
pub(super) const NIL: u32 = u32::MAX;
/// Nodes per arena chunk (16 KiB of leaves).
const CHUNK: usize = 256;
/// Nodes in the first chunk when it is first allocated: it doubles up to
/// [`CHUNK`], so a map of a few ranges holds a few hundred bytes, not 16
/// KiB (the engine and the model each keep one map per stripe).
const FIRST: usize = 4;

/// A node type, with the value a fresh node holds. A constant, not a field
/// of each arena: the tree's three arenas would otherwise carry 512 bytes
/// of templates (a leaf line, an extension block, an inner node) in every
/// map, and the engine and the model keep one map per stripe (16 each).
pub(super) trait Node: Copy {
    /// What [`Arena::alloc`] and [`Flat::alloc`] hand out.
    const EMPTY: Self;
}

/// The id of the node at `index`: below [`NIL`], which means "no node".
fn node_id(index: usize) -> u32 {
    u32::try_from(index)
        .ok()
        .filter(|&id| id != NIL)
        .expect("fewer than 2^32 - 1 nodes")
}

/// A chunked arena of `T` with a free list. Past the first chunk, growth
/// allocates one more chunk and never moves nodes, so no insertion ever
/// pays for copying the whole tree (a `Vec` arena would, on doubling: ~10
/// ms at a million ranges), and the slack is at most one partly used
/// chunk. The first chunk starts at [`FIRST`] nodes and doubles to
/// [`CHUNK`] (copying at most 8 KiB).
#[derive(Clone, Debug)]
pub(super) struct Arena<T: Node> {
    /// Every chunk but a growing first one holds [`CHUNK`] nodes.
    chunks: Vec<Box<[T]>>,
    used: usize,
    free: Vec<u32>,
}

impl<T: Node> Arena<T> {
    pub(super) fn new() -> Arena<T> {
        Arena {
            chunks: Vec::new(),
            used: 0,
            free: Vec::new(),
        }
    }

    /// A node holding the empty value.
    pub(super) fn alloc(&mut self) -> u32 {
        if let Some(id) = self.free.pop() {
            *self.get_mut(id) = T::EMPTY;
            return id;
        }
        if self.used == self.capacity() {
            self.grow();
        }
        self.used += 1;
        node_id(self.used - 1)
    }

    /// Nodes the chunks hold: a first chunk may be short.
    fn capacity(&self) -> usize {
        match self.chunks.as_slice() {
            [first] => first.len(),
            chunks => chunks.len() * CHUNK,
        }
    }

    /// Room for one more node: a first chunk, a doubled first chunk, or
    /// one more full chunk.
    fn grow(&mut self) {
        let empty = T::EMPTY;
        match self.chunks.as_mut_slice() {
            [] => self.chunks.push(vec![empty; FIRST].into_boxed_slice()),
            [first] if first.len() < CHUNK => {
                let mut grown = vec![empty; first.len() * 2];
                grown[..first.len()].copy_from_slice(first);
                *first = grown.into_boxed_slice();
            }
            _ => self.chunks.push(vec![empty; CHUNK].into_boxed_slice()),
        }
    }

    pub(super) fn release(&mut self, id: u32) {
        self.free.push(id);
    }

    #[inline]
    pub(super) fn get(&self, id: u32) -> &T {
        let i = id as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: u32) -> &mut T {
        let i = id as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum::<usize>() * std::mem::size_of::<T>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[T]>>()
            + self.free.capacity() * 4
    }
}

/// A flat arena of `T` with a free list: one load per access, where
/// [`Arena`] needs two (the chunk, then the node). For the inner nodes,
/// whose chain of dependent loads every lookup walks; there is one per ~11
/// leaves, so a growth copy stays small (~1 MiB at a million ranges).
#[derive(Clone, Debug)]
pub(super) struct Flat<T: Node> {
    nodes: Vec<T>,
    free: Vec<u32>,
}

impl<T: Node> Flat<T> {
    pub(super) fn new() -> Flat<T> {
        Flat {
            nodes: Vec::new(),
            free: Vec::new(),
        }
    }

    /// A node holding the empty value.
    pub(super) fn alloc(&mut self) -> u32 {
        if let Some(id) = self.free.pop() {
            *self.get_mut(id) = T::EMPTY;
            return id;
        }
        self.nodes.push(T::EMPTY);
        node_id(self.nodes.len() - 1)
    }

    pub(super) fn release(&mut self, id: u32) {
        self.free.push(id);
    }

    #[inline]
    pub(super) fn get(&self, id: u32) -> &T {
        &self.nodes[id as usize]
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: u32) -> &mut T {
        &mut self.nodes[id as usize]
    }

    /// Nodes in use.
    pub(super) fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<T>() + self.free.capacity() * 4
    }
}

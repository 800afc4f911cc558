//! guest_memfd: the file object (`kvm_gmem` + its inode), its handle token,
//! file operations (docs/semantics/guest-memfd.md) and host mappings.
//!
//! Lifetime, as in the kernel:
//! ```text
//!   GuestMemfd (fd) ──token──▶ GmemHandle ──Arc──▶ GmemFile ──GmemOwner──▶ VmInner
//!   ModelGmemMapping ─────────────────────────┘ (a mapping holds the file)
//!   memslot ────Weak──────────────────────────▶ GmemFile   (no reference)
//! ```
//! The file holds the VM (`kvm_get_kvm`), so fallocate keeps working after the
//! VM handle is dropped (selftest C5). A memslot holds only a `Weak`: when the
//! last fd and the last mapping go away the file is released
//! (`kvm_gmem_release`) and the slot's binding is dead — later guest faults
//! there are EFAULT memory faults.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use privmem_core::backend::{
    FileIo, FileStat, HostFault, HostMemory, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
};
use privmem_core::error::Result;
use privmem_core::{BackendError, Errno, GmemFlags, GuestMemfd, PAGE_SIZE};
use privmem_core::{MmapOptions, MmapProt, MmapSharing};

use crate::backing::Memfd;
use crate::gmem_ptes::{self, Ptes, SharedPtes};
use crate::inject::{InjectOp, Injector};
use crate::profile::KernelProfile;

/// `EFBIG`.
const EFBIG: Errno = Errno(27);
/// `S_IFREG | 0600`.
pub(crate) const GMEM_MODE: u32 = 0o100600;
/// VFS `FALLOC_FL_MODE_MASK` bits (6.18, incl. `WRITE_ZEROES`).
const FALLOC_FL_COLLAPSE_RANGE: i32 = 0x08;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;
const FALLOC_FL_INSERT_RANGE: i32 = 0x20;
const FALLOC_FL_UNSHARE_RANGE: i32 = 0x40;
const FALLOC_FL_WRITE_ZEROES: i32 = 0x80;
const FALLOC_FL_MODE_MASK: i32 = FALLOC_FL_PUNCH_HOLE
    | FALLOC_FL_COLLAPSE_RANGE
    | FALLOC_FL_ZERO_RANGE
    | FALLOC_FL_INSERT_RANGE
    | FALLOC_FL_UNSHARE_RANGE
    | FALLOC_FL_WRITE_ZEROES;

static NEXT_INO: AtomicU64 = AtomicU64::new(0x1000);

type Registry = Mutex<HashMap<(u64, u64), Weak<GmemFile>>>;

/// Every live model guest_memfd, by the `(st_dev, st_ino)` of its memfd, so
/// a raw or borrowed fd can be recognised as a guest_memfd (`file->f_op ==
/// &kvm_gmem_fops`).
fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// A binding of a file page range to a memslot.
#[derive(Clone, Copy, Debug)]
struct Binding {
    end: u64,
    vm_id: u64,
    /// Slot number (`as_id << 16 | id`).
    slot: u32,
}

/// The VM a guest_memfd belongs to. The file holds a reference on it, as
/// the kernel's holds its `struct kvm` (`kvm_get_kvm` in
/// `__kvm_gmem_create`); only the VM's id and profile are read here, so
/// this module does not depend on the VM's state (which refers back to
/// its files).
#[derive(Debug)]
pub(crate) struct GmemOwner {
    /// The VM's id (a binding to another VM's memslot is refused).
    pub(crate) id: u64,
    /// The VM's kernel profile.
    pub(crate) profile: KernelProfile,
    /// The reference that keeps the VM alive while the file is open.
    pub(crate) _vm: Arc<dyn std::any::Any + Send + Sync>,
}

/// The kernel-side guest_memfd file and inode.
#[derive(Debug)]
pub(crate) struct GmemFile {
    ino: u64,
    identity: (u64, u64),
    pub(crate) owner: GmemOwner,
    pub(crate) mem: Memfd,
    pub(crate) flags: GmemFlags,
    /// start pgoff → binding (`gmem->bindings` xarray, coalesced).
    bindings: Mutex<BTreeMap<u64, Binding>>,
    /// Hardware-poisoned file pages (pgoff).
    poison: Mutex<BTreeSet<u64>>,
    /// The NUMA policy per file page (7.3 `mbind` through a mapping).
    pub(crate) policy: Mutex<crate::numa::PolicyTree>,
    /// The page tables of the file's live host mappings (`i_mmap`), for
    /// hardware poison and punch-hole.
    maps: Mutex<Vec<Weak<Mutex<Ptes>>>>,
}

/// The token stored in a [`GuestMemfd`]: every dup and every mapping holds
/// one `Arc` of it.
#[derive(Debug)]
pub(crate) struct GmemHandle {
    pub(crate) file: Arc<GmemFile>,
}

impl Drop for GmemFile {
    fn drop(&mut self) {
        let mut r = registry().lock().expect("gmem registry");
        if r.get(&self.identity).is_some_and(|w| w.strong_count() == 0) {
            r.remove(&self.identity);
        }
    }
}

/// Ops names, as the errors print them.
pub(crate) const OP_CREATE: &str = "KVM_CREATE_GUEST_MEMFD";
const OP_FALLOCATE: &str = "fallocate";
const OP_MMAP: &str = "mmap";

fn not_model(op: &'static str) -> BackendError {
    BackendError::Invalid {
        op,
        why: "not a guest_memfd created by the model".into(),
    }
}

/// The file behind a model `GuestMemfd`.
pub(crate) fn file_of(gmem: &GuestMemfd) -> Option<Arc<GmemFile>> {
    let token = gmem.token()?;
    let any: &(dyn Any + Send + Sync) = token.as_ref();
    any.downcast_ref::<GmemHandle>().map(|h| h.file.clone())
}

fn lookup(identity: (u64, u64)) -> Option<Arc<GmemFile>> {
    let r = registry().lock().expect("gmem registry");
    r.get(&identity).and_then(Weak::upgrade)
}

/// `fget(fd)` + `f_op == &kvm_gmem_fops` for an open fd: `Ok(None)` if it is
/// not a guest_memfd.
pub(crate) fn resolve_fd(fd: BorrowedFd<'_>) -> Result<Option<Arc<GmemFile>>, Errno> {
    let st = rustix::fs::fstat(fd).map_err(|_| Errno::EBADF)?;
    Ok(lookup((st.st_dev, st.st_ino)))
}

/// As [`resolve_fd`] for a raw fd number: EBADF if it is not open.
pub(crate) fn resolve_raw(fd: i32) -> Result<Option<Arc<GmemFile>>, Errno> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    let md = std::fs::metadata(format!("/proc/self/fd/{fd}")).map_err(|_| Errno::EBADF)?;
    Ok(lookup((md.dev(), md.ino())))
}

impl GmemFile {
    /// `__kvm_gmem_create`: the file and the `GuestMemfd` handle for it.
    /// Arguments are already validated.
    pub(crate) fn create(owner: GmemOwner, size: u64, flags: GmemFlags) -> Result<GuestMemfd> {
        let os = |e| BackendError::os(OP_CREATE, e);
        let mem = Memfd::create("privmem-gmem", size).map_err(os)?;
        let identity = mem.identity().map_err(os)?;
        let fd = mem
            .dup()
            .map_err(|e| BackendError::os(OP_CREATE, Errno::from_io(&e)))?;
        let file = Arc::new(GmemFile {
            ino: NEXT_INO.fetch_add(1, Ordering::Relaxed),
            identity,
            owner,
            mem,
            flags,
            bindings: Mutex::default(),
            poison: Mutex::default(),
            policy: Mutex::default(),
            maps: Mutex::default(),
        });
        registry()
            .lock()
            .expect("gmem registry")
            .insert(identity, Arc::downgrade(&file));
        let token: Arc<dyn Any + Send + Sync> = Arc::new(GmemHandle { file });
        Ok(GuestMemfd::with_token(fd, size, flags, token))
    }

    /// `i_size`.
    pub(crate) fn size(&self) -> u64 {
        self.mem.size()
    }

    /// The unique inode number reported by `fstat`.
    pub(crate) fn ino(&self) -> u64 {
        self.ino
    }

    /// True if the file was created with `GUEST_MEMFD_FLAG_MMAP`.
    pub(crate) fn supports_mmap(&self) -> bool {
        self.flags.contains(GmemFlags::MMAP)
    }

    /// True if host faults are allowed (`GUEST_MEMFD_FLAG_INIT_SHARED`).
    pub(crate) fn init_shared(&self) -> bool {
        self.flags.contains(GmemFlags::INIT_SHARED)
    }

    /// Binds file pages `[start, start+npages)` to `(vm, slot)`; EEXIST if
    /// any page is already bound (`kvm_gmem_commit_memory_region`).
    pub(crate) fn bind(&self, start: u64, npages: u64, vm_id: u64, slot: u32) -> Result<(), Errno> {
        let end = start + npages;
        let mut b = self.bindings.lock().expect("bindings");
        let before = b.range(..end).next_back();
        if before.is_some_and(|(_, x)| x.end > start) {
            return Err(Errno::EEXIST);
        }
        b.insert(start, Binding { end, vm_id, slot });
        Ok(())
    }

    /// Removes the binding that starts at `start` for `(vm, slot)`.
    pub(crate) fn unbind(&self, start: u64, vm_id: u64, slot: u32) {
        let mut b = self.bindings.lock().expect("bindings");
        if b.get(&start)
            .is_some_and(|x| x.vm_id == vm_id && x.slot == slot)
        {
            b.remove(&start);
        }
    }

    /// Number of live bindings.
    pub(crate) fn binding_count(&self) -> usize {
        self.bindings.lock().expect("bindings").len()
    }

    /// Marks file page `pgoff` hardware-poisoned (`memory_failure`): the
    /// folio stays, poisoned, and every mapping's present entry for it
    /// becomes a hwpoison entry ([`crate::gmem_ptes`]).
    pub(crate) fn poison_page(&self, pgoff: u64) {
        self.poison.lock().expect("poison").insert(pgoff);
        self.each_map(|p| p.poison(pgoff));
    }

    /// Registers a new mapping's page tables.
    fn add_map(&self, ptes: &SharedPtes) {
        let mut maps = self.maps.lock().expect("gmem maps");
        maps.retain(|w| w.strong_count() > 0);
        maps.push(Arc::downgrade(ptes));
    }

    /// Applies `f` to every live mapping's page tables.
    fn each_map(&self, mut f: impl FnMut(&mut Ptes)) {
        let maps = self.maps.lock().expect("gmem maps");
        for p in maps.iter().filter_map(Weak::upgrade) {
            f(&mut gmem_ptes::lock(&p));
        }
    }

    /// The first poisoned page in `[first, first+npages)`.
    pub(crate) fn first_poisoned(&self, first: u64, npages: u64) -> Option<u64> {
        let p = self.poison.lock().expect("poison");
        if p.is_empty() {
            return None;
        }
        p.range(first..first.saturating_add(npages)).next().copied()
    }

    fn clear_poison(&self, first: u64, end: u64) {
        let mut p = self.poison.lock().expect("poison");
        if p.is_empty() {
            return;
        }
        let hit: Vec<u64> = p.range(first..end).copied().collect();
        for pg in hit {
            p.remove(&pg);
        }
    }

    /// `vfs_fallocate` + `kvm_gmem_fallocate` with raw arguments.
    ///
    /// Punching also clears hardware poison in the range: truncation removes
    /// the poisoned folio from the file, so the next fault gets a fresh page
    /// (verified in the 7.3 rig, conformance H1). Host mappings keep their
    /// hwpoison entries ([`crate::gmem_ptes`]).
    pub(crate) fn fallocate(&self, inj: &Injector, mode: i32, offset: i64, len: i64) -> Result<()> {
        let err = |e| Err(BackendError::os(OP_FALLOCATE, e));
        // vfs_fallocate()
        if offset < 0 || len <= 0 {
            return err(Errno::EINVAL);
        }
        if vfs_mode_invalid(mode) {
            return err(Errno::EOPNOTSUPP);
        }
        if offset.checked_add(len).is_none() {
            return err(EFBIG);
        }
        // kvm_gmem_fallocate()
        if mode & FALLOC_FL_KEEP_SIZE == 0
            || mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0
        {
            return err(Errno::EOPNOTSUPP);
        }
        let (off, len) = (offset as u64, len as u64);
        if off % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return err(Errno::EINVAL);
        }
        let punch = mode & FALLOC_FL_PUNCH_HOLE != 0;
        if !punch && off + len > self.size() {
            return err(Errno::EINVAL);
        }
        if let Some(e) = inj.check(InjectOp::Fallocate) {
            return err(e);
        }
        if !punch && len / 2 > mem_available() {
            // The kernel would allocate folio by folio until it fails with
            // ENOMEM (or the OOM killer strikes); the model refuses up front
            // so a test allocating a huge sparse file cannot take the machine.
            return err(Errno::ENOMEM);
        }
        if punch {
            self.mem
                .punch(off, len)
                .map_err(|e| BackendError::os(OP_FALLOCATE, e))?;
            let (first, end) = (off / PAGE_SIZE, (off + len) / PAGE_SIZE);
            self.clear_poison(first, end);
            self.each_map(|p| p.zap_present(first, end));
            Ok(())
        } else {
            self.mem
                .allocate(off, len)
                .map_err(|e| BackendError::os(OP_FALLOCATE, e))
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (unbounded if unknown).
fn mem_available() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return u64::MAX;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kb| kb.saturating_mul(1024))
}

/// The VFS mode checks of `vfs_fallocate` (all EOPNOTSUPP).
fn vfs_mode_invalid(mode: i32) -> bool {
    if mode & !(FALLOC_FL_MODE_MASK | FALLOC_FL_KEEP_SIZE) != 0 {
        return true;
    }
    let keep = mode & FALLOC_FL_KEEP_SIZE != 0;
    match mode & FALLOC_FL_MODE_MASK {
        0 | FALLOC_FL_UNSHARE_RANGE | FALLOC_FL_ZERO_RANGE => false,
        FALLOC_FL_PUNCH_HOLE => !keep,
        FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE | FALLOC_FL_WRITE_ZEROES => keep,
        _ => true,
    }
}

/// `fallocate` on a model guest_memfd handle.
pub(crate) fn fallocate(
    inj: &Injector,
    gmem: &GuestMemfd,
    mode: i32,
    offset: i64,
    len: i64,
) -> Result<()> {
    let file = file_of(gmem).ok_or_else(|| not_model(OP_FALLOCATE))?;
    file.fallocate(inj, mode, offset, len)
}

/// `read`/`write` → EINVAL (no `FMODE_CAN_READ/WRITE`); `pread`/`pwrite`/
/// `lseek` → ESPIPE (`FMODE_PREAD/PWRITE/LSEEK` are not set).
pub(crate) fn file_io(gmem: &GuestMemfd, io: FileIo) -> Result<usize> {
    file_of(gmem).ok_or_else(|| not_model("file io"))?;
    let (op, errno) = match io {
        FileIo::Read => ("read", Errno::EINVAL),
        FileIo::Write => ("write", Errno::EINVAL),
        FileIo::Pread => ("pread", Errno::ESPIPE),
        FileIo::Pwrite => ("pwrite", Errno::ESPIPE),
        FileIo::Lseek => ("lseek", Errno::ESPIPE),
    };
    Err(BackendError::os(op, errno))
}

/// `ftruncate` → EINVAL (`kvm_gmem_setattr`).
pub(crate) fn truncate(gmem: &GuestMemfd) -> Result<()> {
    file_of(gmem).ok_or_else(|| not_model("ftruncate"))?;
    Err(BackendError::os("ftruncate", Errno::EINVAL))
}

/// `fstat`.
pub(crate) fn stat(gmem: &GuestMemfd) -> Result<FileStat> {
    let file = file_of(gmem).ok_or_else(|| not_model("fstat"))?;
    Ok(FileStat {
        size: file.size(),
        mode: GMEM_MODE,
        blksize: PAGE_SIZE,
        ino: file.ino(),
    })
}

/// `mmap(NULL, len, prot, flags, gmem, 0)` with the protection and sharing
/// of `opts`. `do_mmap` first (a zero or overflowing length; 7.3: PROT_EXEC
/// on the noexec guest_memfd filesystem is EPERM), then `kvm_gmem_mmap`
/// (no `GUEST_MEMFD_FLAG_MMAP`: ENODEV, which is every 6.12 file; not
/// `MAP_SHARED`: EINVAL).
pub(crate) fn mmap(
    inj: &Injector,
    gmem: &GuestMemfd,
    len: u64,
    opts: MmapOptions,
) -> Result<ModelGmemMapping> {
    let file = file_of(gmem).ok_or_else(|| not_model(OP_MMAP))?;
    let err = |e| Err(BackendError::os(OP_MMAP, e));
    // do_mmap: len 0 or overflowing the address space → EINVAL / ENOMEM.
    if len == 0 {
        return err(Errno::EINVAL);
    }
    let Some(len) = privmem_core::types::checked_align_up(len, PAGE_SIZE) else {
        return err(Errno::ENOMEM);
    };
    if len > crate::profile::TASK_SIZE_MAX {
        return err(Errno::ENOMEM);
    }
    if opts.prot == MmapProt::ReadWriteExec && file.owner.profile.gmem_mmap_noexec() {
        return err(Errno::EPERM);
    }
    if !file.supports_mmap() {
        return err(Errno::ENODEV);
    }
    if opts.sharing != MmapSharing::Shared {
        return err(Errno::EINVAL);
    }
    if let Some(e) = inj.check(InjectOp::Mmap) {
        return err(e);
    }
    let token = gmem.token().expect("file_of succeeded").clone();
    let ptes = SharedPtes::default();
    file.add_map(&ptes);
    Ok(ModelGmemMapping {
        _token: token,
        file,
        len,
        ptes,
    })
}

/// A host `mmap` of a guest_memfd. Holds a reference on the file.
///
/// Accesses beyond the file size, to a file without `INIT_SHARED`, or to a
/// poisoned page return [`HostFault`] (the model's SIGBUS); accesses past the
/// mapping length fault as SIGSEGV. Bytes before the faulting one are transferred.
#[derive(Debug)]
pub struct ModelGmemMapping {
    _token: Arc<dyn Any + Send + Sync>,
    pub(crate) file: Arc<GmemFile>,
    pub(crate) len: u64,
    /// This mapping's page tables (present and hwpoison entries).
    pub(crate) ptes: SharedPtes,
}

impl ModelGmemMapping {
    /// How many bytes from `offset` (of `want`) can be accessed before a fault.
    ///
    /// The fault is a `SIGSEGV` past the mapping's end (no VMA there) and a
    /// `SIGBUS` inside it (`kvm_gmem_fault_user_mapping`: beyond `i_size`,
    /// a file without `INIT_SHARED`; a poisoned page or a hwpoison entry).
    /// The pages before the fault are faulted in (present entries).
    fn accessible(&self, offset: u64, want: u64) -> (u64, Option<HostFault>) {
        if want == 0 {
            return (0, None);
        }
        if offset >= self.len {
            return (0, Some(HostFault::segv(offset)));
        }
        if !self.file.init_shared() {
            return (0, Some(HostFault::bus(offset)));
        }
        let size = self.file.size();
        if offset >= size {
            return (0, Some(HostFault::bus(offset)));
        }
        let limit = self.len.min(size);
        let mut ok = want.min(limit - offset);
        let first = offset / PAGE_SIZE;
        let last = (offset + ok - 1) / PAGE_SIZE;
        let mut poisoned = false;
        let in_file = self.file.first_poisoned(first, last - first + 1);
        let in_ptes = gmem_ptes::lock(&self.ptes).first_hwpoison(first, last + 1);
        if let Some(p) = in_file.into_iter().chain(in_ptes).min() {
            ok = (p * PAGE_SIZE).saturating_sub(offset);
            poisoned = true;
        }
        if ok > 0 {
            let end = (offset + ok).div_ceil(PAGE_SIZE);
            gmem_ptes::lock(&self.ptes).fault_in(first, end);
        }
        let end = offset + ok;
        let fault = (ok < want).then_some(if poisoned || end < self.len {
            HostFault::bus(end)
        } else {
            HostFault::segv(end)
        });
        (ok, fault)
    }

    /// The file size (`i_size`).
    pub fn file_size(&self) -> u64 {
        self.file.size()
    }
}

fn io_fault(offset: u64) -> impl Fn(Errno) -> HostFault {
    move |_| HostFault::bus(offset)
}

impl HostMemory for ModelGmemMapping {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HostFault> {
        let (ok, fault) = self.accessible(offset, buf.len() as u64);
        self.file
            .mem
            .read_at(offset, &mut buf[..ok as usize])
            .map_err(io_fault(offset))?;
        fault.map_or(Ok(()), Err)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), HostFault> {
        let (ok, fault) = self.accessible(offset, data.len() as u64);
        self.file
            .mem
            .write_at(offset, &data[..ok as usize])
            .map_err(io_fault(offset))?;
        fault.map_or(Ok(()), Err)
    }

    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), HostFault> {
        let (ok, fault) = self.accessible(offset, len);
        if ok > 0 {
            let mut v = Vec::new();
            let buf = crate::backing::aligned(&mut v, ok.min(64 << 10) as usize);
            buf.fill(byte);
            self.file
                .mem
                .fill_at(offset, ok, buf)
                .map_err(io_fault(offset))?;
        }
        fault.map_or(Ok(()), Err)
    }
}

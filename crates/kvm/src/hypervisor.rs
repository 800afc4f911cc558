//! [`KvmHypervisor`]: `/dev/kvm` plus the guest_memfd file operations.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use kvm_ioctls::Kvm;
use privmem_core::{
    Advice, BackendError, Cap, EmulationCounts, Errno, FileIo, FileStat, GuestMemfd, Hypervisor,
    MemPolicy, MmapOptions, Quirks, VmType,
};

use crate::mem::KvmMapping;
use crate::memops;
use crate::options::KvmOptions;
use crate::state::VmConfig;
use crate::sys::{self, kvm_err, os_err};
use crate::vm::KvmVm;

/// Entries requested from `KVM_GET_SUPPORTED_CPUID`.
const CPUID_ENTRIES: usize = 256;

/// The host's KVM (`/dev/kvm`).
#[derive(Debug)]
pub struct KvmHypervisor {
    kvm: Kvm,
    options: KvmOptions,
    config: VmConfig,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm` with `options`, which say everything about the host
    /// and the process that `open` would otherwise have to guess: it reads
    /// no environment variable and no file, and changes process-wide state
    /// only as `options.kick` says ([`crate::KickSignal::Install`] installs
    /// a signal handler). [`KvmOptions::probe`] finds the host's options.
    ///
    /// # Errors
    /// `Os { op: "open(/dev/kvm)", .. }` when the device cannot be opened
    /// (missing module, permissions); `Invalid { op: "kick signal", .. }`
    /// (or `Os { op: "sigaction", .. }`) when `options.kick` names a signal
    /// that cannot be used.
    pub fn open(options: KvmOptions) -> Result<Self, BackendError> {
        let kvm = Kvm::new().map_err(|e| kvm_err("open(/dev/kvm)", &e))?;
        let kick_signal = options.kick.prepare()?;
        // Guests get the host's supported CPUID, as every VMM does; it is
        // optional (the guest code needs no feature bits), so a failure
        // only means the vCPU keeps KVM's default (empty) CPUID.
        let cpuid = kvm.get_supported_cpuid(CPUID_ENTRIES).ok().map(Arc::new);
        Ok(KvmHypervisor {
            kvm,
            options,
            config: VmConfig {
                transport: options.resolved_transport(),
                gmem_hva: options.quirks.gmem_hva,
                quirks: options.quirks,
                cpuid,
                kick_signal,
                emulation: Arc::default(),
            },
        })
    }

    /// The options this hypervisor was opened with.
    pub fn options(&self) -> KvmOptions {
        self.options
    }

    /// How guest code issues `KVM_HC_MAP_GPA_RANGE` on this host.
    pub fn transport(&self) -> &'static str {
        self.config.transport.name()
    }

    /// `KVM_GET_API_VERSION` (12).
    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// `KVM_CHECK_EXTENSION` with a raw capability number at system scope.
    ///
    /// # Errors
    /// `Os { op: "KVM_CHECK_EXTENSION", .. }` if the ioctl fails.
    pub fn check_extension_raw(&self, cap: u32) -> Result<u64, BackendError> {
        sys::check_extension(sys::fd_of(&self.kvm), cap)
    }
}

fn gmem_fd(g: &GuestMemfd) -> BorrowedFd<'_> {
    g.as_fd()
}

impl Hypervisor for KvmHypervisor {
    type Vm = KvmVm;
    type Mapping = KvmMapping;

    fn name(&self) -> &'static str {
        "kvm"
    }

    fn check_extension(&self, cap: Cap) -> Result<u64, BackendError> {
        self.check_extension_raw(cap.number())
    }

    fn create_vm(&self, ty: VmType) -> Result<KvmVm, BackendError> {
        self.create_vm_raw(ty.kvm_type())
    }

    fn create_vm_raw(&self, ty: u64) -> Result<KvmVm, BackendError> {
        let fd = self
            .kvm
            .create_vm_with_type(ty)
            .map_err(|e| kvm_err("KVM_CREATE_VM", &e))?;
        Ok(KvmVm::new(fd, ty, self.config.clone()))
    }

    fn gmem_fallocate(
        &self,
        gmem: &GuestMemfd,
        mode: i32,
        offset: i64,
        len: i64,
    ) -> Result<(), BackendError> {
        // SAFETY: fallocate on a borrowed, open fd; no memory arguments.
        let r = unsafe { libc::fallocate(gmem_fd(gmem).as_raw_fd(), mode, offset, len) };
        if r < 0 {
            return Err(os_err("fallocate"));
        }
        Ok(())
    }

    fn gmem_file_io(&self, gmem: &GuestMemfd, io: FileIo) -> Result<usize, BackendError> {
        let fd = gmem_fd(gmem).as_raw_fd();
        let mut buf = [0u8; 64];
        let p = buf.as_mut_ptr().cast::<libc::c_void>();
        let (r, op) = match io {
            // SAFETY: `buf` is a live 64-byte buffer for every call below.
            FileIo::Read => (unsafe { libc::read(fd, p, buf.len()) }, "read"),
            // SAFETY: as above (only read by the kernel).
            FileIo::Write => (unsafe { libc::write(fd, p, buf.len()) }, "write"),
            // SAFETY: as above.
            FileIo::Pread => (unsafe { libc::pread(fd, p, buf.len(), 0) }, "pread"),
            // SAFETY: as above (only read by the kernel).
            FileIo::Pwrite => (unsafe { libc::pwrite(fd, p, buf.len(), 0) }, "pwrite"),
            FileIo::Lseek => {
                // SAFETY: lseek takes no memory arguments.
                let off = unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
                (off as isize, "lseek")
            }
        };
        usize::try_from(r).map_err(|_| os_err(op))
    }

    fn gmem_truncate(&self, gmem: &GuestMemfd, len: u64) -> Result<(), BackendError> {
        let len =
            libc::off_t::try_from(len).map_err(|_| BackendError::os("ftruncate", Errno::EINVAL))?;
        // SAFETY: ftruncate on a borrowed, open fd; no memory arguments.
        if unsafe { libc::ftruncate(gmem_fd(gmem).as_raw_fd(), len) } < 0 {
            return Err(os_err("ftruncate"));
        }
        Ok(())
    }

    fn gmem_stat(&self, gmem: &GuestMemfd) -> Result<FileStat, BackendError> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is a writable `struct stat` the kernel fills on success.
        if unsafe { libc::fstat(gmem_fd(gmem).as_raw_fd(), st.as_mut_ptr()) } < 0 {
            return Err(os_err("fstat"));
        }
        // SAFETY: fstat returned 0, so it initialized `st`.
        let st = unsafe { st.assume_init() };
        Ok(FileStat {
            size: st.st_size as u64,
            mode: st.st_mode,
            blksize: st.st_blksize as u64,
            ino: st.st_ino,
        })
    }

    fn gmem_mmap(
        &self,
        gmem: &GuestMemfd,
        len: u64,
        shared: bool,
    ) -> Result<KvmMapping, BackendError> {
        KvmMapping::new(gmem_fd(gmem), len, shared)
    }

    fn quirks(&self) -> Quirks {
        self.options.quirks
    }

    fn emulations(&self) -> EmulationCounts {
        self.config.emulation.snapshot()
    }

    fn gmem_mmap_with(
        &self,
        gmem: &GuestMemfd,
        len: u64,
        opts: MmapOptions,
    ) -> Result<KvmMapping, BackendError> {
        memops::mmap_gmem(gmem_fd(gmem), len, opts)
    }

    fn gmem_mbind(
        &self,
        map: &KvmMapping,
        offset: u64,
        len: u64,
        policy: MemPolicy,
        flags: u32,
    ) -> Result<(), BackendError> {
        memops::mbind(map, offset, len, policy, flags)
    }

    fn gmem_get_mempolicy(&self, map: &KvmMapping, offset: u64) -> Result<MemPolicy, BackendError> {
        memops::get_mempolicy(map, offset)
    }

    fn gmem_madvise(
        &self,
        map: &KvmMapping,
        offset: u64,
        len: u64,
        advice: Advice,
    ) -> Result<(), BackendError> {
        memops::madvise(map, offset, len, advice)
    }

    /// `madvise(MADV_HWPOISON)` on the page, from a forked child whose
    /// `SIGBUS` never reaches this process (`privmem_mem::hwpoison`).
    /// `Unsupported` where the kernel or host cannot inject (no
    /// `CAP_SYS_ADMIN`, no `CONFIG_MEMORY_FAILURE`, PVM).
    fn gmem_poison(&self, map: &KvmMapping, offset: u64) -> Result<(), BackendError> {
        crate::poison::poison_mapping(map, offset, self.options.quirks)
    }
}

# rig/kernel.sh — sourced by rig/run: the per-kernel recipes, fetching the
# Debian kernel source without touching the system's apt sources, and the
# cached kernel + selftest build (with progress on stderr).
#
# Needs from rig/run: log, die_setup, as_root, CACHE_ROOT, JOBS, KERNEL.

RIG_RECIPE=4   # bump to invalidate cached kernels after changing the build recipe

# ---------------------------------------------------------------- recipes
# Config fragment applied on top of x86_64_defconfig.  Everything in
# KCONFIG_REQUIRE must be =y after olddefconfig or the build fails loudly.
KCONFIG_ENABLE=(EXPERT VIRTUALIZATION KVM KVM_AMD KVM_SW_PROTECTED_VM DEVTMPFS
    DEVTMPFS_MOUNT BLK_DEV_INITRD RD_GZIP TMPFS TRANSPARENT_HUGEPAGE
    SERIAL_8250 SERIAL_8250_CONSOLE MEMFD_CREATE HUGETLBFS PROC_FS SYSFS
    CGROUPS MEMCG)
KCONFIG_DISABLE=(DRM SOUND WLAN WIRELESS USB_SUPPORT NET ATA SCSI MD
    BLK_DEV_SD EXT4_FS ISO9660_FS MSDOS_FS VFAT_FS NFS_FS HID AGP FB
    INPUT_MOUSE INPUT_JOYSTICK INPUT_TABLET INPUT_TOUCHSCREEN PCCARD
    SECURITY_SELINUX AUDIT KVM_INTEL KVM_XEN XEN HYPERV DEBUG_INFO
    DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT DEBUG_INFO_DWARF4 DEBUG_INFO_DWARF5
    MICROCODE)
KCONFIG_REQUIRE=(KVM KVM_AMD KVM_SW_PROTECTED_VM KVM_GENERIC_MEMORY_ATTRIBUTES
    DEVTMPFS DEVTMPFS_MOUNT BLK_DEV_INITRD RD_GZIP TMPFS TRANSPARENT_HUGEPAGE
    SERIAL_8250_CONSOLE MEMCG)
# MEMCG: rig/findings bounds a kernel allocation loop (xa_reserve of every
# gfn) with a memory cgroup limit instead of letting it OOM the guest.

# select_kernel VERSION: sets the recipe of one kernel.
#   KPKG       Debian source package          KSUITE  suite to fetch it from
#   KSRCDIR    top directory in its tarball   KAPPEND kernel command line extras
#   SELFTESTS  KVM selftests to build (paths relative to tools/testing/selftests/kvm)
#   SELFTEST_RUNS  what the guest's `selftests` runs, one command per entry
#   RIG_PROFILE    the privmem model profile matching this kernel
#   PROGRESS_ESTIMATE  make output lines of a first build (bzImage, selftests),
#                  used until a build on this machine has recorded its own
select_kernel() {
    case "$1" in
        6.12)
            KPKG=linux-source-6.12
            KSUITE=bookworm-backports   # only when the system's sources lack it
            KAPPEND="kvm.tdp_mmu=Y kvm_amd.npt=1"
            KCONFIG_ENABLE_EXTRA=()
            KCONFIG_REQUIRE_EXTRA=(KVM_PRIVATE_MEM)
            SELFTESTS=(guest_memfd_test x86_64/private_mem_conversions_test
                x86_64/private_mem_kvm_exits_test set_memory_region_test)
            SELFTEST_RUNS=("guest_memfd_test" "private_mem_conversions_test"
                "private_mem_conversions_test -n 2 -m 2" "private_mem_kvm_exits_test")
            SELFTEST_ALL_EXTRA=("set_memory_region_test")
            RIG_PROFILE=6.12
            PROGRESS_ESTIMATE=(2344 33)   # measured 2026-12-05
            ;;
        7.3)
            KPKG=linux-source-7.3
            KSUITE=trixie-backports
            KAPPEND="numa=fake=2 kvm.tdp_mmu=Y kvm_amd.npt=1"
            # kernel-7.3 needs: THP (guest_memfd_test fails without it), two
            # NUMA nodes (mbind/numa_allocation), userfaultfd, idle page
            # tracking, and memory failure + the hwpoison injector (EHWPOISON).
            KCONFIG_ENABLE_EXTRA=(NUMA NUMA_EMU USERFAULTFD IDLE_PAGE_TRACKING
                MEMORY_FAILURE DEBUG_KERNEL HWPOISON_INJECT)
            KCONFIG_REQUIRE_EXTRA=(KVM_GUEST_MEMFD NUMA NUMA_EMU USERFAULTFD
                IDLE_PAGE_TRACKING MEMORY_FAILURE HWPOISON_INJECT)
            SELFTESTS=(guest_memfd_test set_memory_region_test pre_fault_memory_test
                vm_types_test x86/private_mem_conversions_test x86/private_mem_kvm_exits_test)
            SELFTEST_RUNS=("guest_memfd_test" "set_memory_region_test" "pre_fault_memory_test"
                "vm_types_test" "private_mem_conversions_test"
                "private_mem_conversions_test -n 2 -m 2" "private_mem_kvm_exits_test")
            SELFTEST_ALL_EXTRA=()
            RIG_PROFILE=7.3
            PROGRESS_ESTIMATE=(2494 55)   # measured 2026-12-05
            ;;
        *) log "unknown --kernel $1 (expected 6.12 or 7.3)"; exit 2 ;;
    esac
    KSRCDIR="$KPKG"
}

# ---------------------------------------------------------------- source
# Kernel sources come from Debian.  6.12 is in bookworm(-security), which the
# system's sources normally have: it is installed with apt as before (the
# tarball lands in /usr/src).  Otherwise, and always for 7.3, the source .deb
# is fetched with `apt-get download` under a private apt configuration (its
# own sources.list, lists and cache in a temp dir) and unpacked into
# $CACHE_ROOT/sources: the system's apt sources are never changed.
SRC_CACHE() { printf '%s/sources' "$CACHE_ROOT"; }

debian_mirror() {
    local m
    m="$(grep -hoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | tr -d ' ')"
    printf '%s' "${m:-http://deb.debian.org/debian}"
}

# private_apt_download PKG SUITE DESTDIR: downloads PKG's .deb from SUITE into
# DESTDIR without reading or changing the system's sources; prints its path.
private_apt_download() {
    local pkg="$1" suite="$2" dest="$3" tmp mirror rc=0
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/privmem-rig-apt.XXXXXX")"
    mkdir -p "$tmp"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d}
    mirror="$(debian_mirror)"
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
        "${mirror%/}" "$suite" > "$tmp/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/sources.list.d"
        -o "Dir::Etc::Preferences=$tmp/preferences" -o "Dir::Etc::PreferencesParts=$tmp/preferences.d"
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "Acquire::Languages=none"
        -o "APT::Sandbox::User=root")
    log "fetching $pkg from $suite ($mirror) with a private apt configuration"
    if ! apt-get -q "${opts[@]}" update >"$tmp/update.log" 2>&1; then
        cat "$tmp/update.log" >&2; rm -rf "$tmp"; die_setup "apt-get update for $suite failed"
    fi
    mkdir -p "$dest"
    (cd "$dest" && apt-get -q "${opts[@]}" download "$pkg/$suite") >"$tmp/download.log" 2>&1 || rc=$?
    if ((rc)); then
        cat "$tmp/download.log" >&2; rm -rf "$tmp"; die_setup "apt-get download $pkg ($suite) failed"
    fi
    rm -rf "$tmp"
    ls -t "$dest/${pkg}_"*.deb | head -n1
}

# ensure_source: sets KTARBALL and KVERSION (the Debian package version).
ensure_source() {
    if [[ "$KERNEL" == 6.12 ]] && pkg_installed "$KPKG"; then
        KTARBALL="/usr/src/$KPKG.tar.xz"
        KVERSION="$(dpkg-query -W -f='${Version}' "$KPKG")"
        [[ -f "$KTARBALL" ]] || die_setup "$KTARBALL missing although $KPKG is installed"
        return 0
    fi
    local dir; dir="$(SRC_CACHE)"
    KTARBALL="$dir/$KPKG.tar.xz"
    if [[ -f "$KTARBALL" && -s "$dir/$KPKG.version" && "${PRIVMEM_RIG_REFRESH:-0}" != 1 ]]; then
        KVERSION="$(<"$dir/$KPKG.version")"
        return 0
    fi
    mkdir -p "$dir"
    local deb x
    deb="$(private_apt_download "$KPKG" "$KSUITE" "$dir")"
    [[ -f "$deb" ]] || die_setup "no .deb for $KPKG after apt-get download"
    x="$(mktemp -d "$dir/x.XXXXXX")"
    dpkg-deb -x "$deb" "$x" || die_setup "dpkg-deb -x $deb failed"
    [[ -f "$x/usr/src/$KPKG.tar.xz" ]] || die_setup "$deb has no usr/src/$KPKG.tar.xz"
    mv "$x/usr/src/$KPKG.tar.xz" "$KTARBALL"
    dpkg-deb -f "$deb" Version > "$dir/$KPKG.version"
    rm -rf "$x" "$deb"
    KVERSION="$(<"$dir/$KPKG.version")"
    log "$KPKG $KVERSION unpacked to $KTARBALL"
}

# ---------------------------------------------------------------- progress
# progress_run NAME ESTIMATE LOG CMD...: runs CMD with its output appended to
# LOG and reports progress on stderr: a status line redrawn every second when
# stderr is a terminal, otherwise a plain line every PRIVMEM_RIG_PROGRESS_EVERY
# seconds (default 60).  Progress is make's output line count against the
# count a previous build on this machine recorded (or ESTIMATE), plus the
# elapsed time and the last step.  Returns CMD's status.
progress_run() {
    local name="$1" estimate="$2" logf="$3"; shift 3
    local rec; rec="$CACHE_ROOT/progress/$KERNEL-${name//[^A-Za-z0-9]/_}.lines"
    local expected="$estimate"
    [[ -s "$rec" ]] && expected="$(<"$rec")"
    local base; base="$(wc -l < "$logf")"
    local t0=$SECONDS tty=0 every="${PRIVMEM_RIG_PROGRESS_EVERY:-60}" tick=0 n pct last el left
    local cols=100 line
    if [[ -t 2 ]]; then
        tty=1
        cols="$(stty size 2>/dev/null </dev/tty | awk '{print $2}')" || true
        [[ "$cols" =~ ^[0-9]+$ ]] && ((cols > 20)) || cols=100
    fi
    "$@" >>"$logf" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        tick=$((tick + 1))
        if ((tty == 0 && tick % every != 0)); then continue; fi
        n=$(( $(wc -l < "$logf") - base ))
        pct=$(( expected > 0 ? n * 100 / expected : 0 )); ((pct <= 99)) || pct=99
        el=$((SECONDS - t0))
        left=""
        if ((n > 50 && n < expected)); then
            left=", ~$(fmt_time $(( el * (expected - n) / n ))) left"
        fi
        if ((tty)); then
            last="$(tail -n1 "$logf" | tr -d '\r' | sed 's/^ *//; s/  */ /g')"
            line="$(printf 'rig: [%s] %s: %d/%d steps (%d%%), %s%s  %s' \
                "$KERNEL" "$name" "$n" "$expected" "$pct" "$(fmt_time "$el")" "$left" "$last")"
            printf '\r\033[K%s' "${line:0:$((cols - 1))}" >&2
        else
            printf 'rig: [%s] %s: %d/%d steps (%d%%), %s elapsed%s\n' \
                "$KERNEL" "$name" "$n" "$expected" "$pct" "$(fmt_time "$el")" "$left" >&2
        fi
    done
    local rc=0
    wait "$pid" || rc=$?
    ((tty == 0)) || printf '\r\033[K' >&2
    n=$(( $(wc -l < "$logf") - base ))
    if ((rc == 0)); then
        mkdir -p "$CACHE_ROOT/progress"
        echo "$n" > "$rec"
        log "  [$KERNEL] $name done: $n steps in $(fmt_time $((SECONDS - t0)))"
    fi
    return "$rc"
}

fmt_time() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ---------------------------------------------------------------- build
kernel_cache_dir() {
    local hash
    hash="$(printf '%s\n' "recipe=$RIG_RECIPE" "kernel=$KERNEL" "enable=${KCONFIG_ENABLE[*]} ${KCONFIG_ENABLE_EXTRA[*]}" \
        "disable=${KCONFIG_DISABLE[*]}" "tests=${SELFTESTS[*]}" | sha256sum | cut -c1-12)"
    printf '%s/%s-%s' "$CACHE_ROOT" "${KVERSION//[^A-Za-z0-9.+-]/_}" "$hash"
}

# check_config FILE: every option the recipe requires is =y in FILE, or
# name the missing ones and fail.
check_config() {
    local missing=() o req=("${KCONFIG_REQUIRE[@]}" "${KCONFIG_REQUIRE_EXTRA[@]}")
    for o in "${req[@]}"; do
        grep -qx "CONFIG_$o=y" "$1" || missing+=("CONFIG_$o")
    done
    ((${#missing[@]} == 0)) && return 0
    log "kernel config check FAILED: not =y after olddefconfig: ${missing[*]}"
    grep -E "^(# )?CONFIG_($(IFS='|'; echo "${req[*]}"))[= ]" "$1" >&2 || true
    return 1
}

build_kernel() {
    local dir="$1" t0=$SECONDS src b
    rm -rf "$dir"
    mkdir -p "$dir/logs"
    local blog="$dir/logs/build.log"
    log "building kernel $KERNEL ($KPKG $KVERSION) + KVM selftests: first run, ~10-20 min on 2 cores; log: $blog"
    log "  unpacking $KTARBALL"
    tar -xf "$KTARBALL" -C "$dir" || die_setup "unpacking $KTARBALL failed"
    src="$dir/$KSRCDIR"
    [[ -d "$src" ]] || die_setup "unexpected layout in $KTARBALL (no $KSRCDIR/)"

    fail() { printf '\n' >&2; log "$1 failed; last lines of $blog:"; tail -n 40 "$blog" >&2; exit 126; }
    (
        cd "$src"
        make x86_64_defconfig
        local args=() o
        for o in "${KCONFIG_ENABLE[@]}" "${KCONFIG_ENABLE_EXTRA[@]}"; do args+=(-e "$o"); done
        for o in "${KCONFIG_DISABLE[@]}"; do args+=(-d "$o"); done
        scripts/config --file .config "${args[@]}"
        make olddefconfig
    ) >>"$blog" 2>&1 || fail "kernel configuration"
    local req=("${KCONFIG_REQUIRE[@]}" "${KCONFIG_REQUIRE_EXTRA[@]}")
    check_config "$src/.config" || exit 126
    grep -qx 'CONFIG_NET=y' "$src/.config" && log "  note: CONFIG_NET stayed enabled (something selects it)"
    log "  config ok (${req[*]} =y); make -j$JOBS bzImage"
    progress_run "make bzImage" "${PROGRESS_ESTIMATE[0]}" "$blog" \
        nice -n 10 make -C "$src" -j"$JOBS" bzImage || fail "kernel build"
    log "  bzImage built after $(fmt_time $((SECONDS - t0))); building KVM selftests"
    local kvmdir="$src/tools/testing/selftests/kvm" targets=()
    for b in "${SELFTESTS[@]}"; do targets+=("$kvmdir/$b"); done
    (cd "$src" && nice -n 10 make headers_install) >>"$blog" 2>&1 || fail "make headers_install"
    progress_run "make selftests" "${PROGRESS_ESTIMATE[1]}" "$blog" \
        nice -n 10 make -C "$kvmdir" -j"$JOBS" LDFLAGS=-static "${targets[@]}" || fail "selftest build"
    mkdir -p "$dir/selftests"
    for b in "${SELFTESTS[@]}"; do
        [[ -x "$kvmdir/$b" ]] || { log "selftest $b was not built"; exit 126; }
        strip -o "$dir/selftests/$(basename "$b")" "$kvmdir/$b"
    done
    # The uapi headers (linux/kvm.h of this kernel) build rig/findings.
    cp -a "$src/usr/include" "$dir/include"
    cp "$src/arch/x86/boot/bzImage" "$dir/bzImage"
    cp "$src/.config" "$dir/config"
    (cd "$src" && make -s kernelrelease) > "$dir/kernelrelease" 2>/dev/null || true
    if [[ "${PRIVMEM_RIG_KEEP_SRC:-0}" != 1 ]]; then rm -rf "$src"; fi
    printf 'built %s in %d s\n' "$(date -Is)" "$((SECONDS - t0))" > "$dir/stamp"
    log "kernel $KERNEL ($(cat "$dir/kernelrelease")) + selftests built in $(fmt_time $((SECONDS - t0))), cached in $dir"
}

# ensure_kernel: sets KDIR to the cached build of the selected kernel.
ensure_kernel() {
    ensure_source
    KDIR="$(kernel_cache_dir)"
    mkdir -p "$CACHE_ROOT"
    if [[ -f "$KDIR/stamp" ]]; then return 0; fi
    # Serialise concurrent first runs of one kernel; re-check once we hold the lock.
    exec 9>"$CACHE_ROOT/.build-$KERNEL.lock"
    if ! flock -n 9; then
        log "another rig/run is building kernel $KERNEL; waiting for it..."
        flock 9
    fi
    [[ -f "$KDIR/stamp" ]] || build_kernel "$KDIR"
    exec 9>&-
}

//! The `kvm/*` benchmarks: privmem on real private memory (a
//! `KVM_X86_SW_PROTECTED_VM` with guest_memfd, memory attributes and
//! `vmmcall` exits), each against the bare ioctls in the same run. They run
//! inside the rig (`rig/run -- privmem bench --json kvm/convert ...`); a
//! host without that VM type skips them visibly, naming what it lacks
//! ([`private_mem_or_skip`]).
//!
//! | bench | module |
//! |---|---|
//! | `kvm/convert` | [`convert`] |
//! | `kvm/exit` | `super::exit` on a sw-protected VM |

pub mod convert;

use kvm_ioctls::Kvm;

use super::{injected, BenchSkip, Ctx};

/// `/dev/kvm` with everything a sw-protected VM with private memory needs
/// (`privmem_tinyvmm::missing`), or `None` after recording a visible skip
/// for `what` naming what is missing. A missing /dev/kvm under
/// `REQUIRE_KVM=1`, and any miss under `REQUIRE_PRIVATE_MEM=1` (the rig),
/// are errors instead. `PRIVMEM_BENCH_INJECT=no-private-mem` hides the
/// capabilities.
///
/// # Errors
/// As above.
pub fn private_mem_or_skip(ctx: &mut Ctx, what: &str) -> anyhow::Result<Option<Kvm>> {
    let reason = if injected("no-kvm") {
        "/dev/kvm unavailable: hidden by PRIVMEM_BENCH_INJECT=no-kvm".to_string()
    } else {
        match Kvm::new() {
            Err(e) if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") => {
                anyhow::bail!("{what} needs /dev/kvm: {e} (and REQUIRE_KVM=1)")
            }
            Err(e) => format!("/dev/kvm unavailable: {e}"),
            Ok(_) if injected("no-private-mem") => {
                "no private memory: hidden by PRIVMEM_BENCH_INJECT=no-private-mem".to_string()
            }
            Ok(kvm) => match privmem_tinyvmm::missing(&kvm) {
                None => return Ok(Some(kvm)),
                Some(why) => why,
            },
        }
    };
    if std::env::var("REQUIRE_PRIVATE_MEM").as_deref() == Ok("1") {
        anyhow::bail!("{what} needs private memory: {reason} (and REQUIRE_PRIVATE_MEM=1)");
    }
    eprintln!("bench {what}: SKIPPED: {reason}");
    ctx.skipped.push(BenchSkip {
        name: what.to_string(),
        reason,
    });
    Ok(None)
}

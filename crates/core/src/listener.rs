//! Conversion listeners: what QEMU's `RamDiscardListener` and Cloud
//! Hypervisor's `MemoryConversionHandler` are for. A device that DMAs into
//! guest memory (VFIO, vhost-user) keeps its mappings of shared memory in
//! step with the guest's conversions.
//!
//! The engine calls listeners under the conversion's range lock, in
//! registration order, never with its own map lock held (see DESIGN.md, "The
//! order of a conversion"):
//!
//! - **to shared**: [`prepare_shared`](ConversionListener::prepare_shared)
//!   before anything changes; a listener may refuse (e.g. its DMA mapping
//!   failed). A refusal, or a later kernel or discard failure that rolls the
//!   conversion back, calls [`cancel_shared`](ConversionListener::cancel_shared)
//!   on every listener that had accepted, in reverse order; the guest gets
//!   an error. After the attributes, the guest_memfd punch and the map
//!   commit: [`committed`](ConversionListener::committed).
//! - **to private**: after the kernel accepted the attributes (from then on
//!   the conversion always commits) and **before** the shared backing is
//!   discarded: [`committed`](ConversionListener::committed), so a device
//!   stops DMA into those pages first.
//!
//! So `committed` is called exactly once for every conversion that changed
//! pages and never for one that was rolled back; a no-op calls nothing.
//!
//! **A panicking listener is contained**: the panic is caught
//! (`catch_unwind`; with `panic = "abort"` nothing can be), counted in
//! [`Stats::listener_panics`](crate::engine::Stats::listener_panics) and its
//! message kept ([`Engine::listener_panics`](crate::engine::Engine::listener_panics)).
//! A panic in `prepare_shared` counts as a refusal (rolled back, the guest
//! gets an error); a panic in `committed` leaves the conversion committed
//! (it is past its point of no return) and the remaining listeners are
//! still told; a panic in `cancel_shared` is recorded and the rollback goes
//! on. The listener stays registered. Listeners must not convert
//! overlapping ranges or change slots from inside a call (that waits for
//! the range lock the call runs under).

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::engine::{ConvertTo, Origin};
use crate::types::GpaRange;

/// A conversion as listeners see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversion<'a> {
    /// The range the guest (or the VMM) asked to convert.
    pub range: GpaRange,
    /// The attribute it gets.
    pub to: ConvertTo,
    /// Who asked.
    pub origin: Origin,
    /// The sub-ranges whose attribute actually changes, sorted: the pages
    /// whose mappings a device must change. Never empty.
    pub changed: &'a [GpaRange],
}

impl Conversion<'_> {
    /// Pages whose attribute changes.
    pub fn pages(&self) -> u64 {
        self.changed
            .iter()
            .map(|r| r.len() / crate::types::PAGE_SIZE)
            .sum()
    }
}

/// A listener's refusal of a conversion to shared.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// Why, for the VMM's log and the engine's error.
    pub reason: String,
}

impl Refusal {
    /// A refusal saying `reason`.
    pub fn new(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
        }
    }
}

/// Told about the guest's conversions. Every method has a default that does
/// nothing, so a listener implements only what it needs.
pub trait ConversionListener: Send + Sync {
    /// A name for diagnostics (refusals and panics name the listener).
    fn name(&self) -> &str {
        "conversion listener"
    }
    /// A conversion to shared is about to happen (nothing changed yet):
    /// map the pages for DMA here. `Err` refuses it: the conversion is
    /// rolled back and the guest gets an error.
    fn prepare_shared(&self, conversion: &Conversion<'_>) -> Result<(), Refusal> {
        let _ = conversion;
        Ok(())
    }
    /// A conversion this listener accepted in
    /// [`prepare_shared`](Self::prepare_shared) was rolled back: undo what
    /// it did there.
    fn cancel_shared(&self, conversion: &Conversion<'_>) {
        let _ = conversion;
    }
    /// A conversion committed. For a conversion to private this comes
    /// before the shared backing is discarded: stop DMA into `changed`.
    fn committed(&self, conversion: &Conversion<'_>) {
        let _ = conversion;
    }
}

/// A caught listener panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerPanic {
    /// The listener's [`name`](ConversionListener::name).
    pub listener: String,
    /// Which call panicked: `prepare_shared`, `cancel_shared` or `committed`.
    pub call: &'static str,
    /// The conversion's range.
    pub range: GpaRange,
    /// The panic message (or a placeholder for a non-string payload).
    pub message: String,
}

/// Runs `f`, catching a panic as its message.
pub(crate) fn contained<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_string())
    })
}

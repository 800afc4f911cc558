//! Guest code: the x86 encoder, the op compiler and the runtime-area layout.

pub mod asm;
pub mod compile;
pub mod layout;

pub use compile::{compile, ports, Transport};
pub use layout::Layout;

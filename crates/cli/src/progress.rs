//! Progress of long work on stderr (indicatif), drawn only when stderr is a
//! terminal that can redraw a line (not `TERM=dumb`, as the rig's serial
//! console is): pipes, logs and the JSON a script reads never see it.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar's look: "differential [=====>    ] 12/64 (3s) sequences"; the
/// message is cut to the terminal's width, so the bar stays on one line.
const TEMPLATE: &str = "{prefix} [{bar:30}] {pos}/{len} ({elapsed}) {wide_msg}";

/// A bar of `len` steps named `prefix`, with `msg` after the counts; hidden
/// when stderr is not a terminal or the terminal is dumb.
pub fn bar(len: u64, prefix: &'static str, msg: &'static str) -> ProgressBar {
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    if dumb || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(prefix)
        .with_message(msg)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_template_parses() {
        assert!(indicatif::ProgressStyle::with_template(super::TEMPLATE).is_ok());
    }
}

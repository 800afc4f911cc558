//! The machine's own two-way scaling, for `parallel`: the same
//! single-vCPU work run as two independent processes.
//!
//! Two child processes (`privmem bench --scaling-probe BYTES`) each own a
//! model VM with one slot of BYTES and convert every page of it to shared
//! and back, one `MAP_GPA_RANGE` per page, on one vCPU. Each round, the
//! parent times each child alone, then both at once (from the moment it
//! tells them to go until both have answered). Two processes share
//! nothing, so `(alone A + alone B) / pair` is the most this machine gives
//! two threads at that moment (2.0 on two idle cores); `parallel` divides
//! its own speedup by it.
//!
//! Protocol: the child sets its VM up, prints `ready`, and waits for a
//! line. `go` runs the conversions and prints the seconds they took (then
//! it sets up the next VM); end of input ends it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use privmem_core::{GuestOp, VmType};
use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::handle::RunState;
use privmem_runner::runtime::{Machine, RunOptions};

use super::parallel::program;
use super::util::{slot, timed, workload};

/// One round's figures, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Scaling {
    /// Each child's conversions, alone.
    pub alone: [f64; 2],
    /// Both children's, at once (wall time until both finished).
    pub pair: f64,
}

impl Scaling {
    /// `(alone A + alone B) / pair`: the speedup two independent processes
    /// got.
    pub fn speedup(self) -> f64 {
        (self.alone[0] + self.alone[1]) / self.pair
    }
}

/// A child process of the probe.
struct Probe {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    fn spawn(size: u64) -> anyhow::Result<Probe> {
        let exe = std::env::current_exe().context("finding privmem's own executable")?;
        let mut child = Command::new(&exe)
            .args(["bench", "--scaling-probe", &size.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} bench --scaling-probe", exe.display()))?;
        let stdin = child.stdin.take().context("the probe's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the probe's stdout")?);
        Ok(Probe {
            child,
            stdin: Some(stdin),
            stdout,
        })
    }

    /// The child's next line, trimmed.
    fn line(&mut self) -> anyhow::Result<String> {
        let mut s = String::new();
        let n = self
            .stdout
            .read_line(&mut s)
            .context("reading the scaling probe")?;
        if n == 0 {
            bail!("the scaling probe ended early (its error is on stderr)");
        }
        Ok(s.trim().to_string())
    }

    fn expect_ready(&mut self) -> anyhow::Result<()> {
        match self.line()?.as_str() {
            "ready" => Ok(()),
            other => bail!("the scaling probe said `{other}`, expected `ready`"),
        }
    }

    fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the probe's stdin is closed")?;
        writeln!(stdin, "go")
            .and_then(|()| stdin.flush())
            .context("starting the scaling probe")
    }

    /// Waits for the child's answer to `go`.
    fn done(&mut self) -> anyhow::Result<()> {
        let line = self.line()?;
        line.parse::<f64>()
            .map(|_| ())
            .with_context(|| format!("the scaling probe answered `{line}`"))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // End of input ends the child; wait so no zombie is left.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Two probe children, kept for all rounds.
pub struct ScalingProbe {
    a: Probe,
    b: Probe,
}

impl ScalingProbe {
    /// Starts the two children, each with a slot of `size` bytes.
    ///
    /// # Errors
    /// A child cannot be started.
    pub fn spawn(size: u64) -> anyhow::Result<ScalingProbe> {
        Ok(ScalingProbe {
            a: Probe::spawn(size)?,
            b: Probe::spawn(size)?,
        })
    }

    /// One round: each child alone, then both at once.
    ///
    /// # Errors
    /// A child failed or answered out of protocol.
    pub fn measure(&mut self) -> anyhow::Result<Scaling> {
        let alone = [Self::alone(&mut self.a)?, Self::alone(&mut self.b)?];
        self.a.expect_ready()?;
        self.b.expect_ready()?;
        let t = Instant::now();
        self.a.go()?;
        self.b.go()?;
        self.a.done()?;
        self.b.done()?;
        let pair = t.elapsed().as_secs_f64();
        Ok(Scaling { alone, pair })
    }

    fn alone(p: &mut Probe) -> anyhow::Result<f64> {
        p.expect_ready()?;
        let t = Instant::now();
        p.go()?;
        p.done()?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// The child's side (`privmem bench --scaling-probe BYTES`); its exit
/// status.
pub fn probe_main(size: u64) -> i32 {
    match serve(size) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("privmem bench --scaling-probe: {e:#}");
            1
        }
    }
}

fn serve(size: u64) -> anyhow::Result<()> {
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let ops = [program(0, size).as_slice(), &[GuestOp::Halt]].concat();
    let w = workload(VmType::SwProtected, true, vec![slot(0, size)], vec![ops]);
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut lines = stdin.lock().lines();
    loop {
        let m = Machine::new(hv.clone(), &w).context("model setup")?;
        writeln!(out, "ready").and_then(|()| out.flush())?;
        match lines.next().transpose()?.as_deref() {
            Some("go") => {}
            None => return Ok(()),
            Some(other) => bail!("unexpected `{other}` (expected `go`)"),
        }
        let (t, states) = timed(|| m.run(RunOptions::default()));
        if states.iter().any(|s| s.state != RunState::Halted) {
            bail!("the vCPU did not finish its conversions: {states:?}");
        }
        writeln!(out, "{t}").and_then(|()| out.flush())?;
    }
}

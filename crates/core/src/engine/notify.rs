//! Telling the conversion listeners, with panics contained (module
//! [`listener`](crate::listener) has the contract).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::{ConvertError, ConvertTo, Engine, Origin, Stat};
use crate::attrmap::Run;
use crate::contract::ConversionBackend;
use crate::listener::{contained, Conversion, ConversionListener, ListenerPanic};
use crate::types::GpaRange;

type List = Arc<Vec<Arc<dyn ConversionListener>>>;

/// The registered listeners and the panics caught from them.
#[derive(Default)]
pub(super) struct Listeners {
    list: RwLock<List>,
    /// Any listener registered: conversions skip the lock (and the event's
    /// allocation) when there is none.
    any: AtomicBool,
    panics: Mutex<Vec<ListenerPanic>>,
}

/// One conversion's event, built once, with the listeners it goes to.
pub(super) struct Event {
    range: GpaRange,
    to: ConvertTo,
    origin: Origin,
    changed: Vec<GpaRange>,
    list: Option<List>,
}

impl Event {
    fn conversion(&self) -> Conversion<'_> {
        Conversion {
            range: self.range,
            to: self.to,
            origin: self.origin,
            changed: &self.changed,
        }
    }
}

impl Listeners {
    pub(super) fn add(&self, l: Arc<dyn ConversionListener>) {
        let mut list = self.list.write().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<_> = list.iter().cloned().collect();
        next.push(l);
        *list = Arc::new(next);
        self.any.store(true, Ordering::Release);
    }

    pub(super) fn panics(&self) -> Vec<ListenerPanic> {
        self.panics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The event of a conversion changing `runs`.
    pub(super) fn event(
        &self,
        range: GpaRange,
        to: ConvertTo,
        origin: Origin,
        runs: &[Run],
    ) -> Event {
        let list = self.any.load(Ordering::Acquire).then(|| {
            self.list
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        });
        let changed = match &list {
            Some(_) => runs.iter().map(|r| r.range).collect(),
            None => Vec::new(),
        };
        Event {
            range,
            to,
            origin,
            changed,
            list,
        }
    }

    fn record(&self, l: &dyn ConversionListener, call: &'static str, ev: &Event, msg: String) {
        self.panics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ListenerPanic {
                listener: l.name().to_string(),
                call,
                range: ev.range,
                message: msg,
            });
    }
}

impl<B: ConversionBackend> Engine<B> {
    /// Asks every listener to prepare a conversion to shared. On a refusal
    /// (or a panic) cancels those that accepted and answers the error;
    /// otherwise answers how many accepted (all of them).
    pub(super) fn prepare_shared(&self, ev: &Event) -> Result<usize, ConvertError> {
        let Some(list) = &ev.list else { return Ok(0) };
        let c = ev.conversion();
        for (i, l) in list.iter().enumerate() {
            let refusal = match contained(|| l.prepare_shared(&c)) {
                Ok(Ok(())) => continue,
                Ok(Err(r)) => r.reason,
                Err(msg) => {
                    self.panicked(&**l, "prepare_shared", ev, msg.clone());
                    format!("panicked: {msg}")
                }
            };
            self.stats.add(Stat::ListenerRefusals, 1);
            self.cancel_shared(ev, i);
            return Err(ConvertError::ListenerRefused {
                range: ev.range,
                listener: l.name().to_string(),
                reason: refusal,
            });
        }
        Ok(list.len())
    }

    /// Cancels the first `accepted` listeners' preparation, in reverse order.
    pub(super) fn cancel_shared(&self, ev: &Event, accepted: usize) {
        let Some(list) = &ev.list else { return };
        let c = ev.conversion();
        for l in list[..accepted.min(list.len())].iter().rev() {
            if let Err(msg) = contained(|| l.cancel_shared(&c)) {
                self.panicked(&**l, "cancel_shared", ev, msg);
            }
        }
    }

    /// Tells every listener the conversion committed.
    pub(super) fn committed(&self, ev: &Event) {
        let Some(list) = &ev.list else { return };
        let c = ev.conversion();
        for l in list.iter() {
            if let Err(msg) = contained(|| l.committed(&c)) {
                self.panicked(&**l, "committed", ev, msg);
            }
        }
    }

    fn panicked(&self, l: &dyn ConversionListener, call: &'static str, ev: &Event, msg: String) {
        self.stats.add(Stat::ListenerPanics, 1);
        self.listeners.record(l, call, ev, msg);
    }
}

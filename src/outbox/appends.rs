//! A group's appends, gathered from the queue in arrival order, and the state writes that go
//! with each run of them.

use tokio::sync::oneshot;

use super::{OutboxError, StateWrite};
use crate::event::Prepared;

/// The appends of a group in arrival order, with what each carries besides its event.
#[derive(Default)]
pub(super) struct Appends {
    pub(super) events: Vec<Prepared>,
    pub(super) states: Vec<Vec<StateWrite>>,
    pub(super) dones: Vec<Option<oneshot::Sender<Result<u64, OutboxError>>>>,
}

impl Appends {
    /// Room for `n` appends: a full group's three lists were grown by doubling eleven times.
    pub(super) fn with_capacity(n: usize) -> Self {
        Appends {
            events: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            dones: Vec::with_capacity(n),
        }
    }

    /// No appends: a group of acknowledgements, reads or state writes only.
    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The state writes that go with appends `from..to`, in arrival order: each append's own,
    /// and the lone writes (tagged with how many appends came before them) among them; the
    /// lone writes after the last append go with the range that ends the group.
    pub(super) fn state_of(
        &self,
        from: usize,
        to: usize,
        lone: &[(usize, StateWrite)],
    ) -> Vec<StateWrite> {
        let ends_group = to == self.events.len();
        let mut lone = lone
            .iter()
            .filter(|(before, _)| *before >= from && (*before < to || ends_group))
            .peekable();
        let mut out = Vec::new();
        for i in from..to {
            while let Some((_, w)) = lone.next_if(|(before, _)| *before <= i) {
                out.push(w.clone());
            }
            out.extend(self.states[i].iter().cloned());
        }
        out.extend(lone.map(|(_, w)| w.clone()));
        out
    }
}

//! The full mesh of bounded SPSC rings between shards, wired once at start-up (glommio's
//! `channel_mesh`, whose shared channels are single-producer/single-consumer lock-free rings).
//!
//! Why the rings never deadlock: a shard's receive loop never waits on a send (it hands calls
//! to tasks and answers replies in place), each shard keeps at most `max_in_flight` calls
//! outstanding per peer, and `ring_capacity >= 4 × max_in_flight` (checked by the config) so
//! calls, replies, credits and acks always fit.

use crate::domain::ShardId;
use crate::gateway::msg::{Reply, Request};
use crate::gateway::{Gateway, Peers};
use crate::wal::SegmentDir;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// What travels on a ring.
#[derive(Debug)]
pub enum Envelope {
    Call { token: u64, req: Request },
    Post(Request),
    Reply { token: u64, reply: Reply },
}

/// `Peers` over the mesh.
pub struct MeshPeers {
    me: ShardId,
    senders: Senders<Envelope>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Reply>>>,
    next_token: Cell<u64>,
    in_flight: Vec<Cell<usize>>,
    max_in_flight: usize,
    pub dropped_posts: Cell<u64>,
}

impl MeshPeers {
    pub fn new(senders: Senders<Envelope>, max_in_flight: usize) -> MeshPeers {
        let n = senders.nr_consumers();
        MeshPeers {
            me: ShardId(senders.peer_id() as u16),
            senders,
            pending: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            in_flight: (0..n).map(|_| Cell::new(0)).collect(),
            max_in_flight,
            dropped_posts: Cell::new(0),
        }
    }

    fn complete(&self, token: u64, reply: Reply) {
        if let Some(tx) = self.pending.borrow_mut().remove(&token) {
            let _ = tx.send(reply);
        }
    }
}

impl Peers for MeshPeers {
    fn sleep(&self, d: std::time::Duration) -> impl Future<Output = ()> {
        glommio::timer::sleep(d)
    }

    fn call(&self, to: ShardId, req: Request) -> impl Future<Output = Reply> {
        assert_ne!(to, self.me, "calls to oneself skip the ring");
        let slot = &self.in_flight[to.index()];
        let admitted = slot.get() < self.max_in_flight;
        let rx = admitted.then(|| {
            let token = self.next_token.get();
            self.next_token.set(token + 1);
            let (tx, rx) = oneshot::channel();
            self.pending.borrow_mut().insert(token, tx);
            match self
                .senders
                .try_send_to(to.index(), Envelope::Call { token, req })
            {
                Ok(()) => {
                    slot.set(slot.get() + 1);
                    Some(rx)
                }
                Err(_) => {
                    self.pending.borrow_mut().remove(&token);
                    None
                }
            }
        });
        async move {
            let Some(Some(rx)) = rx else {
                return Reply::Unavailable;
            };
            let reply = rx.await.unwrap_or(Reply::Unavailable);
            slot.set(slot.get() - 1);
            reply
        }
    }

    fn post(&self, to: ShardId, req: Request) {
        assert_ne!(to, self.me);
        if self
            .senders
            .try_send_to(to.index(), Envelope::Post(req))
            .is_err()
        {
            self.dropped_posts.set(self.dropped_posts.get() + 1);
        }
    }

    fn spawn(&self, fut: Pin<Box<dyn Future<Output = ()>>>) {
        glommio::spawn_local(fut).detach();
    }

    fn in_flight(&self) -> Vec<usize> {
        self.in_flight.iter().map(Cell::get).collect()
    }
}

/// Starts one receive loop per peer. Replies complete waiting calls in place; credits and
/// acks are applied in arrival order; calls run as tasks whose answers go back on the ring.
pub fn start_receivers<D: SegmentDir + 'static>(
    mut receivers: Receivers<Envelope>,
    gateway: Rc<Gateway<D, MeshPeers>>,
) {
    for (from, rx) in receivers.streams() {
        let gateway = gateway.clone();
        glommio::spawn_local(async move {
            while let Some(env) = rx.recv().await {
                match env {
                    Envelope::Reply { token, reply } => gateway.peers().complete(token, reply),
                    Envelope::Post(req) => {
                        let handled = gateway.handle_in_order(&req);
                        assert!(handled, "only credits and acks are posted");
                    }
                    Envelope::Call { token, req } => {
                        let gateway = gateway.clone();
                        glommio::spawn_local(async move {
                            let reply = gateway.handle(req).await;
                            // Fits by the capacity rule above; an error means the peer is gone.
                            let env = Envelope::Reply { token, reply };
                            let _ = gateway.peers().senders.send_to(from, env).await;
                        })
                        .detach();
                    }
                }
            }
        })
        .detach();
    }
}

/// `Peers` of a gateway that is its only shard (in-process drivers and tests): it never calls
/// or posts to another shard; it spawns and sleeps on the current glommio executor.
pub struct Alone;

impl Peers for Alone {
    async fn call(&self, _to: ShardId, _req: Request) -> Reply {
        unreachable!("a single shard never calls out")
    }
    fn post(&self, _to: ShardId, _req: Request) {
        unreachable!("a single shard never posts")
    }
    fn spawn(&self, fut: Pin<Box<dyn Future<Output = ()>>>) {
        glommio::spawn_local(fut).detach();
    }
    async fn sleep(&self, d: std::time::Duration) {
        glommio::timer::sleep(d).await;
    }
}

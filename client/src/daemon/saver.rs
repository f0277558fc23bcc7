//! Writes the daemon's periodic state off the engine task: a thread that
//! takes the latest bytes for each file and writes them (atomically,
//! synced), so that a slow disk never delays a Poisson tick. What must be
//! on disk before the daemon answers (a newly queued message) is written by
//! the engine itself.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::{DataDir, Outgoing};

/// One write.
enum Job {
    /// An outgoing message's state.
    Outgoing(Box<Outgoing>),
    /// A finished message: remove its files.
    Remove(String),
    /// The node scores (JSON).
    Scores(Vec<u8>),
}

impl Job {
    fn key(&self) -> String {
        match self {
            Job::Outgoing(m) => m.message_id.clone(),
            Job::Remove(id) => id.clone(),
            Job::Scores(_) => String::new(),
        }
    }
}

/// The writer thread and its queue.
pub(crate) struct Saver {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Saver {
    /// Starts the writer for `dir`.
    pub(crate) fn start(dir: DataDir) -> Saver {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("bastet-saver".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Coalesce what queued meanwhile: only the latest state
                    // of each file is written.
                    let mut jobs: HashMap<String, Job> = HashMap::new();
                    jobs.insert(first.key(), first);
                    while let Ok(next) = rx.try_recv() {
                        jobs.insert(next.key(), next);
                    }
                    for job in jobs.into_values() {
                        write(&dir, job);
                    }
                }
            })
            .ok();
        Saver {
            tx: Some(tx),
            thread,
        }
    }

    /// Queues an outgoing message's state.
    pub(crate) fn outgoing(&self, m: &Outgoing) {
        self.send(Job::Outgoing(Box::new(m.clone())));
    }

    /// Queues the removal of a finished message's files.
    pub(crate) fn remove(&self, message_id: &str) {
        self.send(Job::Remove(message_id.to_string()));
    }

    /// Queues the node scores.
    pub(crate) fn scores(&self, json: Vec<u8>) {
        self.send(Job::Scores(json));
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.tx
            && (self.thread.is_none() || tx.send(job).is_err())
        {
            tracing::error!("the state writer is gone; state is not being saved");
        }
    }

    /// Writes everything queued and stops the thread.
    pub(crate) fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the state writer panicked");
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.finish();
    }
}

fn write(dir: &DataDir, job: Job) {
    let result = match &job {
        Job::Outgoing(m) => dir.save_outgoing(m),
        Job::Remove(id) => dir.remove_outgoing(id),
        Job::Scores(json) => dir.save_scores(json),
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "saving the daemon's state failed");
    }
}

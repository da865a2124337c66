//! A warp filter served on an ephemeral `127.0.0.1` port, and a body generated on the fly: the
//! pieces every fake upstream of the tests and benches is built from.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::{Filter, Reply};

/// A running server; [`Self::shut_down`] stops it and waits, dropping it stops it without
/// waiting.
pub struct LocalServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<()>>,
}

impl LocalServer {
    /// Serves `routes` on a fresh port.
    pub async fn start<F>(routes: F) -> Self
    where
        F: Filter + Clone + Send + Sync + 'static,
        F::Extract: Reply,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            warp::serve(routes)
                .incoming(listener)
                .graceful(async {
                    let _ = stopped.await;
                })
                .run()
                .await;
        });
        Self {
            addr,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Stops the server and waits (up to 5 s) until its port no longer answers.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        }
    }
}

/// A body of `len` bytes made of `chunk` repeated, generated as it is sent (never held whole).
pub fn generated_body(
    len: u64,
    chunk: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + Sync + 'static {
    futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= len {
                return None;
            }
            let n = (len - sent).min(chunk.len() as u64);
            Some((Ok(chunk.slice(..n as usize)), sent + n))
        }
    })
}

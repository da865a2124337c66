//! A TCP forwarder a test can stop and resume, to take a database away and give it back
//! without touching the database server: stopping closes the port and every forwarded
//! connection, resuming listens on the same port again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A forwarder from an ephemeral `127.0.0.1` port to `target`.
pub struct TcpProxy {
    /// Where it listens (the same across [`Self::stop`] and [`Self::resume`]).
    pub addr: SocketAddr,
    target: SocketAddr,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut proxy = Self {
            addr,
            target,
            running: None,
        };
        proxy.run(listener);
        proxy
    }

    /// Closes the port and cuts every forwarded connection, as a crashed server would.
    pub async fn stop(&mut self) {
        if let Some((stop, accepting)) = self.running.take() {
            let _ = stop.send(true);
            let _ = accepting.await;
        }
    }

    /// Listens on the same port again.
    pub async fn resume(&mut self) {
        if self.running.is_none() {
            let listener = TcpListener::bind(self.addr).await.unwrap();
            self.run(listener);
        }
    }

    fn run(&mut self, listener: TcpListener) {
        let (stop, stopped) = watch::channel(false);
        let target = self.target;
        let accepting = tokio::spawn(async move {
            let mut accept_stopped = stopped.clone();
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                    _ = accept_stopped.changed() => break,
                };
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        self.running = Some((stop, accepting));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.running.take() {
            let _ = stop.send(true);
        }
    }
}

/// `url` with its `host:port` replaced by `addr` (`postgres://user@host:port/db?...`).
pub fn url_through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let user = authority
        .rfind('@')
        .map(|at| &authority[..=at])
        .unwrap_or("");
    format!("{scheme}://{user}{addr}{tail}")
}

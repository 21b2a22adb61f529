//! A TCP proxy between one service and PostgreSQL: `cut` drops every open connection and
//! refuses new ones, `restore` lets them through again. It simulates a lost database for one
//! service while parallel tests keep using the shared server.

use std::net::SocketAddr;

use secrecy::{ExposeSecret, SecretString};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let watch = cut.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watch.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, upstream, watch.subscribe()));
            }
        });
        Ok(Self {
            addr,
            cut,
            accept_loop,
        })
    }

    /// A proxy to the server `url` names, and the same URL pointing at the proxy instead.
    pub async fn for_url(url: &SecretString) -> anyhow::Result<(Self, SecretString)> {
        let mut parsed = url::Url::parse(url.expose_secret())?;
        let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = parsed.port().unwrap_or(5432);
        let upstream = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve the database host"))?;
        let proxy = Self::start(upstream).await?;
        parsed
            .set_host(Some("127.0.0.1"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        parsed
            .set_port(Some(proxy.addr.port()))
            .map_err(|()| anyhow::anyhow!("cannot set the proxy port"))?;
        Ok((proxy, SecretString::from(parsed.to_string())))
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.accept_loop.abort();
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}

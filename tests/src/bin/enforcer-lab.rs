//! `enforcer-lab`: brings up the lab (client, gateway and resource namespaces, real services, a
//! real identity provider and `enforcer run` on the gateway), prints what to try, and removes
//! everything on Ctrl-C. It also serves the lab's TCP and UDP echo ports.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
};

#[derive(Parser)]
#[command(about = "The enforcer lab: a gateway enforcing real traffic in network namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve TCP and UDP echo on one address and port until killed.
    Echo {
        /// Address and port to listen on, for example 198.51.100.10:7.
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Echo { listen } => echo(listen).await,
    }
}

async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let tcp = TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on TCP {listen}"))?;
    let udp = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("failed to listen on UDP {listen}"))?;

    let udp_task = tokio::spawn(async move {
        let mut buffer = vec![0u8; 65536];
        loop {
            let Ok((length, peer)) = udp.recv_from(&mut buffer).await else {
                continue;
            };
            let _ = udp.send_to(&buffer[..length], peer).await;
        }
    });

    loop {
        let (mut stream, _) = tcp
            .accept()
            .await
            .context("failed to accept a TCP connection")?;
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 16384];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(length) => {
                        if stream.write_all(&buffer[..length]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        if udp_task.is_finished() {
            anyhow::bail!("the UDP echo task stopped");
        }
    }
}

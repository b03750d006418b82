//! A real SMTP server for tests: it speaks enough ESMTP (RFC 5321) for
//! lettre — EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA with dot-unstuffing,
//! RSET, NOOP, QUIT — on a local port, and hands every message it accepts
//! to the test. Recipients listed in `reject` get the reply the test chose
//! (a `550` or a `451`), so a test can see how a transport classifies them.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent after DATA, dot-unstuffed, CRLF line ends.
    pub data: Vec<u8>,
    /// The `AUTH PLAIN` credentials (`user`, `password`), if any were given.
    pub auth: Option<(String, String)>,
}

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct SmtpSink {
    pub addr: SocketAddr,
    received: mpsc::UnboundedReceiver<ReceivedMail>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        SmtpSink::start_with(HashMap::new()).await
    }

    /// `reject` maps a recipient address to the reply its RCPT gets.
    pub async fn start_with(reject: HashMap<String, String>) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let reject = reject.clone();
                tokio::spawn(async move {
                    let _ = session(stream, tx, reject).await;
                });
            }
        });
        SmtpSink {
            addr,
            received,
            task,
        }
    }

    /// The next message, waiting up to `within`.
    pub async fn next(&mut self, within: std::time::Duration) -> ReceivedMail {
        tokio::time::timeout(within, self.received.recv())
            .await
            .expect("a message reaches the SMTP sink in time")
            .expect("the sink is running")
    }
}

async fn session(
    stream: tokio::net::TcpStream,
    tx: mpsc::UnboundedSender<ReceivedMail>,
    reject: HashMap<String, String>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut auth = None;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end();
        let upper = command.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 AUTH PLAIN\r\n".into()
        } else if upper.starts_with("HELO") {
            "250 sink.test\r\n".into()
        } else if upper.starts_with("AUTH PLAIN ") {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(command[11..].trim())
                .unwrap_or_default();
            let parts: Vec<String> = decoded
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            if parts.len() == 3 {
                auth = Some((parts[1].clone(), parts[2].clone()));
                "235 2.7.0 Authentication successful\r\n".into()
            } else {
                "501 5.5.2 Cannot decode\r\n".into()
            }
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&command[10..]);
            to.clear();
            "250 2.1.0 Ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = address(&command[8..]);
            match reject.get(&rcpt) {
                Some(reply) => format!("{reply}\r\n"),
                None => {
                    to.push(rcpt);
                    "250 2.1.5 Ok\r\n".into()
                }
            }
        } else if upper == "DATA" {
            write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut data = Vec::new();
            loop {
                let mut l = String::new();
                if read.read_line(&mut l).await? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" || l == ".\n" {
                    break;
                }
                let l = l.strip_prefix('.').unwrap_or(&l);
                data.extend_from_slice(l.as_bytes());
            }
            let _ = tx.send(ReceivedMail {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
                auth: auth.clone(),
            });
            "250 2.0.0 Ok: queued\r\n".into()
        } else if upper == "RSET" {
            from.clear();
            to.clear();
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 Command not recognized\r\n".into()
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

/// `<anna@example.com> SIZE=123` → `anna@example.com`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or("").to_owned(),
    }
}

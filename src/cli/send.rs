//! `tern send`: one message to an SMTP server, for scripts and alerts. The
//! exit code says whether the server took it (0), refused it (2) or could
//! not be reached or spoken to (1), and the server's reply is printed.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use mail_builder::MessageBuilder;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum TlsMode {
    /// Upgrade with STARTTLS (required).
    Starttls,
    /// TLS from the first byte (port 465 style).
    Implicit,
    /// No encryption.
    None,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Server to send to.
    #[arg(long, default_value = "127.0.0.1:2587", value_name = "HOST:PORT")]
    server: String,
    #[arg(long, value_enum, default_value_t = TlsMode::Starttls)]
    tls: TlsMode,
    /// Trust this PEM certificate (e.g. Tern's generated tern-data/tls/cert.pem).
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long)]
    insecure: bool,
    /// Authenticate as USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    auth: Option<String>,
    #[arg(long)]
    from: String,
    #[arg(long, required = true)]
    to: Vec<String>,
    #[arg(long, default_value = "")]
    subject: String,
    /// The text body; read from standard input when absent.
    #[arg(long)]
    body: Option<String>,
    /// Attach a file (repeatable).
    #[arg(long, value_name = "FILE")]
    attach: Vec<PathBuf>,
    /// Seconds to wait for each server reply.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    tern_smtp::tls::install_crypto_provider();
    let (host, port) = split_host_port(&args.server)?;
    let body = match &args.body {
        Some(b) => b.clone(),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the body from stdin")?;
            s
        }
    };
    let message = build_message(&args, &body)?;
    let envelope = Envelope::new(
        Some(
            args.from
                .parse()
                .with_context(|| format!("--from {:?}", args.from))?,
        ),
        args.to
            .iter()
            .map(|t| t.parse().with_context(|| format!("--to {t:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?,
    )?;

    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
        .port(port)
        .timeout(Some(Duration::from_secs(args.timeout)));
    if args.tls != TlsMode::None {
        let mut params = TlsParameters::builder(host.clone());
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            params = params.add_root_certificate(Certificate::from_pem(&pem)?);
        }
        if args.insecure {
            params = params.dangerous_accept_invalid_certs(true);
        }
        let params = params.build_rustls()?;
        builder = builder.tls(match args.tls {
            TlsMode::Starttls => Tls::Required(params),
            _ => Tls::Wrapper(params),
        });
    }
    if let Some(auth) = &args.auth {
        let (user, pass) = auth.split_once(':').context("--auth takes USER:PASS")?;
        builder = builder
            .credentials(Credentials::new(user.into(), pass.into()))
            .authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    let transport = builder.build();
    match transport.send_raw(&envelope, &message).await {
        Ok(response) => {
            println!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_permanent() || e.is_transient() => {
            eprintln!("tern send: the server refused the message: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("tern send: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s.rsplit_once(':').context("--server takes HOST:PORT")?;
    let port = port
        .parse()
        .with_context(|| format!("bad port in --server {s:?}"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

fn build_message(args: &SendArgs, body: &str) -> anyhow::Result<Vec<u8>> {
    for (name, value) in [("--from", &args.from), ("--subject", &args.subject)] {
        if value.contains(['\r', '\n']) {
            bail!("{name} may not contain a line break");
        }
    }
    let mut m = MessageBuilder::new()
        .from(args.from.as_str())
        .to(args.to.iter().map(|t| t.as_str()).collect::<Vec<_>>())
        .subject(args.subject.as_str())
        .text_body(body);
    for path in &args.attach {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        m = m.attachment("application/octet-stream", name, data);
    }
    Ok(m.write_to_vec()?)
}

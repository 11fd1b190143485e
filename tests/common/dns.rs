//! A real DNS server on loopback that answers from zone text, so MX and
//! address lookups in tests go through an ordinary resolver over UDP and TCP,
//! exactly as they would against a remote authoritative server.
//!
//! Zone text is one record per line, `name TYPE data`:
//!
//! ```text
//! # comments and blank lines are ignored; names are case-insensitive
//! remote.test         MX 10 mx1.remote.test
//! mx1.remote.test     A 127.0.0.2
//! mx1.remote.test     AAAA ::1
//! remote.test         TXT "v=spf1 -all"
//! nomail.test         MX 0 .
//! alias.remote.test   CNAME mx1.remote.test
//! broken.test         SERVFAIL
//! ```
//!
//! Every answer is authoritative with TTL 60. A name with no records (and no
//! records below it) is NXDOMAIN; a name that exists without the asked type is
//! NODATA; both carry an SOA in the authority section so resolvers can cache
//! the negative answer as they would in the field.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

const TTL: u32 = 60;
/// Payload we accept from EDNS clients; the common safe size (DNS flag day 2020).
const EDNS_PAYLOAD: u16 = 1232;
/// CNAME hops followed inside the zone before giving up (a loop is SERVFAIL).
const MAX_CHAIN: usize = 8;

pub struct TestDns {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        // The TCP task owns its connections in a JoinSet, so aborting it
        // also ends every open connection.
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl TestDns {
    /// Parses `zone` (panicking on a bad line, with its number) and serves it
    /// on 127.0.0.1, UDP and TCP on the same free port.
    pub async fn start(zone: &str) -> TestDns {
        let zone = Arc::new(Zone::parse(zone));
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, zone.clone(), queries.clone())),
            tokio::spawn(serve_tcp(tcp, zone, queries.clone())),
        ];
        TestDns {
            addr,
            queries,
            tasks,
        }
    }

    /// How many queries were answered, over both transports.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// A resolver that asks only `addr` (UDP first, TCP when a reply is
/// truncated), with no search list, no hosts file and no cache, one try per
/// lookup and a 2 s timeout, so a test sees every answer fresh and fails fast.
pub fn resolver(addr: SocketAddr) -> TokioResolver {
    build_resolver(addr, vec![ConnectionConfig::udp(), ConnectionConfig::tcp()])
}

/// Like [`resolver`], but over TCP only, to prove the TCP side on its own.
pub fn resolver_tcp(addr: SocketAddr) -> TokioResolver {
    build_resolver(addr, vec![ConnectionConfig::tcp()])
}

fn build_resolver(addr: SocketAddr, connections: Vec<ConnectionConfig>) -> TokioResolver {
    let connections = connections
        .into_iter()
        .map(|mut c| {
            c.port = addr.port();
            c
        })
        .collect();
    let server = NameServerConfig::new(addr.ip(), true, connections);
    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(2);
    // hickory counts retries after the first try: 0 means exactly one query.
    opts.attempts = 0;
    opts.cache_size = 0;
    opts.ndots = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    builder.build().expect("test resolver builds")
}

/// UDP and TCP sockets on one port: resolvers assume a server listens on both.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Zone>, queries: Arc<AtomicUsize>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some((request, response)) = zone.handle(&buf[..n]) else {
            continue;
        };
        let limit = request
            .edns
            .as_ref()
            .map(|e| e.max_payload().max(512))
            .unwrap_or(512) as usize;
        let Ok(mut bytes) = response.to_vec() else {
            continue;
        };
        if bytes.len() > limit {
            // Too big for this client's UDP buffer: set TC so it asks over TCP.
            match response.truncate().to_vec() {
                Ok(b) => bytes = b,
                Err(_) => continue,
            }
        }
        queries.fetch_add(1, Ordering::SeqCst);
        let _ = socket.send_to(&bytes, peer).await;
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Zone>, queries: Arc<AtomicUsize>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_tcp_conn(stream, zone.clone(), queries.clone()));
    }
}

/// RFC 1035 4.2.2: each message is preceded by a two-byte length; a client
/// may send several queries on one connection.
async fn serve_tcp_conn(mut stream: TcpStream, zone: Arc<Zone>, queries: Arc<AtomicUsize>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut msg = vec![0u8; len as usize];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some((_, response)) = zone.handle(&msg) else {
            continue;
        };
        let Ok(bytes) = response.to_vec() else {
            continue;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        queries.fetch_add(1, Ordering::SeqCst);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Zone {
    /// Owner names are lowercase and absolute.
    records: Vec<(Name, RData)>,
    servfail: HashSet<Name>,
}

/// What the zone says about one name and type.
struct Answer {
    code: ResponseCode,
    records: Vec<Record>,
    /// The name whose negative answer needs an SOA (NXDOMAIN or NODATA).
    negative: Option<Name>,
}

impl Zone {
    fn parse(text: &str) -> Zone {
        let mut zone = Zone::default();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let (name, rest) = split_word(line);
            let (kind, data) = split_word(rest);
            let owner = parse_name(name, n);
            let kind = kind.to_ascii_uppercase();
            let bad = |what: &str| -> ! { panic!("zone line {n}: {what}: {raw:?}") };
            let rdata = match kind.as_str() {
                "SERVFAIL" => {
                    if !data.is_empty() {
                        bad("SERVFAIL takes no data");
                    }
                    zone.servfail.insert(owner);
                    continue;
                }
                "A" => RData::A(A(data.parse().unwrap_or_else(|_| bad("bad IPv4 address")))),
                "AAAA" => RData::AAAA(AAAA(
                    data.parse().unwrap_or_else(|_| bad("bad IPv6 address")),
                )),
                "MX" => {
                    let (pref, host) = split_word(data);
                    let pref: u16 = pref.parse().unwrap_or_else(|_| bad("bad MX preference"));
                    if host.is_empty() || host.contains(char::is_whitespace) {
                        bad("MX needs one exchange name");
                    }
                    RData::MX(MX::new(pref, parse_name(host, n)))
                }
                "TXT" => RData::TXT(TXT::new(parse_txt(data).unwrap_or_else(|e| bad(&e)))),
                "CNAME" => RData::CNAME(CNAME(parse_name(data, n))),
                "PTR" => RData::PTR(PTR(parse_name(data, n))),
                "" => bad("missing record type"),
                _ => bad("unsupported record type (A, AAAA, MX, TXT, CNAME, PTR, SERVFAIL)"),
            };
            zone.records.push((owner, rdata));
        }
        zone
    }

    /// Parses a query and builds its response; `None` for anything that is
    /// not a parseable query (a real server would drop it too).
    fn handle(&self, bytes: &[u8]) -> Option<(Message, Message)> {
        let request = Message::from_vec(bytes).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata = Metadata::response_from_request(&request.metadata);
        response.metadata.authoritative = true;
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        response.add_queries(request.queries.iter().cloned());
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
        } else if request.queries.len() != 1 {
            response.metadata.response_code = ResponseCode::FormErr;
        } else {
            let q = &request.queries[0];
            let answer = self.answer(&q.name, q.query_type);
            response.metadata.response_code = answer.code;
            response.add_answers(answer.records);
            if let Some(name) = answer.negative {
                response.add_authority(soa_for(&name));
            }
        }
        Some((request, response))
    }

    fn answer(&self, qname: &Name, qtype: RecordType) -> Answer {
        let mut records = Vec::new();
        // Answers carry the name as asked (resolvers may randomise its case).
        let mut owner = qname.clone();
        let mut current = absolute_lower(qname);
        for _ in 0..MAX_CHAIN {
            if self.servfail.contains(&current) {
                return Answer {
                    code: ResponseCode::ServFail,
                    records: Vec::new(),
                    negative: None,
                };
            }
            let here: Vec<&RData> = self
                .records
                .iter()
                .filter(|(n, _)| *n == current)
                .map(|(_, r)| r)
                .collect();
            let matching: Vec<&RData> = here
                .iter()
                .copied()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .collect();
            if !matching.is_empty() {
                for r in matching {
                    records.push(Record::from_rdata(owner.clone(), TTL, r.clone()));
                }
                return Answer {
                    code: ResponseCode::NoError,
                    records,
                    negative: None,
                };
            }
            // RFC 1034 3.6.2: a CNAME stands for the whole name; follow it
            // within the zone, as an authoritative server does.
            if let Some(RData::CNAME(target)) = here.iter().find(|r| matches!(r, RData::CNAME(_))) {
                records.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::CNAME(target.clone()),
                ));
                current = absolute_lower(&target.0);
                owner = current.clone();
                continue;
            }
            // RFC 6604: the code describes the last name in a CNAME chain.
            let code = if self.exists(&current) {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            return Answer {
                code,
                records,
                negative: Some(current),
            };
        }
        Answer {
            code: ResponseCode::ServFail,
            records: Vec::new(),
            negative: None,
        }
    }

    /// A name exists if it owns records, or names below it do (an empty
    /// non-terminal is NODATA, not NXDOMAIN: RFC 8020).
    fn exists(&self, name: &Name) -> bool {
        self.records.iter().any(|(n, _)| name.zone_of(n))
            || self.servfail.iter().any(|n| name.zone_of(n))
    }
}

/// An SOA for negative answers, owned by the name's last two labels (the
/// zone apex in the usual `domain.tld` layout of test zones); its minimum
/// sets the negative-caching TTL (RFC 2308).
fn soa_for(name: &Name) -> Record {
    let apex = name.trim_to(2);
    let soa = SOA::new(
        Name::from_ascii("ns.test.").unwrap(),
        Name::from_ascii("hostmaster.test.").unwrap(),
        1,
        3600,
        600,
        86_400,
        TTL,
    );
    Record::from_rdata(apex, TTL, RData::SOA(soa))
}

fn absolute_lower(name: &Name) -> Name {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    n
}

fn parse_name(s: &str, line: usize) -> Name {
    let name =
        Name::from_ascii(s).unwrap_or_else(|e| panic!("zone line {line}: bad name {s:?}: {e}"));
    absolute_lower(&name)
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// Cuts a `#` comment, but not a `#` inside a quoted TXT string.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// One or more character-strings: `"quoted with spaces" "another"`, with
/// `\"` and `\\` escapes; a bare word counts as one string.
fn parse_txt(data: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = data.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else { break };
        let mut s = String::new();
        if first == '"' {
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        // \DDD: the octet with that decimal value (RFC 1035 5.1).
                        Some(d) if d.is_ascii_digit() => {
                            let mut v = d.to_digit(10).unwrap_or(0);
                            for _ in 0..2 {
                                match chars.next_if(|c| c.is_ascii_digit()) {
                                    Some(c) => v = v * 10 + c.to_digit(10).unwrap_or(0),
                                    None => return Err("\\DDD needs three digits".into()),
                                }
                            }
                            s.push(char::from(u8::try_from(v).map_err(|_| "\\DDD over 255")?));
                        }
                        Some(c) => s.push(c),
                        None => return Err("TXT ends inside an escape".into()),
                    },
                    Some(c) => s.push(c),
                    None => return Err("unterminated TXT string".into()),
                }
            }
        } else {
            s.push(first);
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                s.push(c);
            }
        }
        if s.len() > 255 {
            return Err("a TXT string is at most 255 octets; split it".into());
        }
        out.push(s);
    }
    if out.is_empty() {
        return Err("TXT needs at least one string".into());
    }
    Ok(out)
}

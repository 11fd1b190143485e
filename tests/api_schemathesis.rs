//! The HTTP API against its own OpenAPI document: schemathesis generates
//! requests for every operation from `/api/v1/openapi.json` and checks
//! that no answer is a server error and that every answer (status, content
//! type, body) is one the document describes. The server is the real
//! `tern serve` binary; the key comes from `tern key create`.
//!
//! Before the run the server is given something to show: sent messages
//! (delivered, deferred, suppressed), a suppression and a webhook whose
//! deliveries fail, so the answers checked carry real data; their ids are
//! offered to the generator for path parameters.
//!
//! `TERN_SCHEMATHESIS_EXAMPLES` (default 150) sets the test cases per
//! operation; `TERN_SCHEMATHESIS_SEED` repeats a run (its seed is printed).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::node::Node;
use serde_json::{json, Value};

/// The checks every answer must pass.
const CHECKS: &str =
    "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance";

/// How long the schemathesis run may take before it counts as hung.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// schemathesis is a tool CI installs: missing there is a failure, on a
/// developer's machine a skip.
fn have_schemathesis() -> bool {
    let ok = Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is missing in CI"
        );
        eprintln!("skipping: schemathesis not installed (pip install schemathesis)");
    }
    ok
}

struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the API answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!((200..300).contains(&status), "POST {path}: {status} {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }
}

/// Polls `f` until it is true, or panics after `secs`.
async fn wait_for<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_to_its_openapi_document() {
    if !have_schemathesis() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Any sender domain, so generated sends can pass the sender check;
    // remote mail only defers (the node's DNS points nowhere).
    let mut node = Node::with_config(dir.path(), "[senders]\ndomains = [\"*\"]\n");
    node.start().await;
    // The local recipient the seeded sends use must exist, as for SMTP.
    let out = node.tern(&["user", "add", "alice"], Some("pw\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = node.tern(
        &[
            "key",
            "create",
            "--name",
            "schemathesis",
            "--scope",
            "admin",
        ],
        None,
    );
    assert!(out.status.success(), "{}", common::node::text(&out));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("tern_"), "{key:?}");

    // reqwest's rustls needs a process-wide provider, even for plain HTTP.
    tern_smtp::tls::install_crypto_provider();
    let api = Api {
        base: format!("http://{}", node.api),
        key,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    wait_for(20, "the HTTP API listens", || async {
        api.http
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    // Something for the read operations to show.
    let hook = api
        .post(
            "/api/v1/webhooks",
            json!({"url": "http://127.0.0.1:1/tern-events", "events": ["*"]}),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap().to_string();
    api.post(
        "/api/v1/suppressions",
        json!({"address": "gone@remote.test", "reason": "asked to stop"}),
    )
    .await;
    let sent = api
        .post(
            "/api/v1/messages",
            json!({
                "from": "Ann Example <ann@example.test>",
                "to": ["Bob <bob@remote.test>", "alice@example.test"],
                "cc": ["gone@remote.test"],
                "subject": "Your report",
                "text": "Attached.",
                "html": "<p>Attached.</p>",
                "headers": {"X-Campaign": "reports"},
                "attachments": [{
                    "filename": "report.txt",
                    "content_type": "text/plain",
                    "content_base64": "aGVsbG8K"
                }],
                "tags": ["reports"],
                "metadata": {"account": "42"}
            }),
        )
        .await;
    let message_id = sent["id"].as_str().unwrap().to_string();
    let raw = api
        .post(
            "/api/v1/messages/raw",
            json!({
                "message": "From: ann@example.test\nTo: carol@remote.test\nSubject: raw\n\nHello.\n",
                "tags": ["raw"]
            }),
        )
        .await;
    let raw_id = raw["id"].as_str().unwrap().to_string();
    // The local recipient is delivered, the remote one deferred, and the
    // webhook has a failed attempt on record.
    wait_for(
        30,
        "the seeded message is delivered and deferred",
        || async {
            let m = api.get(&format!("/api/v1/messages/{message_id}")).await;
            let statuses: Vec<&str> = m["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["status"].as_str().unwrap())
                .collect();
            statuses.contains(&"delivered") && statuses.contains(&"deferred")
        },
    )
    .await;
    wait_for(30, "a webhook attempt is on record", || async {
        let d = api
            .get(&format!("/api/v1/webhooks/{hook_id}/deliveries"))
            .await;
        d["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| !d["attempt_log"].as_array().unwrap().is_empty())
    })
    .await;

    // The seeded values, offered to the generator half of the time (the
    // other half are its own); without them nearly every path parameter
    // names nothing and every sender address is malformed. Webhook URLs
    // are always these loopback ones: the server POSTs events to every
    // webhook created, and a generated host name would be looked up.
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[dictionaries]
ids = {{ values = ["{message_id}", "{raw_id}", "{hook_id}"] }}
addresses = {{ values = ["gone@remote.test", "bob@remote.test", "alice@example.test", "Bob <bob@remote.test>"] }}
senders = {{ values = ["ann@example.test", "Ann Example <ann@example.test>"] }}
urls = {{ values = ["http://127.0.0.1:1/tern-events", "http://127.0.0.2:1/tern"] }}
kinds = {{ values = ["delivered", "bounced", "deferred", "*"] }}

[parameters]
"path.id" = {{ dictionary = "ids", probability = 0.5 }}
"path.address" = {{ dictionary = "addresses", probability = 0.5 }}
"body.from" = {{ dictionary = "senders", probability = 0.5 }}
"body.to[*]" = {{ dictionary = "addresses", probability = 0.5 }}
"body.address" = {{ dictionary = "addresses", probability = 0.5 }}
"body.url" = {{ dictionary = "urls", probability = 1.0 }}
"body.events[*]" = {{ dictionary = "kinds", probability = 0.5 }}
"#
        ),
    )
    .unwrap();

    let examples =
        std::env::var("TERN_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "150".to_string());
    let mut cmd = Command::new("schemathesis");
    cmd.arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", api.base))
        .args(["--header", &format!("Authorization: Bearer {}", api.key)])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &examples])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"]);
    if let Ok(seed) = std::env::var("TERN_SCHEMATHESIS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    // Its caches go to the temporary directory, not the work tree.
    cmd.current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("schemathesis starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let output = format!(
        "{}{}",
        out_reader.join().unwrap(),
        err_reader.join().unwrap()
    );
    let Some(status) = status else {
        panic!(
            "schemathesis did not finish within {} s:\n{output}",
            RUN_LIMIT.as_secs()
        );
    };
    assert!(
        status.success(),
        "schemathesis found problems ({status}):\n{output}"
    );
    eprintln!(
        "schemathesis passed in {:.0} s; its summary:\n{}",
        started.elapsed().as_secs_f64(),
        output
            .lines()
            .skip_while(|l| !l.contains("SUMMARY"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every operation was exercised, and the server is still serving.
    assert!(output.contains("passed"), "{output}");
    let (status, health) = api.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200, "{health}");
    // No webhook the run created points off this machine.
    let hooks = api.get("/api/v1/webhooks").await;
    for h in hooks["webhooks"].as_array().unwrap() {
        let url = h["url"].as_str().unwrap();
        assert!(url.starts_with("http://127.0.0."), "{url}");
    }
    node.terminate();
}

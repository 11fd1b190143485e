//! `tern domain add` prints the records to publish; `tern domain check`
//! looks them up and says, record by record, what is missing or wrong.

mod common;

use std::process::Command;

use common::dns::TestDns;
use common::node::{text, BIN};

fn tern(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn write_config(dir: &std::path::Path, dns: &TestDns) -> std::path::PathBuf {
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[domains]\nlocal = [\"good.test\"]\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n",
            dir.join("data").display(),
            dns.addr
        ),
    )
    .unwrap();
    path
}

/// The printed records in the loopback DNS server's zone format.
fn as_zone(printed: &str) -> String {
    printed
        .lines()
        .filter(|l| l.contains(" IN "))
        .map(|l| {
            l.replacen(". IN ", " ", 1)
                .trim_end_matches('.')
                .to_string()
                + "\n"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_printed_by_add_pass_check_and_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // The records are printed before DNS is asked anything.
    let nowhere = TestDns::start("").await;
    let config = write_config(dir.path(), &nowhere);
    let out = tern(
        &config,
        &[
            "domain",
            "add",
            "good.test",
            "--algorithm",
            "ed25519",
            "--selector",
            "s1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("s1._domainkey.good.test. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{printed}"
    );
    assert!(
        printed.contains("good.test. IN TXT \"v=spf1 mx a:mx.example.test ~all\""),
        "{printed}"
    );
    assert!(
        printed.contains("_dmarc.good.test. IN TXT \"v=DMARC1; p=none"),
        "{printed}"
    );
    assert!(
        printed.contains("good.test. IN MX 10 mx.example.test."),
        "{printed}"
    );

    // Everything published as printed: all ok, exit 0.
    let dns = TestDns::start(&as_zone(&printed)).await;
    let config = write_config(dir.path(), &dns);
    let out = tern(&config, &["domain", "check", "good.test"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("all records of good.test are in place"),
        "{}",
        text(&out)
    );

    // A stale key, two SPF records, no DMARC, MX elsewhere.
    let broken = "
s1._domainkey.good.test TXT \"v=DKIM1; k=ed25519; p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"
good.test TXT \"v=spf1 mx -all\"
good.test TXT \"v=spf1 a -all\"
good.test MX 10 mx.elsewhere.test
mx.elsewhere.test A 192.0.2.1
";
    let dns = TestDns::start(broken).await;
    let config = write_config(dir.path(), &dns);
    let out = tern(&config, &["domain", "check", "good.test"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("wrong: the public key differs"), "{report}");
    assert!(report.contains("wrong: 2 v=spf1 records"), "{report}");
    assert!(
        report.contains("_dmarc.good.test") && report.contains("missing"),
        "{report}"
    );
    assert!(
        report.contains("MX points to mx.elsewhere.test"),
        "{report}"
    );
    assert!(
        report.contains("publish: _dmarc.good.test. IN TXT"),
        "{report}"
    );
    assert!(
        report.contains("4 record(s) of good.test need attention"),
        "{report}"
    );
}
